"""Batching for detection: images of different sizes stay a list, targets a list of dicts.

make_loader builds a DataLoader that works with worker processes (the collate function and the
datasets are picklable) and, under torch.distributed, gives each process its share of the data.
"""

import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler


def split_key(key) -> tuple[int, int]:
    """A dataset key: an index, or (index, salt) where the salt varies the augmentation (the trainer
    passes the epoch, so that each pass over the data is augmented afresh, yet reproducibly)."""
    if isinstance(key, tuple):
        return int(key[0]), int(key[1])
    return int(key), 0


def collate(batch):
    """[(image, target), ...] -> (list of images, list of targets)."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool = False,
    num_workers: int = 0,
    seed: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader of (images, targets) batches; with torch.distributed initialised, a shard per process."""
    sampler = None
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
        shuffle = False
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        drop_last=drop_last,
        generator=generator,
        persistent_workers=num_workers > 0,
    )
