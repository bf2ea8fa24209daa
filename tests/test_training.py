"""The training loop's acceptance tests: exact resume, SIGINT, NaN guard and rollback, gradient
accumulation, toys trained to a sliced-W2 bound, configs, the EMAs and the learning-rate schedules."""

import copy
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from difflab.cli import main
from difflab.data import toys
from difflab.testing.metrics import sliced_w2
from difflab.training.checkpoint import latest_checkpoint, load_checkpoint
from difflab.training.config import DEFAULTS, apply_overrides, load_config, merge_defaults
from difflab.training.ema import EMA, power_gamma, power_sigma_rel
from difflab.training.loop import DataOrder, Trainer, train
from difflab.training.lr import LRSchedule
from difflab.training.preview import preview_samples

ROOT = Path(__file__).resolve().parents[1]


def mlp_config(**sections: dict) -> dict:
    """Flow matching with a small MLP on 8gaussians (64 samples: an epoch is 4 steps of 16)."""
    config = {
        "run": {"steps": 6, "log_every": 1, "checkpoint_every": 1000, "threads": 1},
        "data": {"name": "8gaussians", "n": 64},
        "model": {"type": "mlp", "dim": 2, "width": 16, "depth": 2},
        "objective": {"process": "flow", "prediction": "velocity", "noise_levels": "logit_normal"},
        "optim": {"lr": 1e-2, "batch_size": 16, "schedule": "constant"},
        "sample": {"sampler": "heun", "schedule": "flow", "steps": 8, "n": 16},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    return config


def unet_config(**sections: dict) -> dict:
    """A class-conditional UNet on the 8x8 digits with dropout, label dropout, gradient
    accumulation, warm-up and a cosine learning rate: every piece of the state matters."""
    config = {
        "run": {"steps": 20, "log_every": 1, "checkpoint_every": 10, "threads": 1},
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
            "dropout": 0.2,
            "num_classes": 10,
            "time_embedding": "fourier",
        },
        "objective": {
            "process": "vp_cosine",
            "prediction": "v",
            "weighting": "min_snr",
            "label_dropout": 0.3,
        },
        "optim": {"lr": 2e-3, "batch_size": 8, "accumulate": 2, "schedule": "cosine", "warmup": 5},
        "ema": {"kind": "power", "sigma_rel": 0.1},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    return config


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def step_losses(run_dir: Path) -> dict[int, float]:
    """The step records' losses; fails on a step logged twice."""
    steps = [r["step"] for r in records(run_dir) if "loss" in r and "event" not in r]
    assert len(steps) == len(set(steps)), f"duplicated steps in metrics.jsonl: {steps}"
    return {r["step"]: r["loss"] for r in records(run_dir) if "loss" in r and "event" not in r}


def assert_states_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def assert_optimizers_equal(a: dict, b: dict) -> None:
    assert a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        assert_states_equal(a["state"][i], b["state"][i])
    assert [g["lr"] for g in a["param_groups"]] == [g["lr"] for g in b["param_groups"]]


def assert_trainers_equal(a: Trainer, b: Trainer) -> None:
    assert a.step == b.step
    assert_states_equal(a.net.state_dict(), b.net.state_dict())
    assert_states_equal(a.ema.model.state_dict(), b.ema.model.state_dict())
    assert a.ema.updates == b.ema.updates
    assert_optimizers_equal(a.optimizer.state_dict(), b.optimizer.state_dict())


class StopAt(Trainer):
    """A trainer that raises its interrupt flag (what SIGINT does) after step ``stop_at``."""

    stop_at = 10

    def _periodic(self, stats: dict, start: float, start_step: int) -> None:
        super()._periodic(stats, start, start_step)
        if self.step == self.stop_at:
            self.interrupt.requested = True


# ---------------------------------------------------------------- resume


def test_resume_is_bit_identical(tmp_path):
    config = merge_defaults(unet_config())
    straight = Trainer(config, tmp_path / "straight", progress=False)
    assert straight.fit()

    first = StopAt(config, tmp_path / "resumed", progress=False)
    assert not first.fit()
    assert latest_checkpoint(tmp_path / "resumed").name == "step_000010"
    torch.manual_seed(1234)  # the global RNG (dropout) must not carry state across the restart
    second = Trainer(copy.deepcopy(config), tmp_path / "resumed", progress=False)
    assert second.resume() and second.step == 10
    assert second.fit()

    assert_trainers_equal(straight, second)
    assert second.ema.updates == 20
    resumed = step_losses(tmp_path / "resumed")
    assert sorted(resumed) == list(range(1, 21))
    assert resumed == step_losses(tmp_path / "straight")
    # both halves did train: warm-up and cosine set different learning rates at steps 1 and 20
    lrs = {r["step"]: r["lr"] for r in records(tmp_path / "resumed") if "lr" in r}
    assert lrs[1] == pytest.approx(2e-3 / 5) and lrs[20] == pytest.approx(0.0, abs=1e-12)


def test_resumed_run_does_not_depend_on_the_number_of_restarts(tmp_path):
    """Interrupting at a step that is not a checkpoint step saves there, and resumes from there."""
    config = merge_defaults(mlp_config(run={"steps": 9}))
    straight = Trainer(config, tmp_path / "a", progress=False)
    straight.fit()
    for stop in (3, 7):
        t = StopAt(config, tmp_path / "b", progress=False)
        t.stop_at = stop
        t.resume()
        assert not t.fit() and t.step == stop
    last = Trainer(config, tmp_path / "b", progress=False)
    assert last.resume() and last.step == 7
    assert last.fit()
    assert_trainers_equal(straight, last)
    assert step_losses(tmp_path / "b") == step_losses(tmp_path / "a")


# ---------------------------------------------------------------- SIGINT


def write_json(path: Path, config: dict) -> Path:
    path.write_text(json.dumps(config))
    return path


def difflab_train(config: Path, run_dir: Path, *overrides: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "difflab", "train", "--config", str(config)]
    return subprocess.Popen(
        [*command, "--run-dir", str(run_dir), *overrides],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigint_saves_a_checkpoint_and_a_rerun_continues_exactly(tmp_path, capsys):
    """`difflab train` in a subprocess, SIGINT after a few steps; the rerun (the same command line,
    in this process) continues to the weights of an uninterrupted run, bit for bit."""
    config = write_json(
        tmp_path / "toy.json", mlp_config(run={"steps": 100_000, "checkpoint_every": 100_000})
    )
    run_dir = tmp_path / "run"
    proc = difflab_train(config, run_dir)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "metrics.jsonl").exists() or len(records(run_dir)) < 3:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "difflab train did not start logging in 120 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    stopped = load_checkpoint(run_dir).step
    assert 3 <= stopped < 100_000
    assert f"interrupted: saved step {stopped}" in out
    assert not (run_dir / "model").exists()  # the model folder is written only when finished

    rerun = [
        "train",
        "--config",
        str(config),
        "--run-dir",
        str(run_dir),
        f"run.steps={stopped + 3}",
    ]
    assert main(rerun) == 0
    assert f"wrote {run_dir / 'model'}" in capsys.readouterr().out
    assert (run_dir / "model" / "model.safetensors").is_file()
    final = load_checkpoint(run_dir)
    assert final.step == stopped + 3
    assert sorted(step_losses(run_dir)) == list(range(1, stopped + 4))

    # the same run in this process, without the interruption: bit-identical weights
    straight = train(
        mlp_config(run={"steps": stopped + 3, "checkpoint_every": 100_000}),
        run_dir=tmp_path / "straight",
        progress=False,
    )
    assert_states_equal(final.model, straight.net.state_dict())
    assert_states_equal(final.ema["ema"]["model"], straight.ema.model.state_dict())
    assert step_losses(run_dir) == step_losses(tmp_path / "straight")


def test_sigkill_during_a_save_leaves_a_checkpoint_the_rerun_resumes_exactly(tmp_path, capsys):
    """`difflab train` in a subprocess, checkpointing every step, killed with SIGKILL while a save's
    temporary folder exists (retried until a kill lands inside a save); every kill leaves a loadable
    checkpoint, and the final rerun continues to the weights of an uninterrupted run, bit for bit."""
    wide = {"width": 256, "depth": 4}  # a few MB per checkpoint: saving dominates each step
    run = {"steps": 100_000, "checkpoint_every": 1, "keep": 2}
    config = write_json(tmp_path / "toy.json", mlp_config(run=run, model=wide))
    run_dir, checkpoints = tmp_path / "run", tmp_path / "run" / "checkpoints"
    killed_in_save, stopped = 0, 0
    for _ in range(5):
        proc = difflab_train(config, run_dir)
        try:
            deadline = time.monotonic() + 120
            while True:  # the next save that starts after this launch's first completed one
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "difflab train did not save in 120 s"
                saving = (
                    [p for p in os.listdir(checkpoints) if p.startswith(".step_")]
                    if (checkpoints.is_dir())
                    else []
                )
                if (
                    saving
                    and latest_checkpoint(run_dir)
                    and load_checkpoint(run_dir).step > stopped
                ):
                    break
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=60)
        finally:
            proc.kill()
        left = [p for p in os.listdir(checkpoints) if p.startswith(".step_")]
        killed_in_save += bool(left)
        resumed = load_checkpoint(run_dir)  # whatever the instant, the latest checkpoint loads
        assert resumed.step > stopped
        stopped = resumed.step
        if killed_in_save:
            break
    assert killed_in_save, "no SIGKILL landed inside a save in 5 tries"

    rerun = [
        "train",
        "--config",
        str(config),
        "--run-dir",
        str(run_dir),
        f"run.steps={stopped + 3}",
    ]
    assert main(rerun) == 0
    assert f"wrote {run_dir / 'model'}" in capsys.readouterr().out
    assert not [p for p in os.listdir(checkpoints) if p.startswith(".step_")]
    final = load_checkpoint(run_dir)
    assert final.step == stopped + 3
    assert sorted(step_losses(run_dir)) == list(range(1, stopped + 4))  # no step logged twice
    straight = train(
        mlp_config(run={**run, "steps": stopped + 3}, model=wide),
        run_dir=tmp_path / "straight",
        progress=False,
    )
    assert_states_equal(final.model, straight.net.state_dict())
    assert_states_equal(final.ema["ema"]["model"], straight.ema.model.state_dict())


