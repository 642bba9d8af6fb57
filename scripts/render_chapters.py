"""Run the chapters in full mode and write what a learner would see to docs/chapters/.

    python scripts/render_chapters.py                  # every chapter (tens of minutes on a 2-core CPU)
    python scripts/render_chapters.py 03 11            # chapters whose file name starts with 03 or 11
    python scripts/render_chapters.py --fast 01        # the test suite's small sizes (to try the script)

Why a rendered copy, and not outputs stored in the notebooks: the notebooks in git stay free of
outputs, so a change to a chapter is a diff of its text and code (not of megabytes of base64
pictures), and what the test suite executes is exactly the file a learner opens. The rendered copy
(`docs/chapters/NN_name.md`, its pictures in `docs/chapters/NN_name_files/`) shows every cell with
its output, readable on GitHub or any Markdown viewer, without running anything.

Each chapter is executed as Jupyter executes it (inline matplotlib backend, the notebooks folder as
working directory, temporary files in a scratch folder), then exported with nbconvert's Markdown
exporter. The first line of each rendered file records the sha256 of the chapter's cell sources;
tests/test_notebooks.py checks it against the notebook, so a chapter changed without rendering it
again fails the suite. docs/chapters/README.md lists the chapters with their run times.
"""

import argparse
import datetime
import hashlib
import io
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
OUT = ROOT / "docs" / "chapters"
HEADER = re.compile(
    r"^<!-- rendered by scripts/render_chapters.py from notebooks/(?P<name>\S+); sources (?P<sha>[0-9a-f]{64}); "
    r"(?P<mode>full|fast) mode; (?P<date>[\d-]+); (?P<seconds>\d+) s on (?P<machine>.*?) -->$"
)


def sources_sha256(notebook) -> str:
    """A fingerprint of what a chapter says and runs: its cells' types and sources, in order."""
    digest = hashlib.sha256()
    for cell in notebook.cells:
        digest.update(f"{cell.cell_type}\0{cell.source}\0".encode())
    return digest.hexdigest()


def execute(notebook, cwd: Path, fast: bool, timeout: int = 3600) -> None:
    """Run `notebook` in place, as Jupyter would (see tests/test_notebooks.py for the same set-up)."""
    from nbclient import NotebookClient

    with tempfile.TemporaryDirectory(prefix="minimtl_render_") as scratch:
        env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # the inline backend, as in Jupyter
        env["TMPDIR"] = scratch
        env.pop("MINIMTL_FAST", None)
        if fast:
            env["MINIMTL_FAST"] = "1"
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(env)  # the kernel inherits this process's environment
        try:
            NotebookClient(
                notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
            ).execute()
        finally:
            os.environ.clear()
            os.environ.update(saved)


def smaller_png(data: bytes) -> bytes:
    """The picture with a 256-colour palette: 3-10x smaller for plots and textured images, with no
    visible difference at the size they are shown (a whole set of chapters stays a few MB in git)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        out = io.BytesIO()
        im.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE).save(out, "PNG", optimize=True)
    return min(data, out.getvalue(), key=len)


def render(path: Path, out_dir: Path, fast: bool = False) -> float:
    """Execute the chapter at `path` and write `out_dir/<stem>.md` and its pictures; the seconds taken."""
    from nbconvert import MarkdownExporter

    notebook = nbformat.read(path, as_version=4)
    sha = sources_sha256(notebook)
    start = time.perf_counter()
    execute(notebook, path.parent, fast)
    seconds = time.perf_counter() - start
    files = f"{path.stem}_files"
    body, resources = MarkdownExporter().from_notebook_node(notebook, resources={"output_files_dir": files})
    pictures = out_dir / files
    if pictures.exists():  # pictures of an earlier rendering: the new one may have fewer
        for old in pictures.iterdir():
            old.unlink()
    pictures.mkdir(parents=True, exist_ok=True)
    for name, data in resources.get("outputs", {}).items():
        (out_dir / name).write_bytes(smaller_png(data) if name.endswith(".png") else data)
    machine = f"{platform.machine()} CPU, {os.cpu_count()} cores"
    header = (
        f"<!-- rendered by scripts/render_chapters.py from notebooks/{path.name}; sources {sha}; "
        f"{'fast' if fast else 'full'} mode; {datetime.date.today()}; {seconds:.0f} s on {machine} -->\n"
    )
    note = (
        f"*A rendered copy of [`notebooks/{path.name}`](../../notebooks/{path.name}), run in "
        f"{'fast' if fast else 'full'} mode in {seconds:.0f} s on {machine}. Open the notebook to run it yourself.*\n\n"
    )
    (out_dir / f"{path.stem}.md").write_text(header + note + body)
    return seconds


def write_index(out_dir: Path) -> None:
    rows = []
    for md in sorted(out_dir.glob("[0-9][0-9]_*.md")):
        match = HEADER.match(md.read_text().split("\n", 1)[0])
        if match:
            mode, seconds, date, machine = match["mode"], match["seconds"], match["date"], match["machine"]
            rows.append(f"| [{md.stem}]({md.name}) | {mode} | {seconds} s | {date} | {machine} |")
    (out_dir / "README.md").write_text(
        "# The chapters, rendered\n\n"
        "Each chapter of `notebooks/` as it runs, every output and picture included, written by\n"
        "`python scripts/render_chapters.py` (see its docstring for why a rendered copy rather than outputs\n"
        "stored in the notebooks). The test suite checks that each copy was rendered from the chapter as it\n"
        "is now. Run times are wall-clock, on the machine named, with whatever else it was running then.\n\n"
        "| chapter | mode | run time | rendered | machine |\n|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("chapters", nargs="*", help="chapter number prefixes (default: all)")
    p.add_argument("--fast", action="store_true", help="the test suite's small sizes (MINIMTL_FAST=1)")
    p.add_argument("--out", type=Path, default=OUT, help="where to write (default docs/chapters)")
    args = p.parse_args(argv)
    paths = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if args.chapters:
        paths = [p for p in paths if any(p.name.startswith(prefix) for prefix in args.chapters)]
        if not paths:
            p.error(f"no chapter in notebooks/ starts with {', '.join(args.chapters)}")
    args.out.mkdir(parents=True, exist_ok=True)
    for path in paths:
        print(f"{path.name} ...", end=" ", flush=True)
        print(f"{render(path, args.out, args.fast):.0f} s", flush=True)
    write_index(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
