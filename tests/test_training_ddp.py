"""Data-parallel training: two gloo processes (``difflab train`` with the environment torchrun sets)
reach the weights of one process at the same global batch, up to float rounding."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from difflab.training.checkpoint import load_checkpoint
from difflab.training.config import merge_defaults
from difflab.training.loop import Trainer, train

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is not available"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(accumulate: int) -> dict:
    """A class-conditional UNet on the 8x8 digits, label dropout on, global batch 16, 5 steps."""
    return {
        "run": {"steps": 5, "log_every": 1, "checkpoint_every": 100, "threads": 1},
        "data": {"name": "digits"},
        "model": {
            "type": "unet",
            "in_channels": 1,
            "image_size": 8,
            "channels": 8,
            "channel_mult": [1, 2],
            "num_res_blocks": 1,
            "attention_resolutions": [4],
            "head_channels": 8,
            "num_classes": 10,
            "time_embedding": "fourier",
        },
        "objective": {"process": "vp_cosine", "prediction": "eps", "label_dropout": 0.3},
        "optim": {"lr": 2e-3, "batch_size": 16, "accumulate": accumulate, "warmup": 2},
        "ema": {"kind": "power", "sigma_rel": 0.1},
    }


def losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if "loss" in r]


def test_two_processes_match_one(tmp_path):
    """2 ranks x 2 accumulated micro-batches of 4 against one process with one batch of 16."""
    path = tmp_path / "ddp.json"
    path.write_text(json.dumps(config(accumulate=2)))
    run_dir = tmp_path / "ddp"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": "2",
    }
    command = [sys.executable, "-m", "difflab", "train", "--config", str(path)]
    ranks = [
        subprocess.Popen(
            [*command, "--run-dir", str(run_dir)],
            cwd=ROOT,
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    try:
        results = [p.communicate(timeout=300) for p in ranks]
    finally:
        for p in ranks:
            p.kill()
    for p, (_, err) in zip(ranks, results):
        assert p.returncode == 0, err
    assert f"wrote {run_dir / 'model'}" in results[0][0]
    assert "wrote" not in results[1][0]  # rank 1 writes nothing

    single = train(config(accumulate=1), run_dir=tmp_path / "single", progress=False)
    ddp = load_checkpoint(run_dir)
    assert ddp.step == 5 and ddp.ema["ema"]["updates"] == 5
    for theirs, ours in [
        (ddp.model, single.net.state_dict()),
        (ddp.ema["ema"]["model"], single.ema.model.state_dict()),
    ]:
        assert theirs.keys() == ours.keys()
        for key in ours:
            torch.testing.assert_close(theirs[key], ours[key], rtol=1e-5, atol=1e-6, msg=key)
    torch.testing.assert_close(losses(run_dir), losses(tmp_path / "single"), rtol=1e-5, atol=0)
    initial = Trainer(merge_defaults(config(accumulate=1)), tmp_path / "init", progress=False)
    assert not torch.equal(initial.net.out[2].weight, single.net.out[2].weight)


def test_text_in_two_processes_matches_one(tmp_path):
    """The text task through the same loop: 2 ranks x 2 micro-batches against one process."""
    import numpy as np

    from difflab.text.train import train as train_text

    np.save(tmp_path / "tokens.npy", np.random.default_rng(0).integers(0, 5, 400))
    text = {
        "run": {"steps": 3, "log_every": 1, "checkpoint_every": 100},
        "data": {"path": str(tmp_path / "tokens.npy"), "vocab_size": 5},
        "model": {"context": 8, "dim": 16, "depth": 1, "heads": 2},
        "optim": {"batch_size": 8, "accumulate": 2, "warmup": 1},
    }
    path = tmp_path / "text.json"
    path.write_text(json.dumps(text))
    run_dir = tmp_path / "ddp"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": "2",
    }
    command = [sys.executable, "-m", "difflab", "text", "train", "--config", str(path)]
    ranks = [
        subprocess.Popen(
            [*command, "--run-dir", str(run_dir)],
            cwd=ROOT,
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    try:
        results = [p.communicate(timeout=300) for p in ranks]
    finally:
        for p in ranks:
            p.kill()
    for p, (_, err) in zip(ranks, results):
        assert p.returncode == 0, err
    assert f"wrote {run_dir / 'model'}" in results[0][0]
    assert "wrote" not in results[1][0]

    single = train_text(
        {**text, "optim": {**text["optim"], "accumulate": 1}},
        run_dir=tmp_path / "single",
        progress=False,
    )
    ddp = load_checkpoint(run_dir)
    assert ddp.step == 3
    for key, ours in single.net.state_dict().items():
        torch.testing.assert_close(ddp.model[key], ours, rtol=1e-5, atol=1e-6, msg=key)
    torch.testing.assert_close(losses(run_dir), losses(tmp_path / "single"), rtol=1e-5, atol=0)
