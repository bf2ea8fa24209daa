"""Training checkpoints: bit-identical resume, RNG states, retention, fallbacks past damaged or
half-written checkpoints, and a saver killed with SIGKILL at random instants."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from difflab.training.checkpoint import (
    get_rng_state,
    latest_checkpoint,
    load_checkpoint,
    restore,
    save_checkpoint,
    set_rng_state,
)
from difflab.training.records import read_records, write_records
from difflab.utils.weights import load_weights

REPO = Path(__file__).resolve().parents[1]


def _setup(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 16), nn.SiLU(), nn.Dropout(0.2), nn.Linear(16, 4))
    ema = nn.Sequential(nn.Linear(4, 16), nn.SiLU(), nn.Dropout(0.2), nn.Linear(16, 4))
    ema.load_state_dict(model.state_dict())
    groups = [
        {"params": model[0].parameters(), "weight_decay": 0.1},
        {"params": model[3].parameters(), "lr": 3e-3, "betas": (0.8, 0.95)},
    ]
    optimizer = torch.optim.AdamW(groups, lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda n: 0.9**n)
    return model, ema, optimizer, scheduler


def _train(model, ema, optimizer, scheduler, steps):
    """Steps whose data and dropout masks come from the global torch RNG."""
    for _ in range(steps):
        x = torch.randn(8, 4)
        loss = (model(x) - x.flip(1)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            for e, p in zip(ema.parameters(), model.parameters()):
                e.lerp_(p, 0.1)


def _flat(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_resume_is_bit_identical(tmp_path):
    model, ema, optimizer, scheduler = _setup(0)
    _train(model, ema, optimizer, scheduler, 5)
    save_checkpoint(
        tmp_path, 5, model=model, ema={"main": ema}, optimizer=optimizer, scheduler=scheduler
    )
    _train(model, ema, optimizer, scheduler, 5)
    want_model, want_ema, want_lr = _flat(model), _flat(ema), scheduler.get_last_lr()

    model2, ema2, optimizer2, scheduler2 = _setup(1)  # different initial weights and RNG
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.step == 5
    restore(ckpt, model=model2, ema={"main": ema2}, optimizer=optimizer2, scheduler=scheduler2)
    _train(model2, ema2, optimizer2, scheduler2, 5)
    for k, v in want_model.items():
        assert torch.equal(model2.state_dict()[k], v), k
    for k, v in want_ema.items():
        assert torch.equal(ema2.state_dict()[k], v), k
    assert scheduler2.get_last_lr() == want_lr
    for a, b in zip(optimizer.param_groups, optimizer2.param_groups):
        assert {k: v for k, v in a.items() if k != "params"} == {
            k: v for k, v in b.items() if k != "params"
        }

    # the same Checkpoint restores again to the same point (restore copies, never aliases)
    model3, ema3, optimizer3, scheduler3 = _setup(2)
    restore(ckpt, model=model3, ema={"main": ema3}, optimizer=optimizer3, scheduler=scheduler3)
    _train(model3, ema3, optimizer3, scheduler3, 5)
    assert all(torch.equal(model3.state_dict()[k], v) for k, v in want_model.items())


def test_file_layout(tmp_path):
    model, ema, optimizer, scheduler = _setup(0)
    _train(model, ema, optimizer, scheduler, 2)
    folder = save_checkpoint(
        tmp_path, 123, model=model, ema={"main": ema}, optimizer=optimizer, config={"lr": 0.01}
    )
    assert folder == tmp_path / "checkpoints" / "step_000123"
    assert sorted(p.name for p in folder.iterdir()) == [
        "ema_main.safetensors",
        "model.safetensors",
        "optimizer.safetensors",
        "state.json",
    ]
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step_000123\n"
    assert load_weights(folder / "model.safetensors").keys() == model.state_dict().keys()
    opt = load_weights(folder / "optimizer.safetensors")
    assert {"state.0.exp_avg", "state.0.exp_avg_sq", "state.0.step", "state.3.exp_avg"} <= set(opt)
    state = json.loads((folder / "state.json").read_text())
    assert state["step"] == 123 and state["config"] == {"lr": 0.01}


def test_rng_states_round_trip(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1), np.random.standard_normal()  # leave cached Gaussians in both generators
    model = nn.Linear(2, 2)

    def draw():
        return (
            random.random(),
            random.gauss(0, 1),
            np.random.standard_normal(3).tolist(),
            np.random.randint(0, 1000, 4).tolist(),
            torch.rand(3).tolist(),
        )

    save_checkpoint(tmp_path, 1, model=model)
    state = get_rng_state()
    first = draw()
    set_rng_state(state)
    assert draw() == first
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(load_checkpoint(tmp_path).rng_state)
    assert draw() == first
    with pytest.raises(ValueError, match="unknown RNG state 'pyton'"):
        set_rng_state({"pyton": None})


class _Averager:
    """A stand-in for an object with state_dict()/load_state_dict() holding mixed state."""

    def __init__(self):
        self.state = {}

    def state_dict(self):
        return self.state

    def load_state_dict(self, state):
        self.state = state


def test_state_trees_round_trip(tmp_path):
    data_state = {
        "epoch": 3,
        "order": torch.randperm(50),
        "cursor": (7, "train"),
        "seen": {0: 10, 1: 12},
        "$weird": [1.5, None, True],
        "np": np.arange(6, dtype=np.int16).reshape(2, 3),
        "generator": torch.Generator().manual_seed(5).get_state(),
        "inf": float("inf"),
    }
    metrics = {"loss": torch.tensor(0.25), "fid": np.float64(12.5), "ok": np.bool_(True)}
    averager = _Averager()
    averager.state = {"updates": 4, "kind": "power", "weights": {"w": torch.ones(3)}}
    save_checkpoint(
        tmp_path,
        7,
        model=nn.Linear(2, 2),
        ema={"power-0.05": averager},
        data_state=data_state,
        metrics=metrics,
        config={"model": {"channels": [1, 2]}},
    )
    ckpt = load_checkpoint(tmp_path)
    got = ckpt.data_state
    assert got.keys() == data_state.keys()
    assert torch.equal(got["order"], data_state["order"])
    assert got["cursor"] == (7, "train") and got["seen"] == {0: 10, 1: 12}
    assert got["$weird"] == [1.5, None, True] and got["inf"] == float("inf")
    assert got["np"].dtype == np.int16 and np.array_equal(got["np"], data_state["np"])
    assert torch.equal(got["generator"], data_state["generator"])
    assert ckpt.metrics == {"loss": torch.tensor(0.25), "fid": 12.5, "ok": True}
    assert ckpt.config == {"model": {"channels": [1, 2]}}

    target = _Averager()
    restore(ckpt, ema={"power-0.05": target})
    assert target.state["updates"] == 4 and target.state["kind"] == "power"
    assert torch.equal(target.state["weights"]["w"], torch.ones(3))


def _steps(run_dir):
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("step_"))


def test_keep_removes_older_checkpoints(tmp_path):
    model = nn.Linear(2, 2)
    for step in range(1, 6):
        with torch.no_grad():
            model.weight.fill_(step)
        save_checkpoint(tmp_path, step, model=model, keep=2)
        kept = _steps(tmp_path)
        assert kept == [f"step_{n:06d}" for n in range(max(1, step - 1), step + 1)]
        assert torch.all(load_checkpoint(tmp_path).model["weight"] == step)

    for keep, name in ((1, "one"), (None, "all")):
        (tmp_path / name).mkdir()
        for step in range(1, 4):
            save_checkpoint(tmp_path / name, step, model=model, keep=keep)
    assert _steps(tmp_path / "one") == ["step_000003"]
    assert _steps(tmp_path / "all") == ["step_000001", "step_000002", "step_000003"]

    # resuming from an older checkpoint: the new one is kept, with the highest-numbered others
    save_checkpoint(tmp_path / "all", 2, model=nn.Linear(2, 2), keep=2)
    assert _steps(tmp_path / "all") == ["step_000002", "step_000003"]
    assert latest_checkpoint(tmp_path / "all").name == "step_000002"
    assert torch.equal(
        load_checkpoint(tmp_path / "all").model["weight"],
        load_weights(tmp_path / "all" / "checkpoints" / "step_000002" / "model.safetensors")[
            "weight"
        ],
    )

    with pytest.raises(ValueError, match="keep must be"):
        save_checkpoint(tmp_path / "all", 9, model=model, keep=0)


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_latest_falls_back_past_missing_pointer_and_damaged_checkpoints(tmp_path):
    model = nn.Linear(2, 2)
    for step in (1, 2):
        with torch.no_grad():
            model.weight.fill_(step)
        save_checkpoint(tmp_path, step, model=model, keep=None)
    root = tmp_path / "checkpoints"

    (root / "latest").unlink()
    assert latest_checkpoint(tmp_path).name == "step_000002"
    (root / "latest").write_text("../../etc")
    assert latest_checkpoint(tmp_path).name == "step_000002"

    model_file = root / "step_000002" / "model.safetensors"
    model_file.write_bytes(model_file.read_bytes()[:-10])
    (root / "latest").write_text("step_000002\n")
    assert latest_checkpoint(tmp_path).name == "step_000001"
    assert torch.all(load_checkpoint(tmp_path).model["weight"] == 1)
    with pytest.raises(ValueError, match=r"model\.safetensors has \d+ bytes but the checkpoint"):
        load_checkpoint(root / "step_000002")

    # a half-written temporary folder of a dead saver is ignored, then removed; a live one is kept
    dead = root / f".step_000003.{_dead_pid()}.0badcafe.tmp"
    live = root / f".step_000004.{os.getpid()}.0badcafe.tmp"
    for folder in (dead, live):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"partial")
    assert latest_checkpoint(tmp_path).name == "step_000001"
    assert not dead.exists() and live.exists()
    save_checkpoint(tmp_path, 5, model=model)  # the saver owns the run: it removes every leftover
    assert not live.exists()

    assert latest_checkpoint(tmp_path / "nowhere") is None
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        load_checkpoint(tmp_path / "empty")


def test_damaged_files_are_named(tmp_path):
    model, ema, optimizer, _ = _setup(0)
    _train(model, ema, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda n: 1.0), 1)
    folder = save_checkpoint(tmp_path, 1, model=model, ema={"main": ema}, optimizer=optimizer)

    opt_file = folder / "optimizer.safetensors"
    raw = bytearray(opt_file.read_bytes())
    raw[8:12] = b"\xff\xfe[{"  # same size, broken header
    opt_file.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"optimizer\.safetensors is not a safetensors file"):
        load_checkpoint(folder)

    (folder / "ema_main.safetensors").unlink()
    with pytest.raises(ValueError, match=r"incomplete: ema_main\.safetensors is missing"):
        load_checkpoint(folder)

    (folder / "state.json").write_text('{"format": "difflab checkpoint", "step": ')
    with pytest.raises(ValueError, match=r"state\.json is corrupt"):
        load_checkpoint(folder)


def test_restore_into_the_wrong_objects_names_the_file(tmp_path):
    model, ema, optimizer, _ = _setup(0)
    save_checkpoint(tmp_path, 1, model=model, ema={"main": ema}, optimizer=optimizer)
    ckpt = load_checkpoint(tmp_path)
    with pytest.raises(ValueError, match=r"model\.safetensors does not fit Linear: .*missing keys"):
        restore(ckpt, model=nn.Linear(4, 4))
    with pytest.raises(ValueError, match=r"optimizer\.safetensors does not fit the optimizer"):
        restore(ckpt, optimizer=torch.optim.AdamW(nn.Linear(4, 4).parameters()))
    with pytest.raises(ValueError, match=r"unknown EMA .* 'mian'"):
        restore(ckpt, ema={"mian": ema})


def test_bad_arguments_write_nothing(tmp_path):
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"cannot store data_state\.handle: a object"):
        save_checkpoint(tmp_path, 1, model=model, data_state={"handle": object()})
    with pytest.raises(ValueError, match="step must be an integer"):
        save_checkpoint(tmp_path, -1, model=model)
    with pytest.raises(ValueError, match="EMA name"):
        save_checkpoint(tmp_path, 1, model=model, ema={"../x": model})
    assert not (tmp_path / "checkpoints").exists()


# Imports torch once, then for each "go" line forks a saver that checkpoints in a loop until killed.
# The launcher reaps each killed saver, so the saver's pid no longer counts as alive.
SAVER = r"""
import os, sys, torch
from difflab.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

