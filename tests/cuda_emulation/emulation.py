"""The CUDA emulation (ops.cpp, cuda_on_cpu.h): build it once, load it, and record what its kernels do.

    from cuda_emulation import emulation   # with tests/ on sys.path
    emulated = emulation.load()            # torch.ops.minimtl_emulated (compiled on the first call)
    with emulation.tracing(watch=[("pairwise_kernel", 4, n * m)]) as trace:
        emulated.box_iou(boxes1, boxes2)
    trace.launches, trace.threads, trace.writes, trace.atomics

`load` compiles into one folder per torch version, Python version and set of compiler flags, under
build/cuda_emulation/ in the repository (git ignores build/; MINIMTL_EMULATION_BUILD_DIR moves it), so
the tests and chapter 13 share one compile and a second load is a cache hit (ninja rebuilds when a
source or a header changed). A folder per torch version, because a build made against another torch
must never be loaded; a lock of our own around the build, because a build killed half-way can leave
torch's lock file behind, which some torch versions then wait on forever. scripts/sanitize.sh works
in a copy of the tree without build/, so its sanitized build starts from scratch there.

`tracing` and `thread_order` switch on the options that cuda_on_cpu.h describes; both are off
otherwise, and then the emulation runs exactly as before.
"""

import contextlib
import fcntl
import functools
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils import cpp_extension

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
NAME = "minimtl_cuda_emulation"


def build_directory(extra_cflags: tuple[str, ...] = ()) -> Path:
    """The folder this torch, this Python and these flags build into."""
    base = Path(os.environ.get("MINIMTL_EMULATION_BUILD_DIR") or ROOT / "build" / "cuda_emulation")
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    flags = hashlib.sha256(" ".join(extra_cflags).encode()).hexdigest()[:12]
    return base / f"torch-{torch.__version__}-{python}-{flags}"


@functools.cache
def load(extra_cflags: tuple[str, ...] = ()):
    """torch.ops.minimtl_emulated: ops.cpp compiled with -O2 plus `extra_cflags` (also passed to the
    linker: scripts/sanitize.sh's -fsanitize flags need both), built on the first call (a minute)."""
    folder = build_directory(extra_cflags)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released by the kernel if this process dies
        (folder / "lock").unlink(missing_ok=True)  # torch's own, left by a build that was killed
        cpp_extension.load(
            name=NAME,
            sources=[str(HERE / "ops.cpp")],
            extra_include_paths=[str(ROOT / "csrc"), str(HERE)],
            extra_cflags=["-O2", *extra_cflags],
            extra_ldflags=list(extra_cflags),
            build_directory=str(folder),
            is_python_module=False,
        )
    return torch.ops.minimtl_emulated


@dataclass(frozen=True)
class Launch:
    """One kernel launch: the kernel as the host code names it, its grid and its block (x, y, z)."""

    kernel: str  # e.g. "pairwise_kernel<scalar_t, T, generalized>"
    grid: tuple[int, int, int]
    block: tuple[int, int, int]

    @property
    def name(self) -> str:
        """The kernel's name without its template arguments: "pairwise_kernel"."""
        return self.kernel.split("<")[0]

    @property
    def num_threads(self) -> int:
        return int(np.prod(self.grid) * np.prod(self.block))


class Trace:
    """What the kernels did between the start and the end of a `tracing` block.

    launches: [Launch], in launch order.
    threads:  (E, 5) int64, one row per thread run (an "event", numbered by its row), in the order the
              emulation ran them: launch, blockIdx.x, blockIdx.y, threadIdx.x, threadIdx.y.
    writes:   (W, 4) int64, one row per watched element a thread wrote: event, watch (its index in
              `watch`), element, and the bits written (zero-extended to 64 bits; see `values`).
    atomics:  (A, 4) int64, one row per atomicAdd or atomicOr, in the order they ran: event, address
              (bytes), the bits of the value, and 0 for an add, 1 for an or.
    atomic_values: (A,) float64, each atomic's value (an integer's as a signed 64-bit number).
    """

    def __init__(self, watch):
        self.watch = list(watch)
        self.launches: list[Launch] = []
        self.threads = self.writes = self.atomics = self.atomic_values = None

    def _fill(self, recorded) -> None:
        kernels, launches, self.threads, self.writes, self.atomics, self.atomic_values = recorded
        names = kernels.splitlines()
        self.launches = [
            Launch(name, tuple(row[:3]), tuple(row[3:])) for name, row in zip(names, launches.tolist(), strict=True)
        ]

    def writer(self, watch: int = 0) -> torch.Tensor:
        """(numel,) int64: the event that wrote each element of watched buffer `watch`, -1 where no
        thread did. An element written by several threads is an error here (none of minimtl's
        outputs is: each has one owner)."""
        numel = self.watch[watch][2]
        rows = self.writes[self.writes[:, 1] == watch]
        counts = torch.bincount(rows[:, 2], minlength=numel)
        if (counts > 1).any():
            raise ValueError(f"elements of watch {watch} written by several threads: {counts.gt(1).nonzero()[:5]}")
        out = torch.full((numel,), -1, dtype=torch.long)
        out[rows[:, 2]] = rows[:, 0]
        return out

    def values(self, watch: int, dtype: torch.dtype) -> torch.Tensor:
        """(numel,) of `dtype`: what the threads wrote into watched buffer `watch` (0 where none did)."""
        numel = self.watch[watch][2]
        rows = self.writes[self.writes[:, 1] == watch]
        size = torch.empty((), dtype=dtype).element_size()
        raw = np.zeros(numel, dtype=f"<u{size}")
        raw[rows[:, 2].numpy()] = rows[:, 3].numpy().astype(np.uint64).astype(f"<u{size}")
        if dtype == torch.bool:
            return torch.from_numpy(raw != 0)
        return torch.from_numpy(raw.view(torch.empty((), dtype=dtype).numpy().dtype).copy())


@contextlib.contextmanager
def tracing(watch=()):
    """Record every launch of the emulation's ops inside the block (yields a `Trace`, filled at its end).

    watch: (kernel name, argument index, numel) triples: for every launch of that kernel, which thread
    writes which of the first numel elements of that pointer argument (counted from 0 in the kernel's
    signature). Watch only buffers the kernel writes and never reads (cuda_on_cpu.h says why).
    """
    watch = [(str(kernel), int(argument), int(numel)) for kernel, argument, numel in watch]
    trace = Trace(watch)
    ops = torch.ops.minimtl_emulated
    ops.trace_start([w[0] for w in watch], [w[1] for w in watch], [w[2] for w in watch])
    try:
        yield trace
    finally:
        trace._fill(ops.trace_stop())


@contextlib.contextmanager
def thread_order(seed: int):
    """Inside the block, every launch runs its threads in an order shuffled from `seed` (>= 0)."""
    if seed < 0:
        raise ValueError(f"thread_order: seed must be >= 0, got {seed}")
    torch.ops.minimtl_emulated.set_thread_order(seed)
    try:
        yield
    finally:
        torch.ops.minimtl_emulated.set_thread_order(-1)
