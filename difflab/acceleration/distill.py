"""Distillation runs: ``difflab distill --config configs/distill_*.toml [key=value ...]``.

One loop for four recipes, each turning a many-step teacher denoiser into a few-step student of the
same parameterization (the teacher's objective wraps both):

    progressive               :mod:`difflab.acceleration.progressive` (Salimans & Ho 2022)
    consistency_distillation  :mod:`difflab.acceleration.consistency` (Song et al. 2023, CD)
    consistency_training      :mod:`difflab.acceleration.consistency` (Song et al. 2023; iCT)
    reflow                    :mod:`difflab.acceleration.reflow` (Liu et al. 2023)

AdamW with warm-up and a cosine or constant learning rate (:class:`difflab.training.lr.LRSchedule`),
gradient clipping, an EMA of the student (:class:`difflab.training.ema.EMA`), crash-safe checkpoints
that resume exactly (:mod:`difflab.training.checkpoint`) and ``metrics.jsonl``. Each finished
student goes to the ``export`` callback with the sampler settings it was made for: progressive
distillation exports the student of every phase that ends at a step count in ``method.export``
(a grid-bound DDIM sampler), the others one model (consistency models: the multistep
``consistency`` sampler; reflow: Euler).

The teacher is any denoiser (guidance already applied); the loop knows nothing of saved models, so
exact mixtures serve as teachers in the tests (the command line loads and saves models).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from difflab import schedules
from difflab.acceleration.consistency import (
    INDEX_DISTRIBUTIONS,
    METRICS,
    consistency_levels,
    consistency_loss,
    curriculum,
    draw_levels,
)
from difflab.acceleration.grids import few_step_grid
from difflab.acceleration.progressive import halve, progressive_target
from difflab.acceleration.reflow import GridLevels, reflow_loss, reflow_pairs
from difflab.acceleration.teacher import SOLVERS
from difflab.core.tensors import check_name, unknown_name
from difflab.data import Dataset
from difflab.training import distributed as dist
from difflab.training.checkpoint import latest_checkpoint, load_checkpoint, restore, save_checkpoint
from difflab.training.config import merge_defaults
from difflab.training.ema import EMA
from difflab.training.loop import DataOrder
from difflab.training.lr import LRSchedule
from difflab.training.noise_levels import NOISE_LEVELS, NoiseLevels
from difflab.training.objectives import Objective, denoising_loss
from difflab.training.records import read_records, write_records
from difflab.utils.weights import load_weights, save_weights, write_config

__all__ = ["DEFAULTS", "METHODS", "DistillTrainer", "Export", "full_config"]

Denoiser = Callable[..., Tensor]
Export = Callable[[str, nn.Module, dict[str, Any]], None]

# each method's options and their defaults ([method] section)
METHODS: dict[str, dict[str, Any]] = {
    "progressive": {"start_steps": 16, "end_steps": 1, "schedule": "karras", "export": [4, 2, 1]},
    "consistency_distillation": {"levels": 18, "distribution": "uniform", "metric": "pseudo_huber"},
    "consistency_training": {
        "levels_start": 10,
        "levels_end": 1280,
        "distribution": "lognormal",
        "metric": "pseudo_huber",
    },
    "reflow": {"pairs": 10000, "pair_batch": 500, "noise_levels": "uniform_t"},
}
# reflow's noise levels: a training distribution (difflab.training.noise_levels), or "grid": the
# positive levels of the student's own few-step grid (sample.steps steps), uniformly
GRID_LEVELS = "grid"

DEFAULTS: dict[str, dict[str, Any]] = {
    "run": {
        "name": "distill",
        "out": "runs",
        "seed": 0,
        "steps": 2000,
        "log_every": 50,
        "checkpoint_every": 250,
        "keep": 2,
        "threads": 0,
    },
    # teacher: a model (name or folder), its guidance, the ODE step of progressive distillation's
    # first phase and of consistency distillation, and reflow's pair sampler; sigma_min/max = 0:
    # the model's
    "teacher": {
        "model": "mnist",
        "guidance": 1.0,
        "solver": "heun",
        "sampler": "heun",
        "steps": 20,
        "schedule": "",
        "sigma_min": 0.0,
        "sigma_max": 0.0,
    },
    "method": {"name": "progressive"},
    "student": {"init": "teacher"},
    "data": {"name": "mnist", "split": "train"},
    "optim": {
        "lr": 1e-4,
        "betas": [0.9, 0.999],
        "weight_decay": 0.0,
        "batch_size": 64,
        "grad_clip": 1.0,
        "schedule": "constant",
        "warmup": 0,
        "min_factor": 0.0,
    },
    "ema": {"kind": "power", "sigma_rel": 0.05, "decay": 0.999},
    "sample": {"steps": 2},  # the default step count of exported consistency and reflow models
}


def full_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` over :data:`DEFAULTS`, with the method's own defaults filled in and its options
    checked (the [data] section is free: its keys go to ``difflab.data.load``)."""
    full = merge_defaults(config, DEFAULTS, ("method", "data"))
    name = full["method"].get("name")
    if name not in METHODS:
        raise unknown_name("distillation method", str(name), METHODS)
    options = {k: v for k, v in full["method"].items() if k != "name"}
    for key in options:
        if key not in METHODS[name]:
            raise unknown_name(f"option of method {name!r}", key, METHODS[name])
    full["method"] = {"name": name, **METHODS[name], **options}
    method, teacher = full["method"], full["teacher"]
    check_name("teacher solver", teacher["solver"], SOLVERS)
    check_name("student init", full["student"]["init"], ("teacher", "scratch"))
    if name == "progressive":
        start, end = method["start_steps"], method["end_steps"]
        if not (isinstance(start, int) and isinstance(end, int) and 1 <= end < start):
            raise ValueError(f"progressive: need 1 <= end_steps < start_steps, got {end}, {start}")
        if start % end or (start // end) & (start // end - 1):
            raise ValueError(
                f"progressive: start_steps / end_steps must be a power of 2, got {start} / {end}"
            )
    if name == "reflow":
        check_name("reflow noise levels", method["noise_levels"], (*NOISE_LEVELS, GRID_LEVELS))
    if name in ("consistency_distillation", "consistency_training"):
        check_name("consistency metric", method["metric"], METRICS)
        check_name("level distribution", method["distribution"], INDEX_DISTRIBUTIONS)
    return full


class DistillTrainer:
    """A distillation run. ``teacher``: the teacher denoiser (guidance applied); ``student``: the
    student network, initialized by the caller; ``objective``: the wrapper of both (the teacher's);
    ``data``: training samples (all methods but reflow); ``sigma_min`` / ``sigma_max``: the noise
    range (finite, except reflow's sigma_max); ``export(name, network, sample_settings)``: called
    with each finished student (EMA weights); ``shape``: one sample's shape (default the data's)."""

    def __init__(
        self,
        config: dict[str, Any],
        teacher: Denoiser,
        student: nn.Module,
        objective: Objective,
        data: Dataset | None,
        sigma_min: float,
        sigma_max: float,
        run_dir: str | Path | None = None,
        export: Export | None = None,
        progress: bool = True,
        shape: tuple[int, ...] | None = None,
    ) -> None:
        self.config = full_config(config)
        run, self.method = self.config["run"], self.config["method"]
        self.name = self.method["name"]
        if self.name != "reflow" and data is None:
            raise ValueError(f"{self.name} needs training data")
        if not (0 < sigma_min < sigma_max and (math.isfinite(sigma_max) or self.name == "reflow")):
            raise ValueError(
                f"need 0 < sigma_min < sigma_max, finite for {self.name}, got {sigma_min}, "
                f"{sigma_max} (set teacher.sigma_max)"
            )
        if run["threads"]:
            torch.set_num_threads(int(run["threads"]))
        self.run_dir = Path(run_dir or Path(run["out"]) / run["name"])
        self.device = dist.device()  # CUDA when there is one (the teacher should be there too)
        self.teacher, self.student, self.objective = teacher, student.to(self.device), objective
        self.data, self.progress, self.export = data, progress, export
        self.shape = tuple(data.shape if shape is None and data is not None else shape or ())
        if not self.shape:
            raise ValueError("reflow without data needs the sample shape (shape=...)")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.num_classes = int(getattr(student, "num_classes", 0))
        self.generator = torch.Generator().manual_seed(run["seed"] + 1)
        self.step, self.phase, self.records = 0, 0, []
        self.phase_teacher: nn.Module | None = None  # progressive: the previous phase's student
        if self.name == "progressive":
            m = self.method
            self.phases = int(math.log2(m["start_steps"] // m["end_steps"]))
            self.phase_steps = -(-run["steps"] // self.phases)
            grid = schedules.get(m["schedule"])
            self.grid0 = grid(
                m["start_steps"], self.sigma_min, self.sigma_max, process=objective.process
            )
        if self.name == "reflow":
            self.pairs = self._pairs()
            levels = self.method["noise_levels"]
            self.levels = (
                GridLevels(self.student_grid())
                if levels == GRID_LEVELS
                else NoiseLevels(levels, objective.process)
            )
        self.order = DataOrder(len(self.pairs[0] if self.name == "reflow" else data), run["seed"])
        self._new_optimizer()

    # ------------------------------------------------------------------ pieces

    def _new_optimizer(self) -> None:
        optim = self.config["optim"]
        self.ema = EMA(self.student, **self.config["ema"])
        self.optimizer = torch.optim.AdamW(
            self.student.parameters(),
            lr=optim["lr"],
            betas=tuple(optim["betas"]),
            weight_decay=optim["weight_decay"],
        )
        total = self.phase_steps if self.name == "progressive" else self.config["run"]["steps"]
        self.lr = LRSchedule(optim["schedule"], optim["warmup"], total, optim["min_factor"])

    def _teacher_grid(self) -> Tensor:
        """Progressive distillation: the teacher's grid in the current phase (2N steps)."""
        grid = self.grid0
        for _ in range(self.phase):
            grid = halve(grid)
        return grid

    def _pairs(self) -> tuple[Tensor, Tensor, Tensor | None]:
        """Reflow's coupling (z, T(z), labels), made once and kept in the run folder."""
        path = self.run_dir / "pairs.safetensors"
        t_cfg, n = self.config["teacher"], self.method["pairs"]
        if path.exists():
            t = load_weights(path, self.device)
            if len(t["z"]) != n:
                raise ValueError(
                    f"{path} holds {len(t['z'])} pairs but method.pairs is {n}: delete it to make "
                    "new pairs, or start a new run folder"
                )
            return t["z"], t["x0"], t.get("labels")
        g = torch.Generator().manual_seed(self.config["run"]["seed"] + 3)
        z = torch.randn((n, *self.shape), generator=g).to(self.device)
        labels = torch.randint(self.num_classes, (n,), generator=g) if self.num_classes else None
        labels = None if labels is None else labels.to(self.device)
        sigmas = self._teacher_sampling_grid()
        x0 = []
        for lo in range(0, n, self.method["pair_batch"]):
            rows = slice(lo, lo + self.method["pair_batch"])
            cond = None if labels is None else {"labels": labels[rows]}
            x0.append(reflow_pairs(self.teacher, z[rows], sigmas, t_cfg["sampler"], cond=cond))
        x0 = torch.cat(x0)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tensors = {"z": z, "x0": x0} | ({} if labels is None else {"labels": labels})
        save_weights(path, {k: v.cpu() for k, v in tensors.items()})
        return z, x0, labels

    def _teacher_sampling_grid(self) -> Tensor:
        t_cfg = self.config["teacher"]
        name = t_cfg["schedule"] or "karras"
        return schedules.get(name)(
            t_cfg["steps"], self.sigma_min, self.sigma_max, process=self.objective.process
        )

    # ------------------------------------------------------------------ one step

    def _batch(self) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(x0, labels, z): data samples, or reflow's coupled pairs."""
        idx = self.order.next(self.config["optim"]["batch_size"])
        if self.name == "reflow":
            z, x0, labels = self.pairs
            return x0[idx], None if labels is None else labels[idx], z[idx]
        x0, labels = self.data[idx]
        labels = labels.to(self.device) if self.num_classes else None
        return x0.to(self.device), labels, None

    def losses(self) -> Tensor:
        """The per-sample losses of one batch (all draws from the run's generator)."""
        x0, labels, z = self._batch()
        cond = {} if labels is None else {"labels": labels}
        student = self.objective.denoiser(self.student)
        g, b = self.generator, x0.shape[0]
        if self.name == "reflow":
            return reflow_loss(student, self.objective, x0, z, self.levels, g, **cond)
        if self.name == "progressive":
            grid = self._teacher_grid()
            i = 2 * torch.randint((len(grid) - 1) // 2, (b,), generator=g)
            s, s_mid, s_next = (grid[i + k].to(x0) for k in range(3))
            s_x = s.view(-1, *([1] * (x0.ndim - 1)))
            x = x0 + s_x * torch.randn(x0.shape, generator=g, dtype=x0.dtype).to(x0.device)
            first = self.phase_teacher is None
            teacher = self.teacher if first else self.objective.denoiser(self.phase_teacher)
            solver = self.config["teacher"]["solver"] if first else "euler"
            target = progressive_target(teacher, x, s, s_mid, s_next, solver, **cond)
            return denoising_loss(
                student, target, (x - target) / s_x, s, self.objective.weighting, **cond
            )
        m = self.method
        if self.name == "consistency_training":
            n = curriculum(
                self.step, self.config["run"]["steps"], m["levels_start"], m["levels_end"]
            )
            teacher = None
        else:
            n, teacher = m["levels"], self.teacher
        levels = consistency_levels(n, self.sigma_min, self.sigma_max)
        s, s_next = draw_levels(levels, b, g, m["distribution"])
        z = torch.randn(x0.shape, generator=g, dtype=x0.dtype).to(x0.device)
        solver = self.config["teacher"]["solver"]
        return consistency_loss(
            student,
            x0,
            z,
            s.to(x0),
            s_next.to(x0),
            teacher,
            solver,
            m["metric"],
            **cond,
        )

    def train_step(self) -> dict[str, float]:
        optim = self.config["optim"]
        self.student.train()
        loss = self.losses().float().mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = optim["grad_clip"] or math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.student.parameters(), clip))
        local = (
            self.step - self.phase * self.phase_steps if self.name == "progressive" else self.step
        )
        lr = optim["lr"] * self.lr(local)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if not (math.isfinite(loss.item()) and math.isfinite(grad_norm)):
            raise ValueError(f"non-finite loss or gradient at step {self.step + 1}: lower optim.lr")
        self.optimizer.step()
        self.ema.update(self.student)
        return {"loss": loss.item(), "grad_norm": grad_norm, "lr": lr}

    # ------------------------------------------------------------------ phases and exports

    def _end_phase(self) -> None:
        """Progressive distillation: export the student of N steps when asked, then it becomes the
        teacher of the next phase and a fresh copy of it the new student."""
        grid = halve(self._teacher_grid())
        steps = len(grid) - 1
        if steps in self.method["export"]:
            self._export(f"model_{steps}step", self._ddim_settings(grid))
        self.phase += 1
        self.phase_teacher = copy.deepcopy(self.ema.model)
        self.student.load_state_dict(self.ema.model.state_dict())
        self._new_optimizer()

    def _ddim_settings(self, grid: Tensor) -> dict[str, Any]:
        return {
            "sampler": "euler",
            "schedule": [float(s) for s in grid],
            "steps": len(grid) - 1,
            "sampler_options": {"final": "denoised"},
            "guidance": 1.0,
        }

    def sample_settings(self) -> dict[str, Any]:
        """How the finished consistency or reflow student samples (its model's "sample" section):
        the few-step grid of the teacher's schedule (consistency models: Karras levels), with the
        multistep consistency sampler, or Euler with the jump to D at the end (reflow)."""
        steps = self.config["sample"]["steps"]
        reflow = self.name == "reflow"
        grid = self.student_grid()
        settings = {
            "sampler": "euler" if reflow else "consistency",
            "schedule": [float(s) for s in grid],
            "steps": steps,
            "guidance": 1.0,
        }
        if reflow:
            settings["sampler_options"] = {"final": "denoised"}
        return settings

    def student_grid(self) -> Tensor:
        """The consistency or reflow student's grid: ``few_step_grid`` of ``sample.steps`` steps of
        the teacher's schedule (reflow) or of Karras levels (consistency models)."""
        reflow = self.name == "reflow"
        schedule = (self.config["teacher"]["schedule"] or "karras") if reflow else "karras"
        return few_step_grid(
            self.config["sample"]["steps"],
            self.sigma_min,
            self.sigma_max,
            schedule,
            process=self.objective.process,
        )

    def _export(self, name: str, settings: dict[str, Any]) -> None:
        if self.export is not None:
            self.export(name, self.ema.model, settings)

    # ------------------------------------------------------------------ state

    def save(self) -> None:
        ema = {"ema": self.ema}
        if self.phase_teacher is not None:
            ema["teacher"] = self.phase_teacher
        save_checkpoint(
            self.run_dir,
            self.step,
            model=self.student,
            ema=ema,
            optimizer=self.optimizer,
            data_state={
                "order": self.order.state_dict(),
                "generator": self.generator.get_state(),
                "phase": self.phase,
            },
            config=self.config,
            keep=self.config["run"]["keep"],
        )

    def resume(self) -> bool:
        """Continue from the run's latest checkpoint; False when there is none."""
        path = latest_checkpoint(self.run_dir)
        if path is None:
            return False
        ckpt = load_checkpoint(path)
        self.phase = int(ckpt.data_state["phase"])
        if self.phase > 0:
            self.phase_teacher = copy.deepcopy(self.student)
            restore(ckpt, ema={"teacher": self.phase_teacher}, rng=False)
        restore(ckpt, model=self.student, ema={"ema": self.ema}, optimizer=self.optimizer)
        self.order.load_state_dict(ckpt.data_state["order"])
        self.generator.set_state(ckpt.data_state["generator"])
        self.step = ckpt.step
        self.records = read_records(self.run_dir, self.step)
        return True

    def _log(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        write_records(self.run_dir, self.records)

    # ------------------------------------------------------------------ the loop

    def fit(self) -> None:
        """Train to ``run.steps``, exporting students as they finish; Ctrl-C saves a checkpoint."""
        run = self.config["run"]
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_config(self.run_dir / "config.json", self.config)
        bar = tqdm(
            total=run["steps"],
            initial=self.step,
            disable=not self.progress,
            unit="step",
            desc=self.name,
            dynamic_ncols=True,
        )
        start, start_step = time.perf_counter(), self.step
        try:
            while self.step < run["steps"]:
                stats = self.train_step()
                self.step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{stats['loss']:.4g}", refresh=False)
                n = self.step
                if n % run["log_every"] == 0 or n == run["steps"]:
                    rate = (n - start_step) / max(time.perf_counter() - start, 1e-9)
                    self._log({"step": n, "phase": self.phase, **stats, "steps_per_s": rate})
                if self.name == "progressive" and (n % self.phase_steps == 0 or n == run["steps"]):
                    self._end_phase()
                if n % run["checkpoint_every"] == 0 or n == run["steps"]:
                    self.save()
        except KeyboardInterrupt:
            if self.step > 0:
                self.save()
            raise
        finally:
            bar.close()
        if self.name != "progressive":
            self._export("model", self.sample_settings())