# ---------------------------------------------------------------- NaN guard


def nan_on_attempts(trainer: Trainer, bad: dict[int, int]) -> None:
    """Make the network output NaN on the first ``bad[s]`` attempts at optimizer step s (1-based)."""
    attempts: dict[int, int] = {}

    def hook(module, args, output):
        step = trainer.step + 1
        attempts[step] = attempts.get(step, 0) + 1
        return output * math.nan if attempts[step] <= bad.get(step, 0) else output

    trainer.net.register_forward_hook(hook)


def all_finite(state: dict) -> bool:
    return all(bool(v.isfinite().all()) for v in state.values() if v.is_floating_point())


def test_a_nan_step_is_skipped_and_repeated_ones_roll_back_to_the_checkpoint(tmp_path):
    config = merge_defaults(
        mlp_config(run={"steps": 14, "checkpoint_every": 5, "max_bad_steps": 3, "keep": 5})
    )
    trainer = Trainer(config, tmp_path, progress=False)
    nan_on_attempts(trainer, {8: 1, 13: 3})
    checked = []
    rollback = trainer._rollback

    def checked_rollback() -> None:
        rollback()
        ckpt = load_checkpoint(tmp_path)
        assert ckpt.step == trainer.step == 10 and trainer.bad_steps == 0
        assert_states_equal(trainer.net.state_dict(), ckpt.model)
        assert_states_equal(trainer.ema.model.state_dict(), ckpt.ema["ema"]["model"])
        assert trainer.ema.updates == ckpt.ema["ema"]["updates"] == 10
        assert_optimizers_equal(trainer.optimizer.state_dict(), ckpt.optimizer)
        checked.append(True)

    trainer._rollback = checked_rollback
    assert trainer.fit() and trainer.step == 14 and checked
    assert all_finite(trainer.ema.model.state_dict()) and all_finite(trainer.net.state_dict())
    assert trainer.ema.updates == 14

    events = [(r["step"], r["event"]) for r in records(tmp_path) if "event" in r]
    skipped = "skipped non-finite step"
    assert events == [(8, skipped)] + [(13, skipped)] * 3 + [
        (13, "rolled back to the checkpoint of step 10")
    ]
    assert sorted(step_losses(tmp_path)) == list(range(1, 15))  # abandoned steps 11-12 dropped


