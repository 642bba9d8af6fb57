"""Training: a loop that can be stopped at any moment and resumed exactly.

    trainer = Trainer(model, dataset, TrainConfig(steps=2000, output_dir="runs/shapes"))
    trainer.train()   # resumes from runs/shapes/last.pt if it exists

Each step draws a batch, computes the model's loss dict, stops with a clear error if a term is NaN
or infinite (naming it), backpropagates the sum, clips the gradient norm, and steps the optimiser
and the learning-rate schedule (linear warm-up, then cosine or step decay). Every `log_every`
steps a line goes to metrics.jsonl; every `checkpoint_every` steps, and at the end, a checkpoint.

Nothing is lost when a run is killed: the checkpoint is written to a temporary file and renamed
(a rename is atomic), it holds everything the next steps depend on (weights, optimiser, schedule,
random states, the step), and the data order is a function of (seed, step) alone; on resume the
metrics lines written after the checkpoint are dropped, since those steps run again. A resumed run
therefore computes the same losses as one that was never interrupted. The checkpoint also keeps the
seconds spent training up to it (`trainer.seconds`), so a resumed run reports what the whole run
cost, not only its last part (the work a crash lost after the last checkpoint is not counted).

A model may combine its loss terms itself: if it has `total_loss(losses)` (MultiTaskRCNN), that is
what is backpropagated, and its `loss_weights()` are logged. With `pcgrad=True` each task's
gradient is computed apart and conflicting components projected out (minimtl.losses.pcgrad).

Validation: with an `evaluator` (a function model -> {metric: value}, e.g. {"box.AP": 0.41}) and
`eval_every` > 0, the model is evaluated every eval_every steps and at the end; the numbers go to
metrics.jsonl as {"step": s, "eval": {...}}, and best.pt keeps the checkpoint with the best
`eval_metric` (higher is better) beside last.pt.

Under torchrun the same loop runs with DistributedDataParallel: `batch_size` is the images of one
step in all, each process takes its share (batch_size / world_size), the gradients are averaged,
and the logged losses are the processes' mean, so one process with batch B and two with B / 2 each
log the same losses (up to the samplers' random draws). Only rank 0 writes (checkpoints, the log)
and evaluates.
"""

import hashlib
import io
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from minimtl.data.loader import collate
from minimtl.losses.pcgrad import pcgrad_backward


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 4  # images per step, all processes together
    optimizer: str = "sgd"  # sgd or adamw
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    warmup_factor: float = 0.001  # the learning rate starts at lr * warmup_factor
    schedule: str = "cosine"  # cosine or step
    milestones: tuple[float, ...] = (0.67, 0.89)  # step schedule: fractions of `steps`
    gamma: float = 0.1
    grad_clip: float | None = 10.0  # max gradient norm; None: no clipping
    amp: bool = True  # mixed precision on CUDA (bfloat16 where supported, else float16)
    seed: int = 0
    num_workers: int = 0
    log_every: int = 20
    checkpoint_every: int = 500
    output_dir: str = "runs/train"
    device: str = "auto"  # auto: CUDA when present
    resume: bool = True  # continue from output_dir/last.pt if it exists
    progress: bool = True  # a tqdm bar on a terminal; into a file or pipe, a plain line every log_every steps
    pcgrad: bool = False  # PCGrad gradient surgery between the tasks of a multi-task model
    eval_every: int = 0  # evaluate every this many steps (and at the end) when given an evaluator; 0: never
    eval_metric: str | None = None  # the metric best.pt is chosen by (e.g. "box.AP"); None: the evaluator's first

    def __post_init__(self):
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"TrainConfig: optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.schedule not in ("cosine", "step"):
            raise ValueError(f"TrainConfig: schedule must be 'cosine' or 'step', got {self.schedule!r}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"TrainConfig: steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}")
        if self.eval_every < 0 or self.log_every < 1 or self.checkpoint_every < 1:
            raise ValueError(
                "TrainConfig: eval_every must be >= 0, log_every and checkpoint_every >= 1, got "
                f"{self.eval_every}, {self.log_every}, {self.checkpoint_every}"
            )


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class StepSampler(Sampler):
    """Dataset keys (index, epoch) for steps start_step, start_step + 1, ...: this process's share.

    The global order is a fixed permutation of the dataset per epoch, seeded by (seed, epoch);
    global batch s is positions [s * B * W, (s + 1) * B * W) of the concatenated epochs, and process r
    takes its r-th slice of B. The order depends only on (seed, step), which makes resuming exact.
    """

    def __init__(self, size: int, batch_size: int, seed: int, start_step: int, steps: int, rank=0, world=1):
        if size == 0:
            raise ValueError("Trainer: the dataset is empty")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.start_step, self.steps, self.rank, self.world = start_step, steps, rank, world

    def _epoch(self, epoch: int) -> list[int]:
        return torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch)).tolist()

    def __iter__(self):
        global_batch = self.batch_size * self.world
        position = self.start_step * global_batch + self.rank * self.batch_size
        cached_epoch, order = -1, []
        for _ in range(self.start_step, self.steps):
            for p in range(position, position + self.batch_size):
                epoch = p // self.size
                if epoch != cached_epoch:
                    cached_epoch, order = epoch, self._epoch(epoch)
                yield order[p % self.size], epoch
            position += global_batch

    def __len__(self) -> int:
        return max(self.steps - self.start_step, 0) * self.batch_size


