"""More than one process: the process group that torchrun describes in the environment.

    torchrun --nproc_per_node=2 -m minimtl train ...

torchrun starts one process per GPU (or per CPU share) and sets RANK, LOCAL_RANK, WORLD_SIZE,
MASTER_ADDR and MASTER_PORT in each. `process_group` joins them into one group: NCCL
between GPUs, gloo on the CPU. The trainer then wraps the model in DistributedDataParallel (see
minimtl/engine/trainer.py); without torchrun (WORLD_SIZE unset or 1) nothing happens.
"""

import contextlib
import os

import torch


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextlib.contextmanager
def process_group(device: torch.device):
    """Join the process group torchrun set up, for the duration of a `with`; yields (rank, world size):
    (0, 1) without torchrun. A group that already exists (set up by the caller) is used and left as is."""
    if not launched_by_torchrun():
        yield 0, 1
        return
    created = not torch.distributed.is_initialized()
    if created:
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield torch.distributed.get_rank(), torch.distributed.get_world_size()
    finally:
        if created:
            torch.distributed.destroy_process_group()
