"""One training loop for every task: denoising, text and distillation runs are the same Trainer with
a different task, each resumes bit-identically after an interruption (a real SIGINT, mid-way between
checkpoints), writes metrics.jsonl of one shape and ends with model folders that load and sample,
whether started from Python or from the command line."""

import json
import os
import signal

import numpy as np
import pytest
import torch

import difflab
import difflab.training
from difflab import models
from difflab.acceleration import DistillTrainer
from difflab.acceleration.distill import Distillation, distill
from difflab.data import Dataset
from difflab.finetune import FinetuneTask
from difflab.testing import GaussianMixture
from difflab.text import load as load_text
from difflab.text.train import DEFAULTS as TEXT_DEFAULTS
from difflab.text.train import TextTask, TextTrainer
from difflab.training.config import LOOP_DEFAULTS, extend, load_config, merge_defaults
from difflab.training.denoising import Denoising
from difflab.training.loop import DataOrder, Task, Trainer, run
from difflab.training.objectives import Objective
from difflab.utils.folder import read_folder_config, read_folder_weights, save_folder

MIXTURE = GaussianMixture(
    torch.ones(2), torch.tensor([[0.6, 0.3], [-0.6, -0.3]]), torch.tensor([[0.25, 0.1], [0.1, 0.2]])
)
EDM = Objective("edm", prediction="edm", weighting="edm", noise_levels="lognormal")
STEP_KEYS = {"step", "loss", "grad_norm", "lr", "steps_per_s"}


def denoising_config(steps=6):
    return {
        "run": {"steps": steps, "log_every": 1, "checkpoint_every": 4, "threads": 1},
        "data": {"name": "8gaussians", "n": 64},
        "model": {"type": "mlp", "dim": 2, "width": 16, "depth": 2},
        "objective": {"process": "flow", "prediction": "velocity", "noise_levels": "logit_normal"},
        "optim": {"lr": 1e-2, "batch_size": 16},
        "sample": {"sampler": "heun", "schedule": "flow", "steps": 4, "n": 16},
    }


def text_config(tmp_path, steps=6):
    tokens = tmp_path / "tokens.npy"
    if not tokens.exists():
        np.save(tokens, np.random.default_rng(0).integers(0, 5, 400))
    return {
        "run": {"steps": steps, "checkpoint_every": 4, "log_every": 1, "eval_every": 3},
        "data": {"path": str(tokens), "vocab_size": 5},
        "model": {"context": 8, "dim": 16, "depth": 1, "heads": 2, "dropout": 0.1},
        "optim": {"batch_size": 4, "warmup": 2},
    }


def teacher(x, sigma, **cond):
    return MIXTURE(x, sigma)


def distill_trainer(run_dir, steps=12, export=None):
    """Progressive distillation 4 -> 1 steps: two phases of 6 steps, checkpoints every 4."""
    torch.manual_seed(0)
    student = models.build({"type": "mlp", "dim": 2, "width": 16, "depth": 1})
    data = Dataset(MIXTURE.sample(256, torch.Generator().manual_seed(0)).float(), name="mixture")
    config = {
        "run": {"steps": steps, "checkpoint_every": 4, "log_every": 1},
        "method": {"name": "progressive", "start_steps": 4, "export": [2, 1]},
        "teacher": {"solver": "euler", "model": "mixture"},
        "optim": {"lr": 1e-3, "batch_size": 32, "schedule": "cosine", "warmup": 2},
    }
    return DistillTrainer(config, teacher, student, EDM, data, 0.002, 80.0, run_dir, export, False)


def sigint_after(trainer, step):
    """SIGINT this process (what Ctrl-C does) when ``trainer`` has finished optimizer step ``step``."""
    periodic = trainer._periodic

    def stopping(stats, start, start_step):
        periodic(stats, start, start_step)
        if trainer.step == step:
            os.kill(os.getpid(), signal.SIGINT)

    trainer._periodic = stopping
    return trainer


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def step_records(run_dir):
    return [r for r in records(run_dir) if "loss" in r and "event" not in r]