torch.set_num_threads(1)  # no thread pool in the launcher: forking stays safe
model = torch.nn.Linear(512, 1024)  # 2 MB of weights, 2 MB more each for the EMA and momentum
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

def saver(run_dir):
    found = latest_checkpoint(run_dir)
    step = 0 if found is None else load_checkpoint(found).step
    while True:
        step += 1
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(step)
                optimizer.state[p]["momentum_buffer"] = torch.full_like(p, -step)
        save_checkpoint(run_dir, step, model=model, ema={"ema": model}, optimizer=optimizer,
                        data_state={"step": step}, keep=2)
        print("saved", step, flush=True)

for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        try:
            saver(sys.argv[1])
        finally:
            os._exit(1)
    print("pid", pid, flush=True)
    os.waitpid(pid, 0)
    print("reaped", flush=True)
"""


def _read_until(stream, word):
    lines = []
    while not lines or not lines[-1].startswith(word):
        line = stream.readline()
        assert line, f"the saver exited early: {lines}"
        lines.append(line)
    return lines


def test_sigkill_during_saves_leaves_a_loadable_checkpoint(tmp_path):
    rng = random.Random(0)
    launcher = subprocess.Popen(
        [sys.executable, "-c", SAVER, str(tmp_path)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    last = 0
    try:
        for _ in range(6):
            launcher.stdin.write("go\n")
            launcher.stdin.flush()
            lines = _read_until(launcher.stdout, "saved")
            pid = next(int(line.split()[1]) for line in lines if line.startswith("pid"))
            time.sleep(rng.uniform(0.05, 0.5))
            os.kill(pid, signal.SIGKILL)
            _read_until(launcher.stdout, "reaped")

            ckpt = load_checkpoint(tmp_path)
            assert ckpt.step > last  # each saver resumed from the last checkpoint and saved more
            last = ckpt.step
            assert ckpt.data_state == {"step": ckpt.step}
            for state in (ckpt.model, ckpt.ema["ema"]):
                assert all(torch.all(t == ckpt.step) for t in state.values())
            buffers = [s["momentum_buffer"] for s in ckpt.optimizer["state"].values()]
            assert len(buffers) == 2 and all(torch.all(b == -ckpt.step) for b in buffers)
            names = [p.name for p in (tmp_path / "checkpoints").iterdir()]
            assert not [n for n in names if n.startswith(".step_")]  # the dead saver's leftovers
            assert len([n for n in names if n.startswith("step_")]) <= 3  # keep=2, + 1 mid-removal
    finally:
        launcher.stdin.close()
        launcher.wait(timeout=30)


def test_metrics_records_round_trip_resume_cut_and_stop_at_a_cut_line(tmp_path):
    records = [{"step": s, "loss": 1.0 / s} for s in (1, 2, 3, 4)]
    write_records(tmp_path, records)
    assert read_records(tmp_path) == records
    assert read_records(tmp_path, 2) == records[:2]  # a resumed run drops what it logs again
    assert read_records(tmp_path / "none") == []
    text = (tmp_path / "metrics.jsonl").read_text()
    (tmp_path / "metrics.jsonl").write_text(text[: text.index('{"step": 3') + 5] + "\n" + text)
    assert read_records(tmp_path) == records[:2]
