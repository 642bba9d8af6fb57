"""Training-step benchmark: minimtl's Mask R-CNN against torchvision's, same configuration, one run.

    python -m minimtl.bench train                 # CPU: 2 images of 256 x 256, 3 objects each
    python -m minimtl.bench train --device cuda   # the same on the GPU

Both models are Mask R-CNN with a ResNet-18-FPN backbone (BatchNorm, all layers trainable), 4
classes, min_size = max_size = 256, torchvision's defaults otherwise; minimtl's starts from
torchvision's initial weights (convert_torchvision_state_dict). A step is forward, backward and an
SGD update; inference is one eval-mode forward pass without gradients. Medians in milliseconds;
the ratio is minimtl / torchvision (lower is better).
"""

import argparse
import json
import statistics
import time

import torch

from minimtl import models


def synthetic_batch(num_images=2, size=256, objects=3, device="cpu", seed=0):
    """Random images with `objects` rectangles each: boxes, labels in [1, 3], filled masks."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(num_images):
        xy = torch.rand(objects, 2, generator=g) * (size * 0.6)
        wh = torch.rand(objects, 2, generator=g) * (size * 0.3) + size * 0.08
        boxes = torch.cat([xy, xy + wh], dim=1).round()
        masks = torch.zeros(objects, size, size, dtype=torch.uint8)
        for k, (x1, y1, x2, y2) in enumerate(boxes.long().tolist()):
            masks[k, y1:y2, x1:x2] = 1
        labels = torch.randint(1, 4, (objects,), generator=g)
        images.append(torch.rand(3, size, size, generator=g).to(device))
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device), "masks": masks.to(device)})
    return images, targets


def build_pair(device: str):
    """(minimtl model, torchvision model), the same network with the same initial weights."""
    from torch import nn
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(
        backbone_name="resnet18", weights=None, norm_layer=nn.BatchNorm2d, trainable_layers=5
    )
    theirs = MaskRCNN(backbone, num_classes=4, min_size=256, max_size=256)
    ours = models.maskrcnn_resnet18_fpn(4, min_size=256, max_size=256)
    ours.load_state_dict(models.convert_torchvision_state_dict(theirs.state_dict()))
    return ours.to(device), theirs.to(device)


def _median_ms(fn, device: str, warmup: int, runs: int) -> float:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def time_inference(model, images, device: str, runs: int) -> float:
    model.eval()

    def infer():
        with torch.no_grad():
            model(images)

    return _median_ms(infer, device, warmup=1, runs=runs)


def time_training(model, images, targets, device: str, runs: int) -> float:
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        losses = model(images, targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()

    return _median_ms(step, device, warmup=2, runs=runs)


def run(device: str = "cpu", runs: int = 7, size: int = 256) -> dict:
    ours, theirs = build_pair(device)
    images, targets = synthetic_batch(size=size, device=device)
    # Inference first, while both still hold the same weights (training moves them apart, and the
    # number of detections, hence the work, with them).
    ours_infer, tv_infer = time_inference(ours, images, device, runs), time_inference(theirs, images, device, runs)
    ours_train = time_training(ours, images, targets, device, runs)
    tv_train = time_training(theirs, images, targets, device, runs)
    return {
        "device": device,
        "train_ms": {"minimtl": ours_train, "torchvision": tv_train, "ratio": ours_train / tv_train},
        "inference_ms": {"minimtl": ours_infer, "torchvision": tv_infer, "ratio": ours_infer / tv_infer},
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--runs", type=int, default=7, help="timed repetitions (medians are reported)")
    parser.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")


def main(args: argparse.Namespace) -> int:
    try:
        import torchvision
    except ImportError:
        print("python -m minimtl.bench train compares with torchvision, which is not installed")
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA GPU is available")
        return 2
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    versions = f"torch {torch.__version__}, torchvision {torchvision.__version__}"
    print(f"Mask R-CNN R18-FPN, 2 images 256x256, 3 objects each; {where}; {versions}")
    result = run(args.device, args.runs)
    print(f"{'':18}{'minimtl ms':>12}{'torchvision ms':>16}{'minimtl/tv':>12}")
    for name in ("train_ms", "inference_ms"):
        r = result[name]
        label = "training step" if name == "train_ms" else "inference"
        print(f"{label:18}{r['minimtl']:12.1f}{r['torchvision']:16.1f}{r['ratio']:12.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0