def assert_same_state(a, b):
    """The same network, EMA, optimizer state and step records (losses bit for bit)."""
    assert a.step == b.step and a.ema.updates == b.ema.updates
    for x, y in [(a.net, b.net), (a.ema.model, b.ema.model)]:
        for (name, p), q in zip(x.state_dict().items(), y.state_dict().values()):
            assert torch.equal(p, q), name
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    for i in sa["state"]:
        for k, v in sa["state"][i].items():
            assert torch.equal(v, sb["state"][i][k]), (i, k)
    drop = ("steps_per_s",)
    ra = [{k: v for k, v in r.items() if k not in drop} for r in step_records(a.run_dir)]
    rb = [{k: v for k, v in r.items() if k not in drop} for r in step_records(b.run_dir)]
    assert ra == rb and [r["step"] for r in ra] == list(range(1, a.step + 1))


# ---------------------------------------------------------------- one loop


def test_every_task_is_the_one_loop(tmp_path):
    """Denoising, text and distillation trainers are the one Trainer with a task; none has its own
    loop, step, checkpointing or logging."""
    runs = [
        Trainer(merge_defaults(denoising_config()), tmp_path / "d", progress=False),
        TextTrainer(load_config(text_config(tmp_path), (), TEXT_DEFAULTS, ()), tmp_path / "t"),
        distill_trainer(tmp_path / "p"),
    ]
    for trainer, task in zip(runs, (Denoising, TextTask, Distillation)):
        assert isinstance(trainer, Trainer) and isinstance(trainer.task, task)
        assert isinstance(trainer.task, Task) and trainer.task.trainer is trainer
        for method in ("fit", "_loop", "_periodic", "train_step", "save", "resume", "_rollback"):
            assert getattr(type(trainer), method) is getattr(Trainer, method), method
    assert difflab.training.train is difflab.training.loop.train


def test_python_train_writes_a_model_that_load_samples(tmp_path):
    """difflab.training.train(dict) from Python ends with model/, a version-2 diffusion model folder
    that difflab.load opens and samples with the config's sampling defaults."""
    trainer = difflab.training.train(denoising_config(), run_dir=tmp_path, progress=False)
    assert trainer.finished and trainer.exported == [tmp_path / "model"]
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    assert saved["type"] == "diffusion" and saved["version"] == 2
    assert saved["training"]["steps"] == 6
    assert saved["training"]["command"] == "difflab train --config '<dict>'"
    model = difflab.load(tmp_path / "model")
    for a, b in zip(model.network.state_dict().values(), trainer.ema.model.state_dict().values()):
        assert torch.equal(a, b)
    x = model.sample(8, seed=0)
    assert x.shape == (8, 2) and bool(x.isfinite().all())
    assert torch.equal(x, difflab.load(tmp_path).sample(8, seed=0))  # the run folder loads too


# ---------------------------------------------------------------- resume after SIGINT


def test_denoising_resumes_bit_identically_after_sigint(tmp_path):
    config = merge_defaults(denoising_config())
    straight = Trainer(config, tmp_path / "a", progress=False)
    assert straight.fit()
    first = sigint_after(Trainer(config, tmp_path / "b", progress=False), 3)
    assert not first.fit() and first.step == 3 and not (tmp_path / "b" / "model").exists()
    torch.manual_seed(1234)  # the global RNG (dropout) carries nothing across the restart
    second = Trainer(config, tmp_path / "b", progress=False)
    assert second.resume() and second.step == 3 and second.fit()
    assert_same_state(straight, second)


def test_text_resumes_bit_identically_after_sigint(tmp_path):
    config = load_config(text_config(tmp_path), (), TEXT_DEFAULTS, ())
    straight = TextTrainer(config, tmp_path / "a", progress=False)
    assert straight.fit()
    first = sigint_after(TextTrainer(config, tmp_path / "b", progress=False), 5)
    assert not first.fit() and first.step == 5
    torch.manual_seed(1234)
    second = TextTrainer(config, tmp_path / "b", progress=False)
    assert second.resume() and second.step == 5 and second.fit()
    assert_same_state(straight, second)
    evals = [r for r in records(tmp_path / "b") if "val_bits_per_token" in r]
    assert [r["step"] for r in evals] == [3, 6]
    model = load_text(tmp_path / "b")  # the text model folder, as difflab.text.load opens it
    assert model.kind == "masked" and model.generate(2, 8, steps=4).tokens.shape == (2, 8)


