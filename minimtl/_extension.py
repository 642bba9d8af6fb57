"""Loads the compiled kernels, `minimtl._C`, and says what to run when they are missing or stale.

Importing `minimtl._C` runs the static registrations in csrc/ (TORCH_LIBRARY and
TORCH_LIBRARY_IMPL), after which the kernels are reachable as `torch.ops.minimtl.*`.
"""

import importlib
import os
import warnings
from pathlib import Path

import torch

from minimtl._source_hash import source_hash

_ROOT = Path(__file__).resolve().parent.parent
_CSRC = _ROOT / "csrc"
BUILD_COMMAND = "pip install --no-build-isolation -e ."


def _rebuild_hint() -> str:
    where = f" (in {_ROOT})" if (_ROOT / "setup.py").exists() else ""
    return f"Build it with:\n\n    {BUILD_COMMAND}{where}\n"


def load():
    """Import `minimtl._C` and check that it matches the sources and the installed torch."""
    try:
        extension = importlib.import_module("minimtl._C")
    except ModuleNotFoundError as error:
        if error.name != "minimtl._C":
            raise
        raise ImportError("minimtl's compiled kernels (minimtl._C) are not built. " + _rebuild_hint()) from None
    except (ImportError, OSError) as error:
        # Typically an undefined symbol: built against another torch than the one installed.
        raise ImportError(
            f"minimtl._C could not be loaded: {error}\n"
            f"It was probably built against another version of torch than the installed {torch.__version__}. "
            "Rebuild it. " + _rebuild_hint()
        ) from None

    built_for = extension.torch_version
    if torch.__version__.split("+")[0] != built_for:
        raise ImportError(
            f"minimtl._C was built against torch {built_for}, but torch {torch.__version__} is installed. "
            "Rebuild it. " + _rebuild_hint()
        )

    if _CSRC.is_dir():  # a source checkout: compare the build with the sources beside it
        built = extension.source_hash.removeprefix("0x")
        current = source_hash(_CSRC)
        if built != current:
            message = (
                f"minimtl._C is stale: the C++/CUDA sources in {_CSRC} changed since it was built "
                f"(build {built}, sources {current}). " + _rebuild_hint()
            )
            if os.environ.get("MINIMTL_ALLOW_STALE") == "1":
                warnings.warn(message, stacklevel=3)
            else:
                raise ImportError(message + "(Set MINIMTL_ALLOW_STALE=1 to run the old build anyway.)")
    return extension


_C = load()


def built_with_cuda() -> bool:
    """Whether the CUDA kernels were compiled into this build (whether or not a GPU is present)."""
    return bool(_C.with_cuda)
