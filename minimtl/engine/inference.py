"""Inference over a dataset: the model's detections for every image, on the CPU, with the targets."""

import torch
from torch.utils.data import DataLoader

from minimtl.data.loader import collate


@torch.no_grad()
def predict(model, dataset, batch_size: int = 4, device=None, num_workers: int = 0, progress: bool = False):
    """(predictions, targets): one dict per image, tensors on the CPU, in the dataset's order."""
    device = device or next(model.parameters()).device
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate, num_workers=num_workers)
    if progress:
        from tqdm import tqdm

        loader = tqdm(loader, desc="predict", dynamic_ncols=True)
    predictions, targets = [], []
    for images, batch_targets in loader:
        outputs = model([img.to(device) for img in images])
        predictions += [{k: v.cpu() for k, v in out.items()} for out in outputs]
        targets += batch_targets
    return predictions, targets