def test_distillation_resumes_bit_identically_after_sigint_across_a_phase(tmp_path):
    """Progressive distillation interrupted in its second phase (step 7, between the checkpoints
    of steps 4 and 8): the resumed run restores the phase, its teacher and the phase's learning
    rates, and ends where the uninterrupted one does, with the same students written."""
    straight = distill_trainer(tmp_path / "a")
    straight.fit()
    first = sigint_after(distill_trainer(tmp_path / "b"), 7)
    assert not first.fit() and first.step == 7 and first.phase == 1
    assert first.exported == [tmp_path / "b" / "model_2step"]
    torch.manual_seed(1234)
    second = distill_trainer(tmp_path / "b")
    assert second.resume() and second.step == 7 and second.phase == 1
    assert second.fit() and second.phase == straight.phase == 2
    assert_same_state(straight, second)
    for name in ("model_2step", "model_1step"):
        a, b = difflab.load(tmp_path / "a" / name), difflab.load(tmp_path / "b" / name)
        assert a.config["sample"] == b.config["sample"]
        for p, q in zip(a.network.state_dict().values(), b.network.state_dict().values()):
            assert torch.equal(p, q), name
    one = difflab.load(tmp_path / "b" / "model_1step")
    assert one.config["distillation"] == {
        "method": "progressive",
        "teacher": "mixture",
        "guidance": 1.0,
        "steps": 1,
    }
    assert one.generate(4, seed=0).nfe == 1


def finetune_trainer(run_dir, method):
    """Fine-tuning the shipped 8gaussians model: 6 steps, checkpoints every 4; on-policy methods
    sample rounds of 2 minibatches x 2 inner epochs, so step 5 is inside the second round."""
    options = {"dpo": {"pairs": 32}, "draft": {"k": 2, "beta": 0.5}}.get(
        method, {"inner_epochs": 2}
    )
    config = {
        "run": {"steps": 6, "checkpoint_every": 4, "log_every": 1, "threads": 1},
        "base": {"model": "8gaussians"},
        "reward": {"name": "linear:1,0"},
        "method": {"name": method, **options},
        "sample": {"steps": 4, "batch": 16},
        "optim": {"lr": 1e-3, "batch_size": 8},
    }
    full = load_config(config, (), FinetuneTask.defaults, FinetuneTask.free)
    return Trainer(full, run_dir, progress=False, task=FinetuneTask(difflab.load))


@pytest.mark.parametrize("method", ["ddpo", "dpok", "draft", "dpo", "d3po"])
def test_finetuning_resumes_bit_identically_after_sigint(tmp_path, method):
    """Interrupted at step 5 (between the checkpoints of steps 4 and 6, inside an on-policy round),
    the resumed run restores the round, its minibatch order and the per-label reward statistics
    (or DPO's pairs and their order) and ends where the uninterrupted run does."""
    straight = finetune_trainer(tmp_path / "a", method)
    assert straight.fit()
    first = sigint_after(finetune_trainer(tmp_path / "b", method), 5)
    assert not first.fit() and first.step == 5
    torch.manual_seed(1234)
    second = finetune_trainer(tmp_path / "b", method)
    assert second.resume() and second.step == 5 and second.fit()
    assert_same_state(straight, second)
    for a, b in zip(
        difflab.load(tmp_path / "a").network.state_dict().values(),
        difflab.load(tmp_path / "b").network.state_dict().values(),
    ):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- one metrics shape


def test_metrics_have_one_shape_for_every_task(tmp_path):
    """Every step is logged once with step, loss, grad_norm, lr and steps_per_s (plus the task's
    fields); checkpoints as {step, checkpoint}; nothing else but the tasks' evaluations."""
    difflab.training.train(denoising_config(), run_dir=tmp_path / "d", progress=False)
    difflab.text.train.train(text_config(tmp_path), run_dir=tmp_path / "t", progress=False)
    distill_trainer(tmp_path / "p").fit()
    extra = {"d": {"epoch"}, "t": {"bits_per_token"}, "p": {"phase", "epoch"}}
    evaluations = {"d": set(), "t": {"val_bits_per_token"}, "p": set()}
    for name in ("d", "t", "p"):
        rs = records(tmp_path / name)
        steps = [r for r in rs if "loss" in r]
        assert [r["step"] for r in steps] == list(range(1, len(steps) + 1))
        assert {frozenset(r) for r in steps} == {frozenset(STEP_KEYS | extra[name])}, name
        assert all(isinstance(r[k], float) for r in steps for k in STEP_KEYS - {"step"})
        checkpoints = [r for r in rs if "checkpoint" in r]
        assert checkpoints and all(set(r) == {"step", "checkpoint"} for r in checkpoints)
        others = {k for r in rs if "loss" not in r and "checkpoint" not in r for k in r} - {"step"}
        assert others == evaluations[name], name


