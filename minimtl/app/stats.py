"""`python -m minimtl data stats`: a COCO-format file measured against the settings a run would use.

The anchors and the image size are the ones `train` would use with the same --preset / --config /
--set (the image size decided from the data as train decides it), so that a user can try settings
here, in seconds, before a training run: `--set model.anchor_sizes=[[8],[16],[32],[64],[128]]` or
`--set data.min_size=512`. The measuring itself is minimtl/data/stats.py.
"""

import json
from pathlib import Path

from minimtl.app.config import RunConfig
from minimtl.app.run import image_size
from minimtl.data import CocoDataset
from minimtl.data.stats import DataStats, data_stats, suggest_anchor_sizes


def stats_for(run: RunConfig, annotation_file, image_dir=None, masks: bool = True) -> tuple[DataStats, list]:
    """The statistics of a COCO file under `run`'s settings, and the anchor sizes to try
    (suggest_anchor_sizes). Reads the annotations only: the images need not be there."""
    dataset = CocoDataset(annotation_file, image_dir or Path(annotation_file).parent)
    min_size, max_size = image_size(run.data, dataset.image_sizes or [(run.data.min_size or 800,) * 2])
    config = run.model.config(num_classes=len(dataset.categories), min_size=min_size, max_size=max_size,
                              masks=dataset.masks)  # fmt: skip
    stats = data_stats(dataset, config.anchor_sizes, config.aspect_ratios, min_size, max_size, masks=masks)
    return stats, suggest_anchor_sizes(dataset, stats)


def report(stats: DataStats, suggestions: list) -> str:
    """The summary, then the anchor sizes to try, as a person reads them."""
    lines = [stats.summary()]
    if len(stats.labels):
        current = [list(s) for s in stats.anchor_sizes]
        lines.append("anchor sizes to try (the share of objects none of them reaches at IoU >= 0.5, and >= 0.7):")
        flags = [f"--set model.anchor_sizes={json.dumps([list(s) for s in sizes], separators=(',', ':'))}"
                 for sizes, _, _ in suggestions]  # fmt: skip
        width = max(map(len, flags))
        for flag, (sizes, at_05, at_07) in zip(flags, suggestions, strict=True):
            mark = "   <- the current setting" if [list(s) for s in sizes] == current else ""
            lines.append(f"  {flag:<{width}}  {at_05:6.1%} {at_07:6.1%}{mark}")
    return "\n".join(lines)
