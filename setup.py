"""Builds minimtl and its one extension, minimtl._C.

    pip install --no-build-isolation -e .

The CPU kernels (csrc/cpu/*.cpp) are always built. The CUDA kernels (csrc/cuda/*.cu) are built
whenever torch is a CUDA build and a CUDA toolkit is found, also on a machine without a GPU, so
that CI compiles and links them. MINIMTL_WITH_CUDA=1 forces them (and fails when they cannot be
built); MINIMTL_WITH_CUDA=0 leaves them out. TORCH_CUDA_ARCH_LIST picks the GPU architectures
(default: those of the visible GPUs, or 7.5;8.0;9.0+PTX when none is visible).
MINIMTL_SANITIZE=address,undefined builds the CPU kernels with AddressSanitizer and
UndefinedBehaviorSanitizer (scripts/sanitize.sh does it in a copy of the tree and runs the tests).
"""

import importlib.util
import os
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"

# torch.utils.cpp_extension looks for the toolkit when it is imported; point it at the usual place
# when nothing else says where the toolkit is (a bare `nvcc` wrapper on the PATH would mislead it).
if "CUDA_HOME" not in os.environ and "CUDA_PATH" not in os.environ and Path("/usr/local/cuda/bin/nvcc").exists():
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

import torch  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _load_source_hash():
    # By path: minimtl/__init__.py imports torch and the extension we are about to build.
    spec = importlib.util.spec_from_file_location("_source_hash", ROOT / "minimtl" / "_source_hash.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.source_hash(CSRC)


def _with_cuda() -> bool:
    flag = os.environ.get("MINIMTL_WITH_CUDA", "").strip()
    if flag not in ("", "0", "1"):
        raise SystemExit(f"MINIMTL_WITH_CUDA must be 0 or 1, got {flag!r}")
    if flag == "0":
        return False
    possible = torch.version.cuda is not None and CUDA_HOME is not None
    if flag == "1" and not possible:
        raise SystemExit(
            "MINIMTL_WITH_CUDA=1, but the CUDA kernels cannot be built: "
            f"torch {torch.__version__} is {'a CPU-only build' if torch.version.cuda is None else 'a CUDA build'}"
            f", CUDA toolkit: {CUDA_HOME or 'not found (set CUDA_HOME)'}"
        )
    return possible


def _default_arch_list():
    # With no GPU visible, torch would build for no architecture at all; pick a portable set:
    # sm_75 (Turing), sm_80 (Ampere, runs on 8.6/8.9 too), sm_90 (Hopper) and PTX for newer GPUs.
    if "TORCH_CUDA_ARCH_LIST" not in os.environ and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = "7.5;8.0;9.0+PTX"


def extensions():
    with_cuda = _with_cuda()
    source_hash = _load_source_hash()
    sources = [str(p.relative_to(ROOT)) for p in sorted(CSRC.glob("*.cpp")) + sorted((CSRC / "cpu").glob("*.cpp"))]
    define_macros = [("MINIMTL_SOURCE_HASH", "0x" + source_hash)]
    # -ffp-contract=off: no fused multiply-add, so the kernels match the reference bit for bit
    # (csrc/box_math.h says why). -fno-trapping-math: we never read floating-point exception flags,
    # and without it GCC will not turn the branch-free selects of the inner loops into vector code.
    # -fopenmp: at::parallel_for is a header template that is serial unless OpenMP is on (the
    # runtime is the libgomp that torch already loads).
    extra = {"cxx": ["-O3", "-ffp-contract=off", "-fno-trapping-math", "-fopenmp"]}
    link = ["-fopenmp"]
    sanitize = os.environ.get("MINIMTL_SANITIZE", "").strip()
    if sanitize:
        if with_cuda:
            raise SystemExit("MINIMTL_SANITIZE builds the CPU kernels only: set MINIMTL_WITH_CUDA=0 as well")
        # -O1 and frame pointers: readable reports; no recovery: the first UB report fails the run.
        flags = [f"-fsanitize={sanitize}", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g"]
        extra["cxx"] = [f for f in extra["cxx"] if f != "-O3"] + ["-O1", *flags]
        link += [f"-fsanitize={sanitize}"]
    if not with_cuda:
        print(f"minimtl: building the CPU kernels only (torch {torch.__version__}, CUDA toolkit {CUDA_HOME})")
        return [
            CppExtension(
                "minimtl._C", sources, define_macros=define_macros, extra_compile_args=extra, extra_link_args=link
            )
        ]
    _default_arch_list()
    print(
        f"minimtl: building the CPU and CUDA kernels for TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST')}"
    )
    sources += [str(p.relative_to(ROOT)) for p in sorted((CSRC / "cuda").glob("*.cu"))]
    define_macros.append(("MINIMTL_WITH_CUDA", None))
    # No -fmad=false: the IoU arithmetic, which must match the reference bit for bit, rounds each of its
    # products on its own (mul_rn, csrc/box_math.h); RoIAlign keeps nvcc's fused multiply-adds.
    extra["nvcc"] = ["-O3", "-lineinfo"]
    return [
        CUDAExtension(
            "minimtl._C", sources, define_macros=define_macros, extra_compile_args=extra, extra_link_args=link
        )
    ]


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension},
)