def test_a_nan_sample_in_the_data_skips_its_step(tmp_path):
    """64 samples in batches of 16: the third batch holds the NaN sample, the fourth replaces it."""
    trainer = Trainer(merge_defaults(mlp_config(run={"steps": 3})), tmp_path, progress=False)
    trainer.data.x[DataOrder(64, trainer.config["run"]["seed"]).next(48)[-5]] = math.nan
    assert trainer.fit()
    events = [r for r in records(tmp_path) if "event" in r]
    assert [r["step"] for r in events] == [3] and math.isnan(events[0]["loss"])
    assert sorted(step_losses(tmp_path)) == [1, 2, 3]
    assert trainer.ema.updates == 3 and all_finite(trainer.ema.model.state_dict())
    assert all_finite(trainer.net.state_dict())


def test_repeated_failure_without_a_checkpoint_or_after_a_rollback_is_an_error(tmp_path):
    config = merge_defaults(mlp_config(run={"steps": 6, "checkpoint_every": 2, "max_bad_steps": 2}))
    t = Trainer(config, tmp_path / "none", progress=False)
    nan_on_attempts(t, {1: 2})
    with pytest.raises(ValueError, match="no checkpoint to roll back to"):
        t.fit()
    t = Trainer(config, tmp_path / "again", progress=False)
    nan_on_attempts(t, {3: 4})
    with pytest.raises(ValueError, match=r"failed again .* checkpoint of step 2"):
        t.fit()


