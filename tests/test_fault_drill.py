"""Fault drill for training: a run killed with SIGKILL - mid-epoch, or in the middle of writing a
checkpoint - resumes to exactly the metrics log and the model of a run that was never
interrupted; and two runs with the same seed give the same losses, step for step.

The kills are real: each run is a separate Python process that sends itself SIGKILL, so nothing
(no `finally`, no flush) runs after it.
"""

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from test_engine import ToyData, ToyModel, read_log

from minimtl.data import ShapesDataset
from minimtl.engine import TrainConfig, Trainer, load_checkpoint
from minimtl.models.multitask import MultiTaskConfig, MultiTaskRCNN

TESTS = Path(__file__).resolve().parent

RUN = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import torch
from test_engine import ToyData, ToyModel
import minimtl.engine.trainer as trainer
from minimtl.engine import TrainConfig, Trainer

KILL_AT_STEP, KILL_IN_CHECKPOINT = {kill_at_step}, {kill_in_checkpoint}
torch.manual_seed(0)
model = ToyModel()
if KILL_AT_STEP:
    steps = {{"n": 0}}
    def hook(module, args):
        steps["n"] += 1
        if steps["n"] == KILL_AT_STEP:
            os.kill(os.getpid(), signal.SIGKILL)
    model.register_forward_pre_hook(hook)
if KILL_IN_CHECKPOINT:  # the n-th checkpoint dies after its temporary file is written, before the rename
    saves = {{"n": 0}}
    real_fsync = trainer.os.fsync
    def fsync(fd):
        saves["n"] += 1
        if saves["n"] == KILL_IN_CHECKPOINT:
            os.kill(os.getpid(), signal.SIGKILL)
        real_fsync(fd)
    trainer.os.fsync = fsync
config = TrainConfig(steps=12, batch_size=3, lr=0.1, warmup_steps=2, log_every=1, checkpoint_every=4,
                     progress=False, output_dir={out!r}, seed=1)
Trainer(model, ToyData(), config, log=print).train()
torch.save({{"w": model.w.detach(), "b": model.b.detach()}}, {out!r} + "/final.pt")
"""


def train_process(out: Path, kill_at_step=0, kill_in_checkpoint=0) -> subprocess.CompletedProcess:
    code = RUN.format(tests=str(TESTS), out=str(out), kill_at_step=kill_at_step, kill_in_checkpoint=kill_in_checkpoint)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    result = train_process(out)
    assert result.returncode == 0, result.stderr
    return read_log(out), torch.load(out / "final.pt")


@pytest.mark.parametrize(
    "kill_at_step, kill_in_checkpoint, resumed_at",
    [(7, 0, 4), (0, 2, 4), (0, 3, 8)],
    ids=["mid_epoch_step_7", "mid_checkpoint_write_step_8", "mid_final_checkpoint_write"],
)
def test_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path, uninterrupted, kill_at_step, kill_in_checkpoint,
                                                          resumed_at):  # fmt: skip
    killed = train_process(tmp_path, kill_at_step, kill_in_checkpoint)
    assert killed.returncode == -signal.SIGKILL
    assert load_checkpoint(tmp_path / "last.pt")["step"] == resumed_at  # the last complete checkpoint
    if kill_in_checkpoint:
        assert (tmp_path / "last.pt.tmp").exists()  # the torn write, never renamed over last.pt
    resumed = train_process(tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {tmp_path / 'last.pt'} at step {resumed_at}" in resumed.stdout
    expected_log, expected_weights = uninterrupted
    assert read_log(tmp_path) == expected_log  # every step once, the same losses
    weights = torch.load(tmp_path / "final.pt")
    assert all(torch.equal(weights[k], expected_weights[k]) for k in ("w", "b"))


def test_a_corrupted_checkpoint_is_refused_not_loaded(tmp_path):
    Trainer(ToyModel(), ToyData(), TrainConfig(steps=4, checkpoint_every=4, progress=False, output_dir=str(tmp_path)),
            log=lambda *_: None).train()  # fmt: skip
    data = bytearray((tmp_path / "last.pt").read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit
    (tmp_path / "last.pt").write_bytes(bytes(data))
    config = TrainConfig(steps=8, checkpoint_every=4, progress=False, output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="last.pt is corrupted: its checksum does not match"):
        Trainer(ToyModel(), ToyData(), config, log=lambda *_: None).train()


def test_two_detector_runs_with_the_same_seed_are_identical(tmp_path):
    """20 steps of a small multi-task Mask R-CNN on the CPU, twice: the same losses, the same weights."""
    small = dict(min_size=64, max_size=64, backbone_width=8, fpn_channels=16, representation_size=64,
                 mask_layers=(16,), mask_dim_reduced=16, rpn_batch_size_per_image=32, box_batch_size_per_image=32,
                 anchor_sizes=((8,), (16,), (32,), (64,), (128,)), rpn_pre_nms_top_n_train=100,
                 rpn_post_nms_top_n_train=50, norm="gn", backbone="resnet18", semantic_channels=16)  # fmt: skip
    runs = []
    for name in ("a", "b"):
        torch.manual_seed(0)
        model = MultiTaskRCNN(MultiTaskConfig(num_classes=4, **small))
        config = TrainConfig(steps=20, batch_size=2, optimizer="adamw", lr=1e-3, warmup_steps=2, log_every=1,
                             progress=False, output_dir=str(tmp_path / name), seed=3)  # fmt: skip
        Trainer(model, ShapesDataset(40, 64, seed=0), config, log=lambda *_: None).train()
        runs.append((read_log(tmp_path / name), model.state_dict()))
    (log_a, state_a), (log_b, state_b) = runs
    assert len(log_a) == 20 and log_a == log_b
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
