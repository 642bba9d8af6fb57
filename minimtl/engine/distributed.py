"""More than one process: the process group that torchrun describes in the environment.

    torchrun --nproc_per_node=2 -m minimtl train ...

torchrun starts one process per GPU (or per CPU share) and sets RANK, LOCAL_RANK, WORLD_SIZE,
MASTER_ADDR and MASTER_PORT in each. `init_from_environment` joins them into one group: NCCL
between GPUs, gloo on the CPU. The trainer then wraps the model in DistributedDataParallel (see
minimtl/engine/trainer.py); without torchrun (WORLD_SIZE unset or 1) nothing happens.
"""

import os

import torch


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_environment(device: torch.device) -> tuple[int, int]:
    """Join the process group torchrun set up (once); returns (rank, world size). (0, 1) without torchrun."""
    if not launched_by_torchrun():
        return 0, 1
    if not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group(backend)
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def shutdown() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