# ---------------------------------------------------------------- batches and precision


def test_accumulating_two_half_batches_equals_one_full_batch(tmp_path):
    whole = train(mlp_config(run={"steps": 5}), run_dir=tmp_path / "a", progress=False)
    halves = train(
        mlp_config(run={"steps": 5}, optim={"accumulate": 2}),
        run_dir=tmp_path / "b",
        progress=False,
    )
    for a, b in [(whole.net, halves.net), (whole.ema.model, halves.ema.model)]:
        for (name, p), q in zip(a.named_parameters(), b.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    initial = Trainer(whole.config, tmp_path / "c", progress=False)
    assert not torch.equal(whole.net.out.weight, initial.net.out.weight)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_trains_in_float32_weights(tmp_path, precision):
    config = unet_config(run={"steps": 3}, precision={"autocast": precision})
    trainer = Trainer(merge_defaults(config), tmp_path, progress=False)
    if precision == "fp16":  # a loss scale far too large: overflows until it has come down
        trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**30)
    nan_on_attempts(trainer, {2: 1})
    assert trainer.fit() and trainer.ema.updates == 3
    events = [(r["step"], r["event"]) for r in records(tmp_path) if "event" in r]
    assert [e for e in events if "overflow" not in e[1]] == [(2, "skipped non-finite step")]
    assert any("overflow" in e for _, e in events) == (precision == "fp16")
    assert all(p.dtype == torch.float32 for p in trainer.net.parameters())
    assert all_finite(trainer.net.state_dict()) and all_finite(trainer.ema.model.state_dict())
    losses = step_losses(tmp_path)
    assert sorted(losses) == [1, 2, 3] and all(math.isfinite(v) for v in losses.values())
    has_scaler = "scaler" in load_checkpoint(tmp_path).data_state
    assert has_scaler == (precision == "fp16")  # fp16 loss scaling (and its state) only


def test_labels_follow_the_network(tmp_path):
    """An unconditional network on labelled data trains unconditionally; a conditional one on
    unlabelled data is an error."""
    unconditional = unet_config(run={"steps": 1}, model={"num_classes": 0})
    trainer = train(unconditional, run_dir=tmp_path / "u", progress=False)
    assert trainer.finished and trainer.data.labels is None and trainer.data.num_classes == 0
    conditional = mlp_config(model={"num_classes": 3})
    with pytest.raises(ValueError, match="has no labels"):
        Trainer(merge_defaults(conditional), tmp_path / "c", progress=False)