def learning_rate_factor(step: int, config: TrainConfig) -> float:
    """Linear warm-up from warmup_factor to 1, then cosine decay to 0 or steps of gamma."""
    if step < config.warmup_steps:
        alpha = step / config.warmup_steps
        return config.warmup_factor * (1 - alpha) + alpha
    if config.schedule == "cosine":
        progress = (step - config.warmup_steps) / max(config.steps - config.warmup_steps, 1)
        return 0.5 * (1 + math.cos(math.pi * progress))
    return config.gamma ** sum(step >= m * config.steps for m in config.milestones)


class Trainer:
    def __init__(
        self,
        model: torch.nn.Module,
        dataset,
        config: TrainConfig,
        log=print,
        metadata: dict | None = None,
        evaluator=None,
    ):
        """metadata: saved in every checkpoint as is (e.g. the model's config and the class names).
        evaluator: model -> {metric: value}, run every config.eval_every steps (see the module docstring)."""
        self.config, self.dataset, self.log, self.metadata = config, dataset, log, metadata or {}
        self.evaluator = evaluator
        self.rank, self.world = _world()
        if config.batch_size % self.world:
            raise ValueError(
                f"TrainConfig: batch_size {config.batch_size} (images per step, all processes) must be a multiple "
                f"of the number of processes, {self.world}"
            )
        self.local_batch_size = config.batch_size // self.world
        self.device = pick_device(config.device)
        if self.world > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", self.rank)))
        self.model = model.to(self.device)
        self.ddp = None
        if self.world > 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        params = [p for p in self.model.parameters() if p.requires_grad]
        if config.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(
                params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
            )
        else:
            self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: learning_rate_factor(s, config))
        self.amp_dtype = None
        if config.amp and self.device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        if config.pcgrad:
            strategy = getattr(getattr(model, "config", None), "loss_strategy", None)
            if not hasattr(model, "task_losses") or strategy not in ("fixed", "dwa"):
                raise ValueError(
                    "TrainConfig.pcgrad needs a multi-task model (MultiTaskRCNN) with loss_strategy 'fixed' or 'dwa' "
                    "(uncertainty's weights are learned through the backward pass that PCGrad replaces, and "
                    f"GradNorm computes per-task gradients of its own), got {type(model).__name__} with "
                    f"loss_strategy {strategy!r}"
                )
            if self.ddp is not None:
                raise ValueError("TrainConfig.pcgrad is not supported under DistributedDataParallel")
        self.step = 0
        self.best: dict | None = None  # {"metric", "value", "step"} of best.pt
        # Seconds spent in train() up to self.step, over every call (a resumed run adds to its
        # checkpoint's): what a run cost, however often it was stopped.
        self.seconds = 0.0
        self.output_dir = Path(config.output_dir)
        self.is_main = self.rank == 0

    # --- checkpoints -------------------------------------------------------------------------

    @property
    def checkpoint_path(self) -> Path:
        return self.output_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.output_dir / "best.pt"

    @property
    def metrics_path(self) -> Path:
        return self.output_dir / "metrics.jsonl"

    def state(self) -> dict:
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": np.random.get_state(),
                "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            },
            "config": asdict(self.config),
            "metadata": self.metadata,
            "best": self.best,
            "seconds": self.seconds,
        }

    def save_checkpoint(self) -> None:
        if not self.is_main:
            return
        save_checkpoint(self.state(), self.checkpoint_path)

    def load_checkpoint(self, path: Path) -> None:
        state = load_checkpoint(path, map_location=self.device)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"].cpu())
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
        self.step = state["step"]
        self.best = state.get("best")
        self.seconds = state.get("seconds", 0.0)  # 0 in checkpoints written before it was kept

    # --- the loop ----------------------------------------------------------------------------

    def train(self) -> list[dict]:
        """Run (or resume) training to config.steps. Returns the metrics lines of this call."""
        config = self.config
        start = time.perf_counter()
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        if config.resume and self.checkpoint_path.exists():
            self.load_checkpoint(self.checkpoint_path)
            self._truncate_metrics(self.step)
            self.log(f"resumed from {self.checkpoint_path} at step {self.step}")
        else:
            torch.manual_seed(config.seed)
            np.random.seed(config.seed)
            random.seed(config.seed)
            self.seconds = 0.0
            if self.is_main and self.metrics_path.exists():
                self.metrics_path.unlink()  # a fresh run: a fresh log
        before = self.seconds
        sampler = StepSampler(
            len(self.dataset), self.local_batch_size, config.seed, self.step, config.steps, self.rank, self.world
        )
        # The loader's own generator: creating an iterator must not consume the global random state,
        # or a resumed run would drift from an uninterrupted one.
        loader = DataLoader(
            self.dataset,
            batch_size=self.local_batch_size,
            sampler=sampler,
            collate_fn=collate,
            num_workers=config.num_workers,
            generator=torch.Generator().manual_seed(config.seed),
        )
        written = []
        progress, plain = None, False
        if config.progress and self.is_main and (sys.stderr.isatty() or "ipykernel" in sys.modules):  # or Jupyter
            from tqdm import tqdm

            progress = tqdm(total=config.steps, initial=self.step, desc="train", dynamic_ncols=True)
        elif config.progress and self.is_main:  # a log file: a bar redrawn with \r would be one endless line
            plain = True
        network = self.ddp or self.model
        network.train()
        tick, images_seen = time.perf_counter(), 0
        try:
            for images, targets in loader:
                images = [img.to(self.device, non_blocking=True) for img in images]
                targets = [{k: v.to(self.device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                    losses = network(images, targets)
                for name, value in losses.items():
                    if not torch.isfinite(value):
                        raise FloatingPointError(
                            f"training stopped at step {self.step}: the loss term {name!r} is {value.item()} "
                            f"(all terms: { {k: round(v.item(), 4) for k, v in losses.items()} }). Lower the learning "
                            "rate, check the targets, or resume from the last checkpoint."
                        )
                self.optimizer.zero_grad(set_to_none=True)
                total = self._backward(losses)
                if config.grad_clip is not None:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.scheduler.step()
                self.step += 1
                images_seen += len(images) * self.world
                if self.step % config.log_every == 0 or self.step == config.steps:
                    elapsed = time.perf_counter() - tick
                    line = {"step": self.step, **self._mean_over_processes({"loss": total, **losses})}
                    line["lr"] = self.optimizer.param_groups[0]["lr"]
                    if hasattr(self.model, "loss_weights"):
                        line.update({f"weight_{task}": w for task, w in self.model.loss_weights().items()})
                    line["images_per_s"] = images_seen / max(elapsed, 1e-9)
                    tick, images_seen = time.perf_counter(), 0
                    if self.is_main:
                        with open(self.metrics_path, "a") as f:
                            f.write(json.dumps(line) + "\n")
                    written.append(line)
                    if progress is not None:
                        progress.set_postfix(loss=f"{line['loss']:.3f}", img_s=f"{line['images_per_s']:.1f}")
                    if plain:
                        self.log(f"step {self.step}/{config.steps}: loss {line['loss']:.4f}, "
                                 f"{line['images_per_s']:.1f} images/s")  # fmt: skip
                if progress is not None:
                    progress.update(1)
                last = self.step == config.steps
                if self.evaluator is not None and config.eval_every and (self.step % config.eval_every == 0 or last):
                    self._validate(network)
                if self.step % config.checkpoint_every == 0 or last:
                    self.seconds = before + time.perf_counter() - start
                    self.save_checkpoint()
        finally:  # an error mid-run too: the bar ends its line before the error is printed
            if progress is not None:
                progress.close()
        if self.world > 1:  # leave together: no process goes on (or exits) before the last checkpoint is written
            torch.distributed.barrier()
        return written

    def _mean_over_processes(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        """Each loss averaged over the processes (every process calls this at the same steps)."""
        stacked = torch.stack([v.detach().float() for v in values.values()])
        if self.world > 1:
            torch.distributed.all_reduce(stacked)
            stacked /= self.world
        return dict(zip(values, stacked.tolist(), strict=True))

    def _validate(self, network) -> None:
        """Evaluate (rank 0 only; the others wait), log the numbers, remember the best step."""
        if self.is_main:
            metrics = {k: float(v) for k, v in self.evaluator(self.model).items()}
            network.train()
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps({"step": self.step, "eval": metrics}) + "\n")
            name = self.config.eval_metric or next(iter(metrics), None)
            if name not in metrics:
                raise ValueError(
                    f"TrainConfig.eval_metric {name!r} is not among the evaluation's metrics: {sorted(metrics)}"
                )
            shown = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())
            self.log(f"step {self.step}: {shown}")
            if self.best is None or metrics[name] > self.best["value"]:
                self.best = {"metric": name, "value": metrics[name], "step": self.step}
                save_checkpoint(self.state(), self.best_path)
        if self.world > 1:
            torch.distributed.barrier()

    def _backward(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """Backpropagate the step's loss; returns it (detached when PCGrad computes the gradients)."""
        combine = getattr(self.model, "total_loss", None)
        if not self.config.pcgrad:
            total = combine(losses) if combine is not None else sum(losses.values())
            self.scaler.scale(total).backward()
            return total
        # PCGrad: one gradient per task, each weighted by this step's weight. total_loss is still
        # called: it is where a weighting that adapts in its forward (DWA) takes in this step's losses.
        weights = self.model.loss_weights()
        combine(losses)
        tasks = {task: weights[task] * loss for task, loss in self.model.task_losses(losses).items()}
        params = [p for p in self.model.parameters() if p.requires_grad]
        pcgrad_backward({task: self.scaler.scale(loss) for task, loss in tasks.items()}, params)
        return sum(tasks.values()).detach()

    def _truncate_metrics(self, step: int) -> None:
        """Drop the log lines of steps after the checkpoint: they will be computed again."""
        if not self.is_main or not self.metrics_path.exists():
            return
        lines = [line for line in self.metrics_path.read_text().splitlines() if line.strip()]
        kept = [line for line in lines if json.loads(line)["step"] <= step]
        tmp = self.metrics_path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.metrics_path)


MAGIC = b"minimtl-checkpoint-v1\n"


def save_checkpoint(state: dict, path: Path) -> None:
    """Write atomically: to a temporary file, flushed to disk, then renamed over `path`.

    The file is MAGIC, the SHA-256 of the payload (hex, newline), then the torch.save payload; a
    truncated or corrupted file fails the checksum on load instead of loading garbage.
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path, map_location=None) -> dict:
    data = Path(path).read_bytes()
    if not data.startswith(MAGIC):
        raise ValueError(f"{path} is not a minimtl checkpoint (or its header is damaged)")
    digest, payload = data[len(MAGIC) : len(MAGIC) + 64].decode(), data[len(MAGIC) + 65 :]
    if hashlib.sha256(payload).hexdigest() != digest:
        raise ValueError(f"{path} is corrupted: its checksum does not match (a partial write or a damaged file)")
    return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=False)
