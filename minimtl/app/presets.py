"""Presets: tested recipes to start from. `python -m minimtl config NAME` prints one, fully resolved.

    small   the default of `train`: a narrow ResNet-18-FPN Mask R-CNN (width 32, GroupNorm) trained
            from scratch with AdamW; for small datasets of small images on a CPU or one GPU. The
            image size comes from the data (data.min_size / data.max_size to choose).
    demo    `small` on synthetic shapes, 3000 steps: `python -m minimtl demo` (the README's numbers).
    full    torchvision's Mask R-CNN ResNet-50-FPN recipe (800-pixel images, SGD 0.02 for 16 images,
            90k steps, step decay): for a GPU, with an ImageNet backbone (--set
            model.backbone_weights=resnet50.pth, which brings frozen BatchNorm and 3 trainable stages).

A preset is a layer of {section: {key: value}}, like a --config file; minimtl/app/config.py resolves
it over the defaults of each section.
"""

# The demo's model: the same code path as Mask R-CNN R18-FPN, narrower, for small images and few of them.
SMALL_MODEL = {
    "kind": "rcnn",
    "backbone": "resnet18",
    "backbone_width": 32,
    "fpn_channels": 64,
    "norm": "gn",
    "representation_size": 256,
    "mask_layers": [64, 64],
    "mask_dim_reduced": 64,
    "anchor_sizes": [[16], [32], [64], [128], [256]],
    "rpn_batch_size_per_image": 128,
    "rpn_pre_nms_top_n_train": 600,
    "rpn_post_nms_top_n_train": 300,
    "rpn_pre_nms_top_n_test": 300,
    "rpn_post_nms_top_n_test": 100,
    "box_batch_size_per_image": 128,
}
SMALL_TRAIN = {
    "steps": 3000,
    "batch_size": 4,
    "optimizer": "adamw",
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "warmup_steps": 100,
    "schedule": "cosine",
    "grad_clip": 10.0,
    "checkpoint_every": 500,
    "log_every": 25,
}

PRESETS: dict[str, dict] = {
    "small": {"model": SMALL_MODEL, "train": {**SMALL_TRAIN, "eval_every": 500}},
    "demo": {
        "model": SMALL_MODEL,
        "train": {**SMALL_TRAIN, "output_dir": "reports/demo"},
        "data": {"image_size": 128, "num_test_images": 200},
    },
    "full": {
        "model": {"kind": "rcnn", "backbone": "resnet50"},
        "train": {
            "steps": 90_000,
            "batch_size": 16,
            "optimizer": "sgd",
            "lr": 0.02,
            "momentum": 0.9,
            "weight_decay": 1e-4,
            "warmup_steps": 1000,
            "schedule": "step",
            "milestones": [0.667, 0.889],
            "checkpoint_every": 5000,
            "eval_every": 5000,
        },
        "data": {"min_size": 800, "max_size": 1333},
    },
}
DEFAULT_PRESET = "small"  # what `train` uses without --preset


def preset(name: str) -> dict:
    """The layer of a preset by name; the error lists the presets."""
    if name not in PRESETS:
        from minimtl.app.config import ConfigError

        raise ConfigError(f"unknown preset {name!r}; the presets are {', '.join(PRESETS)}")
    return {section: dict(values) for section, values in PRESETS[name].items()}
