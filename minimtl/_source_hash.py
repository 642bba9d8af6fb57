"""A fingerprint of the C++/CUDA sources, shared by the build and the import.

`setup.py` compiles this fingerprint into `minimtl._C`; `import minimtl` computes it again over the
`csrc/` folder beside the package (present in a source checkout) and compares the two, so that a
kernel edited but not rebuilt is reported instead of silently running the old code.

This file must import nothing beyond the standard library: `setup.py` loads it by path, before
torch or minimtl can be imported.
"""

import hashlib
from pathlib import Path

SOURCE_SUFFIXES = (".cpp", ".cu", ".h", ".cuh")


def source_files(csrc: Path) -> list[Path]:
    """Every C++/CUDA source and header under `csrc`, in a fixed order."""
    return sorted(p for p in csrc.rglob("*") if p.is_file() and p.suffix in SOURCE_SUFFIXES)


def source_hash(csrc: Path) -> str:
    """SHA-256 over the relative path and bytes of every source file, as 16 hex digits."""
    digest = hashlib.sha256()
    for path in source_files(csrc):
        digest.update(path.relative_to(csrc).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:16]
