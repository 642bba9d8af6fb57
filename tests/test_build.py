"""The build: which kernels were compiled in, and what `import minimtl` says when the build is
missing or stale."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import minimtl

ROOT = Path(minimtl.__file__).resolve().parent.parent
OPS = ["box_iou", "generalized_box_iou", "nms", "batched_nms"]


@pytest.mark.parametrize("op", OPS)
def test_cpu_kernel_registered(op):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"minimtl::{op}", "CPU")


@pytest.mark.parametrize("op", OPS)
def test_cuda_kernel_registered_when_built_with_cuda(op):
    # Runs without a GPU too: CI builds the CUDA kernels (MINIMTL_WITH_CUDA=1) and this proves they
    # compiled, linked and registered. MINIMTL_EXPECT_CUDA=1 (set by .ci/run) makes a CPU-only
    # build a failure instead of a silent pass.
    if os.environ.get("MINIMTL_EXPECT_CUDA") == "1":
        assert minimtl.built_with_cuda(), "MINIMTL_EXPECT_CUDA=1 but minimtl._C was built without CUDA"
    registered = torch._C._dispatch_has_kernel_for_dispatch_key(f"minimtl::{op}", "CUDA")
    assert registered == minimtl.built_with_cuda()


def _copy_package(tmp_path: Path, with_extension: bool, with_sources: bool) -> Path:
    """A copy of the package (and optionally its build and csrc/) in tmp_path, importable from there."""
    ignore = shutil.ignore_patterns("__pycache__", *([] if with_extension else ["_C*.so"]))
    shutil.copytree(ROOT / "minimtl", tmp_path / "minimtl", ignore=ignore)
    if with_sources:
        shutil.copytree(ROOT / "csrc", tmp_path / "csrc")
        shutil.copy(ROOT / "setup.py", tmp_path / "setup.py")
    return tmp_path


# Hides an editable install of minimtl (a finder on sys.meta_path that would supply the real
# minimtl._C to the copy), so the copy is imported exactly as it stands.
IMPORT_COPY = """
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")]
import minimtl
print(minimtl.__file__)
"""


def _import_from(path: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", IMPORT_COPY],
        capture_output=True,
        text=True,
        cwd=path,
        env={**os.environ, "PYTHONPATH": str(path), **env},
        timeout=120,
    )


def test_import_without_build_says_what_to_run(tmp_path):
    result = _import_from(_copy_package(tmp_path, with_extension=False, with_sources=True))
    assert result.returncode != 0
    assert "ImportError: minimtl's compiled kernels (minimtl._C) are not built" in result.stderr
    assert "pip install --no-build-isolation -e ." in result.stderr
    assert "ModuleNotFoundError" not in result.stderr  # the loader's own traceback is hidden


def test_import_with_stale_build_says_what_to_run(tmp_path):
    root = _copy_package(tmp_path, with_extension=True, with_sources=True)
    assert _import_from(root).stdout.strip() == str(root / "minimtl" / "__init__.py")  # fresh copy imports
    kernel = root / "csrc" / "cpu" / "nms.cpp"
    kernel.write_text(kernel.read_text() + "\n// edited, not rebuilt\n")
    result = _import_from(root)
    assert result.returncode != 0
    assert "minimtl._C is stale" in result.stderr and "pip install --no-build-isolation -e ." in result.stderr
    # Asked for explicitly, the old build still runs, with a warning.
    result = _import_from(root, MINIMTL_ALLOW_STALE="1")
    assert result.returncode == 0 and "minimtl._C is stale" in result.stderr


def test_installed_without_sources_skips_the_stale_check(tmp_path):
    # A non-editable install has no csrc/ beside the package: nothing to compare with.
    root = _copy_package(tmp_path, with_extension=True, with_sources=False)
    result = _import_from(root)
    assert result.returncode == 0, result.stderr