def test_flow_preview_starts_from_the_noise(tmp_path):
    """A flow's grid starts at sigma = inf: the sampler starts from the noise itself."""
    trainer = train(
        mlp_config(run={"steps": 2, "sample_every": 2}), run_dir=tmp_path, progress=False
    )
    assert (tmp_path / "samples" / "step_0000002.png").stat().st_size > 0
    x, labels = preview_samples(
        trainer.denoiser(), (2,), 16, trainer.config["sample"], trainer.objective.process
    )
    assert labels is None and x.shape == (16, 2) and bool(x.isfinite().all())


# ---------------------------------------------------------------- toys train


def exact_w2(samples: torch.Tensor) -> float:
    exact = toys.mixture("8gaussians").sample(2000, torch.Generator().manual_seed(5)).float()
    return sliced_w2(samples, exact, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    ("objective", "sample", "bound"),
    [
        (
            {"process": "flow", "prediction": "velocity", "noise_levels": "logit_normal"},
            {"sampler": "heun", "schedule": "flow", "steps": 16},
            0.12,  # measured 0.085 (300 steps)
        ),
        (
            {"process": "vp_cosine", "prediction": "v"},
            {"sampler": "dpmpp_2m", "schedule": "karras", "steps": 20},
            0.15,  # measured 0.113 (300 steps)
        ),
    ],
    ids=["flow_velocity", "vp_cosine_v"],
)
def test_toy_trains_to_a_sliced_w2_bound(tmp_path, objective, sample, bound):
    """8gaussians (exact mixture) after 300 steps of a 64-wide MLP: sliced W2 to exact samples
    below ``bound``; an untrained network is at about 0.29 and two exact sample sets at 0.044."""
    config = {
        "run": {"steps": 300, "log_every": 100, "checkpoint_every": 1000, "threads": 1},
        "data": {"name": "8gaussians", "n": 4096},
        "model": {"type": "mlp", "dim": 2, "width": 64, "depth": 2},
        "objective": objective,
        "optim": {"lr": 3e-3, "batch_size": 256, "schedule": "cosine", "warmup": 20},
        "ema": {"kind": "power", "sigma_rel": 0.1},
        "sample": {**sample, "n": 2000},
    }
    trainer = train(config, run_dir=tmp_path, progress=False)
    x, _ = preview_samples(
        trainer.denoiser(), (2,), 2000, trainer.config["sample"], trainer.objective.process
    )
    untrained = Trainer(trainer.config, tmp_path / "untrained", progress=False)
    x0, _ = preview_samples(
        untrained.denoiser(), (2,), 2000, trainer.config["sample"], trainer.objective.process
    )
    assert exact_w2(x) < bound
    assert exact_w2(x0) > 0.25


# ---------------------------------------------------------------- configs


def test_unknown_section_or_key_names_the_nearest():
    with pytest.raises(ValueError, match=r"config section 'optimm'.*'optim'"):
        merge_defaults({"optimm": {"lr": 1e-3}})
    with pytest.raises(ValueError, match=r"key in \[optim\] 'batch_sise'.*'batch_size'"):
        merge_defaults({"optim": {"batch_sise": 32}})
    with pytest.raises(ValueError, match="'batch_size'"):
        load_config(None, ["optim.batchsize=3"])
    with pytest.raises(ValueError, match=r"section\.key=value"):
        apply_overrides({}, ["steps=3"])