# ---------------------------------------------------------------- a new kind of training


class Regression(Task):
    """A new kind of training as a task and nothing else: noisy least squares of a linear map."""

    name = "regression"
    defaults = extend(
        LOOP_DEFAULTS,
        {
            "run": {"steps": 8, "log_every": 1, "checkpoint_every": 4, "threads": 1},
            "optim": {"lr": 1e-2, "batch_size": 8, "accumulate": 2},
        },
    )

    def build(self):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(64, 3, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5])
        self.order = DataOrder(64, self.trainer.config["run"]["seed"])
        return torch.nn.Sequential(
            torch.nn.Linear(3, 8), torch.nn.Dropout(0.2), torch.nn.Linear(8, 1)
        )

    def batch(self, size, generator):
        idx = self.order.next(size)
        return self.x[idx], self.y[idx] + 0.1 * torch.randn(size, generator=generator)

    def losses(self, network, batch, rows):
        x, y = batch
        return (network(x[rows]).squeeze(1) - y[rows]).square()

    def state_dict(self):
        return {"order": self.order.state_dict()}

    def load_state_dict(self, state, checkpoint):
        self.order.load_state_dict(state["order"])

    def export(self):
        t = self.trainer
        config = {"type": "regression", "training": {"steps": t.step, "command": t.command}}
        return [save_folder(t.run_dir / "model", config, t.ema.model.state_dict())]


def test_a_new_kind_of_training_plugs_in_as_a_task(tmp_path):
    """The loop gives a task it has never seen accumulation, dropout seeds, checkpoints, exact
    resume after SIGINT, metrics and its export."""
    straight = run(Regression(), {}, run_dir=tmp_path / "a", progress=False)
    assert straight.finished and straight.exported == [tmp_path / "a" / "model"]
    config = load_config({}, (), Regression.defaults)
    first = sigint_after(Trainer(config, tmp_path / "b", progress=False, task=Regression()), 5)
    assert not first.fit()
    second = Trainer(config, tmp_path / "b", progress=False, task=Regression())
    assert second.resume() and second.step == 5 and second.fit()
    assert_same_state(straight, second)
    saved = read_folder_config(tmp_path / "b" / "model", "regression")
    assert saved["training"]["command"] == "test_training_tasks.Regression --config '<dict>'"
    for key, value in read_folder_weights(tmp_path / "b" / "model").items():
        assert torch.equal(value, straight.ema.model.state_dict()[key])
    assert {frozenset(r) for r in step_records(tmp_path / "a")} == {frozenset(STEP_KEYS)}


# ---------------------------------------------------------------- entry points


def test_distill_entry_point_from_python(tmp_path):
    """acceleration.distill.distill with difflab.load (what `difflab distill` runs): the teacher
    model named in the config, its student written as model/, which difflab.load samples."""
    config = {
        "run": {"steps": 4, "threads": 1},
        "teacher": {"model": "moons", "steps": 4},
        "method": {"name": "reflow", "pairs": 64, "pair_batch": 64},
        "optim": {"batch_size": 32},
        "sample": {"steps": 1},
    }
    trainer = distill(difflab.load, config, ["run.seed=1"], tmp_path, progress=False)
    assert isinstance(trainer, Trainer) and trainer.exported == [tmp_path / "model"]
    model = difflab.load(tmp_path / "model")
    assert model.config["distillation"]["teacher"] == "moons"
    assert model.config["training"]["config"]["run"]["seed"] == 1
    assert model.generate(4, seed=0).nfe == 1


def test_task_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="needs training data"):
        DistillTrainer(
            {"method": {"name": "progressive"}},
            teacher,
            models.build({"type": "mlp", "dim": 2}),
            EDM,
            None,
            0.002,
            80.0,
            tmp_path,
        )
    with pytest.raises(AttributeError, match="Denoising task have no attribute 'nonsense'"):
        _ = Trainer(merge_defaults(denoising_config()), tmp_path / "d", progress=False).nonsense
