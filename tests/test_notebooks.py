"""Every chapter in notebooks/ runs from top to bottom without an error, and shows its pictures.

Each chapter is executed as Jupyter executes it: MPLBACKEND is removed from the kernel's
environment, so ipykernel picks matplotlib's inline backend (matplotlib-inline), and a figure that
is shown becomes an "image/png" output of its cell. A code cell *meant to draw* is one whose source
calls `plt.show(` or `display(fig...` outside a comment (the ways the chapters show figures; extend
DRAWS if a chapter starts using another). Every such cell must have an image output: a library that
chose a backend itself (`matplotlib.use("Agg")` at import) would leave those cells empty in Jupyter,
and a run under MPLBACKEND=Agg could never see it.

The notebooks read MINIMTL_FAST=1 (set here) to use small sizes, so the suite stays quick; run
them by hand in Jupyter for the full sizes. Each notebook is executed once; both checks read that run.
The kernel's TMPDIR is the test's tmp_path, so what a chapter writes to a temporary folder is cleaned up.
"""

import importlib.util
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))

# A call that shows a figure, on a line that is not a comment.
DRAWS = re.compile(r"^[^#\n]*(\bplt\.show\(|\bdisplay\(\s*fig\b)", re.MULTILINE)


def test_there_are_chapters():
    assert NOTEBOOKS, "no notebooks found in notebooks/"


def cells_missing_pictures(notebook) -> list[tuple[int, str]]:
    """(index in notebook.cells, first source line) of each code cell meant to draw (see the module
    docstring) that has no output with "image/png" data."""
    missing = []
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code" or not DRAWS.search(cell.source):
            continue
        if not any("image/png" in output.get("data", {}) for output in cell.get("outputs", [])):
            missing.append((index, cell.source.strip().splitlines()[0]))
    return missing


def test_cells_missing_pictures_reads_the_rule():
    picture = nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"})
    text = nbformat.v4.new_output("stream", name="stdout", text="done\n")
    notebook = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell("Call `plt.show()` to see it."),  # not code
            nbformat.v4.new_code_cell("plt.plot([1, 2])\nplt.show()", outputs=[picture]),  # shown
            nbformat.v4.new_code_cell("x = 1\n# plt.show() comes later", outputs=[text]),  # a comment only
            nbformat.v4.new_code_cell("plt.imshow(x)\nplt.show()", outputs=[text]),  # no picture
            nbformat.v4.new_code_cell("fig = make()\ndisplay(fig)"),  # no picture
        ]
    )
    assert cells_missing_pictures(notebook) == [(3, "plt.imshow(x)"), (4, "fig = make()")]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch, tmp_path):
    monkeypatch.setenv("MINIMTL_FAST", "1")
    # Chapters write their runs to tempfile.mkdtemp() folders (tens of MB each): inside pytest's
    # tmp_path, which pytest prunes (it keeps the last three sessions), instead of piling up in /tmp.
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel picks the inline backend, as in Jupyter
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
    errors = [o for cell in notebook.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    missing = cells_missing_pictures(notebook)
    assert not missing, f"{path.name}: cells meant to draw show no picture (index in the notebook's cells):\n" + (
        "\n".join(f"  cell {index}: {first_line}" for index, first_line in missing)
    )


def _render_script():
    """scripts/render_chapters.py, imported as a module."""
    spec = importlib.util.spec_from_file_location(
        "render_chapters", Path(__file__).resolve().parent.parent / "scripts" / "render_chapters.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_render_writes_the_chapter_with_its_pictures(tmp_path):
    render = _render_script()
    source = tmp_path / "notebooks"
    source.mkdir()
    cells = [
        nbformat.v4.new_markdown_cell("# 99. A chapter"),
        nbformat.v4.new_code_cell(
            "import os\nimport matplotlib.pyplot as plt\n"
            "print('fast' if os.environ.get('MINIMTL_FAST') == '1' else 'full')\n"
            "plt.plot([1, 3, 2])\nplt.show()"
        ),
    ]
    path = source / "99_chapter.ipynb"
    nbformat.write(
        nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}}),
        path,
    )
    out = tmp_path / "docs"
    out.mkdir()
    render.render(path, out, fast=False)
    render.write_index(out)
    text = (out / "99_chapter.md").read_text()
    header = render.HEADER.match(text.split("\n", 1)[0])
    assert header and header["name"] == "99_chapter.ipynb" and header["mode"] == "full"
    assert header["sha"] == render.sources_sha256(nbformat.read(path, as_version=4))
    assert "# 99. A chapter" in text and "\n    full\n" in text  # the markdown, and the cell's printed output
    pictures = re.findall(r"!\[png\]\((99_chapter_files/[^)]+\.png)\)", text)
    assert len(pictures) == 1 and (out / pictures[0]).read_bytes().startswith(b"\x89PNG")
    assert "[99_chapter](99_chapter.md) | full |" in (out / "README.md").read_text()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_rendered_copy_is_current(path):
    """docs/chapters/ holds each chapter as rendered from its present text (scripts/render_chapters.py)."""
    render = _render_script()
    rendered = render.OUT / f"{path.stem}.md"
    assert rendered.is_file(), f"no rendered copy of {path.name}: run python scripts/render_chapters.py {path.name[:2]}"
    header = render.HEADER.match(rendered.read_text().split("\n", 1)[0])
    assert header, f"{rendered} does not start with the render script's header"
    assert header["mode"] == "full", f"{rendered} was rendered in fast mode; render it in full mode"
    assert header["sha"] == render.sources_sha256(nbformat.read(path, as_version=4)), (
        f"{path.name} changed since {rendered.name} was rendered: run python scripts/render_chapters.py {path.name[:2]}"
    )