def test_overrides_parse_toml_values(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[run]\nsteps = 7\n[model]\ntype = "mlp"\n')
    config = load_config(
        path,
        [
            "run.steps=12",
            "optim.lr=1e-3",
            "model.channel_mult=[1, 2]",
            "precision.channels_last=true",
            "run.name=toy",
            'data.name="8gaussians"',
            "model.extra.depth=3",
        ],
    )
    assert config["run"]["steps"] == 12 and isinstance(config["run"]["steps"], int)
    assert config["optim"]["lr"] == 1e-3 and isinstance(config["optim"]["lr"], float)
    assert config["model"] == {"type": "mlp", "channel_mult": [1, 2], "extra": {"depth": 3}}
    assert config["precision"]["channels_last"] is True
    assert config["run"]["name"] == "toy" and config["data"]["name"] == "8gaussians"
    assert config["optim"]["batch_size"] == DEFAULTS["optim"]["batch_size"]


# ---------------------------------------------------------------- EMA


@pytest.mark.parametrize("kind", ["power", "constant"])
def test_ema_is_the_weighted_average_of_the_iterates(kind):
    """theta_ema(n) = sum_t w_t theta_t with w_t = (1 - beta_t) prod_{s > t} beta_s."""
    net = torch.nn.Linear(3, 2)
    ema = EMA(net, kind=kind, sigma_rel=0.15, decay=0.7)
    n = 30
    theta0 = torch.nn.utils.parameters_to_vector(net.parameters()).double()  # t = 0: the start
    thetas = torch.randn(n, len(theta0)).double()
    for theta in thetas:
        torch.nn.utils.vector_to_parameters(theta.float(), net.parameters())
        ema.update(net)
    betas = torch.tensor([ema.beta(t) for t in range(1, n + 1)], dtype=torch.float64)
    keep = torch.cat([betas.flip(0).cumprod(0).flip(0), torch.ones(1, dtype=torch.float64)])
    w = (1 - betas) * keep[1:]  # w_t, t = 1..n; the start keeps w_0 = keep[0]
    assert float(w.sum() + keep[0]) == pytest.approx(1.0, abs=1e-12)
    average = torch.nn.utils.parameters_to_vector(ema.model.parameters()).double()
    torch.testing.assert_close(average, w @ thetas + keep[0] * theta0, rtol=1e-5, atol=1e-6)
    if kind == "power":  # EDM2 eq. (2): w_t = (t^(g+1) - (t-1)^(g+1)) / n^(g+1), about t^g
        assert float(keep[0]) == 0.0
        t, g1 = torch.arange(1, n + 1, dtype=torch.float64), ema.gamma + 1
        torch.testing.assert_close(w, (t**g1 - (t - 1) ** g1) / n**g1)
    else:  # the warm-up (1 + t) / (10 + t) gives way to the decay after t = 20
        assert ema.beta(19) < 0.7 and ema.beta(21) == 0.7


def test_power_gamma_and_sigma_rel_are_inverse():
    for gamma in (0.5, 3.0, 6.94, 16.97, 50.0):
        assert power_gamma(power_sigma_rel(gamma)) == pytest.approx(gamma, rel=1e-9)
    assert power_sigma_rel(power_gamma(0.05)) == pytest.approx(0.05, rel=1e-12)
    assert power_gamma(0.05) == pytest.approx(16.97, abs=0.01)  # EDM2's sigma_rel 0.05
    with pytest.raises(ValueError, match="sigma_rel"):
        power_gamma(0.5)


# ---------------------------------------------------------------- learning rates


def test_learning_rate_schedules():
    constant = LRSchedule("constant", warmup=4, total=20)
    assert [constant(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cosine = LRSchedule("cosine", warmup=4, total=20, min_factor=0.1)
    assert cosine(1) == 0.5 and cosine(3) == 1.0
    mid = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 8 / 16))
    assert cosine(11) == pytest.approx(mid) and cosine(19) == pytest.approx(0.1)
    assert cosine(40) == pytest.approx(0.1)
    inverse = LRSchedule("inverse_sqrt", total=100, ref=10)
    assert inverse(4) == 1.0 and inverse(39) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="'cosine'"):
        LRSchedule("cosin")


# ---------------------------------------------------------------- TensorBoard


def test_tensorboard_gets_every_logged_number(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = train(mlp_config(run={"tensorboard": True}), run_dir=tmp_path / "on", progress=False)
    events = EventAccumulator(str(tmp_path / "on" / "tensorboard"))
    events.Reload()
    losses = {e.step: e.value for e in events.Scalars("loss")}
    assert losses == pytest.approx(step_losses(trainer.run_dir), rel=1e-6)
    assert sorted(losses) == list(range(1, 7))
    assert "steps_per_s" in events.Tags()["scalars"]

    train(mlp_config(run={"tensorboard": False}), run_dir=tmp_path / "off", progress=False)
    assert not (tmp_path / "off" / "tensorboard").exists()
    with pytest.raises(ValueError, match=r'run\.tensorboard must be "auto", true or false'):
        train(mlp_config(run={"tensorboard": "yes"}), run_dir=tmp_path / "bad", progress=False)
