"""Distillation runs: ``difflab distill --config configs/distill_*.toml [key=value ...]``, or
:func:`distill` with a loaded teacher model (``difflab.pretrained.distill`` loads it by name).

The distillation task of the one training loop (:class:`difflab.training.loop.Trainer`), for four
recipes, each turning a many-step teacher denoiser into a few-step student of the same
parameterization (the teacher's objective wraps both):

    progressive               :mod:`difflab.acceleration.progressive` (Salimans & Ho 2022)
    consistency_distillation  :mod:`difflab.acceleration.consistency` (Song et al. 2023, CD)
    consistency_training      :mod:`difflab.acceleration.consistency` (Song et al. 2023; iCT)
    reflow                    :mod:`difflab.acceleration.reflow` (Liu et al. 2023)

The loop owns AdamW, the learning-rate schedule (per phase for progressive distillation), clipping,
accumulation, the EMA of the student, non-finite guards, crash-safe checkpoints that resume exactly,
``metrics.jsonl`` and DDP; the task draws each batch (data or reflow's coupled pairs, noise levels,
noises) from the run's generator and computes the recipe's per-sample losses. Each finished student
is written as a model folder with the sampler settings it was made for: progressive distillation
exports the student of every phase that ends at a step count in ``method.export`` as
``model_<N>step`` (a grid-bound DDIM sampler), the others one ``model`` (consistency models: the
multistep ``consistency`` sampler; reflow: Euler); an ``export`` callback receives them instead.

The teacher is any denoiser (guidance already applied), so exact mixtures serve as teachers in the
tests; :func:`distill` derives teacher, student, objective, data and noise range from a saved model.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from difflab import data as datasets
from difflab import models, schedules
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
from difflab.acceleration.reflow import GridLevels, reflow_pairs
from difflab.acceleration.teacher import SOLVERS
from difflab.core.tensors import check_name, unknown_name
from difflab.data import Dataset
from difflab.training.checkpoint import Checkpoint, restore
from difflab.training.config import LOOP_DEFAULTS, extend, merge_defaults
from difflab.training.denoising import diffusion_model_config
from difflab.training.loop import DataOrder, Task, Trainer, run
from difflab.training.noise_levels import NOISE_LEVELS, NoiseLevels
from difflab.training.objectives import Objective, denoising_loss
from difflab.utils.folder import save_folder
from difflab.utils.weights import load_weights, save_weights

__all__ = [
    "DEFAULTS",
    "METHODS",
    "DistillTrainer",
    "Distillation",
    "Export",
    "distill",
    "full_config",
]

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

DEFAULTS: dict[str, dict[str, Any]] = extend(
    LOOP_DEFAULTS,
    {
        "run": {"name": "distill", "steps": 2000, "log_every": 50, "checkpoint_every": 250},
        # teacher: a model (name or folder), its guidance, the ODE step of progressive
        # distillation's first phase and of consistency distillation, and reflow's pair sampler;
        # sigma_min/max = 0: the model's
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
        "optim": {"lr": 1e-4, "batch_size": 64},
        "sample": {"steps": 2},  # the default step count of exported consistency and reflow models
    },
)
FREE = ("method", "data")  # [method] is checked by full_config, [data] by difflab.data.load


def full_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` over :data:`DEFAULTS`, with the method's own defaults filled in and its options
    checked (the [data] section is free: its keys go to ``difflab.data.load``)."""
    full = merge_defaults(config, DEFAULTS, FREE)
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


class Distillation(Task):
    """Distil ``teacher`` (a denoiser, guidance applied) into ``student`` (a network, initialized
    by the caller) of the same parameterization: ``objective`` wraps both (the teacher's, label
    dropout 0); ``data``: training samples (all methods but reflow); ``sigma_min`` / ``sigma_max``:
    the noise range (finite, except reflow's sigma_max); ``export(name, network, sample_settings)``:
    called with each finished student (EMA weights) instead of writing its model folder;
    ``shape``: one sample's shape (default the data's). ``described``: the data section of the
    students' model configs (name, shape, num_classes, classes; default from the data) and
    ``record``: their "distillation" section's teacher and guidance (default from [teacher]).
    :meth:`of_model` derives all of these from a saved model when the run starts."""

    name = "distillation"
    cli = ("difflab", "distill")
    defaults = DEFAULTS
    free = FREE

    def __init__(
        self,
        teacher: Denoiser | None,
        student: nn.Module | None,
        objective: Objective | None,
        data: Dataset | None,
        sigma_min: float,
        sigma_max: float,
        export: Export | None = None,
        shape: tuple[int, ...] | None = None,
        described: dict[str, Any] | None = None,
        record: dict[str, Any] | None = None,
    ) -> None:
        self.teacher, self.student, self.objective, self.data = teacher, student, objective, data
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.on_export, self.shape = export, shape
        self.described, self.record = described, record
        self.model: Any = None  # a saved teacher model, for of_model

    @classmethod
    def of_model(cls, model: Any) -> Distillation:
        """The distillation of a saved diffusion model (a :class:`difflab.pretrained.Model`, or a
        function that loads one by name, such as ``difflab.load``, called with [teacher] model): at
        the start of the run, the teacher is ``model.guided(teacher.guidance)`` on its device, the
        student a copy of its network (student.init = "teacher") or a new one of the same
        config, the objective its training objective without label dropout (the student samples
        without guidance), the data [data] (checked against the model's shape and classes), the
        noise range [teacher] sigma_min / sigma_max or the model's."""
        task = cls(None, None, None, None, 0.0, 0.0)
        task.model = model
        return task

    def _from_model(self, config: dict[str, Any]) -> None:
        model, teacher_cfg, device = self.model, config["teacher"], self.trainer.device
        if not hasattr(model, "guided"):  # a loader
            model = self.model = model(teacher_cfg["model"])
        model.to(device)
        guidance = float(teacher_cfg["guidance"])
        self.teacher = model.guided(guidance)
        d = model.defaults
        process = model.process
        self.sigma_min = teacher_cfg["sigma_min"] or d.get("sigma_min") or process.sigma_min
        self.sigma_max = teacher_cfg["sigma_max"] or d.get("sigma_max") or process.sigma_max
        method = config["method"]["name"]
        if not math.isfinite(self.sigma_max) and method != "reflow":
            raise ValueError(
                f"{method} needs a finite sigma_max; the teacher's is inf (a flow model): set "
                "teacher.sigma_max, e.g. teacher.sigma_max=80"
            )
        if config["student"]["init"] == "teacher":
            self.student = copy.deepcopy(model.network)
        else:  # the loop has seeded the global RNG with run.seed
            self.student = models.build(model.config["network"])
        self.student.train().requires_grad_(True)
        if method != "reflow":
            options = {k: v for k, v in config["data"].items() if k not in ("name", "split")}
            data = datasets.load(config["data"]["name"], split=config["data"]["split"], **options)
            if tuple(data.shape) != tuple(model.shape):
                raise ValueError(
                    f"data {data.name} has samples of shape {list(data.shape)}, the teacher "
                    f"{model.name} makes {list(model.shape)}"
                )
            if model.num_classes and data.labels is None:
                raise ValueError(
                    f"the teacher is class-conditional but data {data.name} has no labels"
                )
            self.data = data
        # the student is never trained on the null class: it samples without guidance
        objective = {**model.config["parameterization"], **model.config.get("objective", {})}
        self.objective = Objective.from_config({**objective, "label_dropout": 0.0})
        self.shape = tuple(model.shape)
        self.described = {
            "name": model.config["data"]["name"],
            "shape": list(model.shape),
            "num_classes": model.num_classes,
            "classes": model.classes,
        }
        self.record = {"teacher": model.name, "guidance": guidance}
        teacher_cfg["schedule"] = teacher_cfg["schedule"] or d["schedule"]

    # ------------------------------------------------------------------ setting up

    def build(self) -> nn.Module:
        config = self.trainer.config
        if self.model is not None:
            self._from_model(config)
        run, self.method = config["run"], config["method"]
        self.name = self.method["name"]
        if self.name != "reflow" and self.data is None:
            raise ValueError(f"{self.name} needs training data")
        sigma_min, sigma_max = self.sigma_min, self.sigma_max
        if not (0 < sigma_min < sigma_max and (math.isfinite(sigma_max) or self.name == "reflow")):
            raise ValueError(
                f"need 0 < sigma_min < sigma_max, finite for {self.name}, got {sigma_min}, "
                f"{sigma_max} (set teacher.sigma_max)"
            )
        self.device = (
            self.trainer.device
        )  # CUDA when there is one (the teacher should be there too)
        data = self.data
        self.shape = tuple(
            data.shape if self.shape is None and data is not None else self.shape or ()
        )
        if not self.shape:
            raise ValueError("reflow without data needs the sample shape (shape=...)")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.num_classes = int(getattr(self.student, "num_classes", 0))
        self.phase = 0
        self.phase_teacher: nn.Module | None = None  # progressive: the previous phase's student
        if self.name == "progressive":
            m = self.method
            self.phases = int(math.log2(m["start_steps"] // m["end_steps"]))
            self.phase_steps = -(-run["steps"] // self.phases)
            grid = schedules.get(m["schedule"])
            self.grid0 = grid(
                m["start_steps"], self.sigma_min, self.sigma_max, process=self.objective.process
            )
        if self.name == "reflow":
            self.pairs = self._pairs()
            levels = self.method["noise_levels"]
            self.levels = (
                GridLevels(self.student_grid())
                if levels == GRID_LEVELS
                else NoiseLevels(levels, self.objective.process)
            )
        self.order = DataOrder(len(self.pairs[0] if self.name == "reflow" else data), run["seed"])
        return self.student

    def _teacher_grid(self) -> Tensor:
        """Progressive distillation: the teacher's grid in the current phase (2N steps)."""
        grid = self.grid0
        for _ in range(self.phase):
            grid = halve(grid)
        return grid

    def _pairs(self) -> tuple[Tensor, Tensor, Tensor | None]:
        """Reflow's coupling (z, T(z), labels), made once and kept in the run folder."""
        config, run_dir = self.trainer.config, self.trainer.run_dir
        path = run_dir / "pairs.safetensors"
        t_cfg, n = config["teacher"], self.method["pairs"]
        if path.exists():
            t = load_weights(path, self.device)
            if len(t["z"]) != n:
                raise ValueError(
                    f"{path} holds {len(t['z'])} pairs but method.pairs is {n}: delete it to make "
                    "new pairs, or start a new run folder"
                )
            return t["z"], t["x0"], t.get("labels")
        g = torch.Generator().manual_seed(config["run"]["seed"] + 3)
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
        if self.trainer.is_main:  # every rank makes the same pairs; one writes them
            run_dir.mkdir(parents=True, exist_ok=True)
            tensors = {"z": z, "x0": x0} | ({} if labels is None else {"labels": labels})
            save_weights(path, {k: v.cpu() for k, v in tensors.items()})
        return z, x0, labels

    def _teacher_sampling_grid(self) -> Tensor:
        t_cfg = self.trainer.config["teacher"]
        name = t_cfg["schedule"] or "karras"
        return schedules.get(name)(
            t_cfg["steps"], self.sigma_min, self.sigma_max, process=self.objective.process
        )

    # ------------------------------------------------------------------ one step

    def batch(self, size: int, generator: torch.Generator) -> dict[str, Tensor | None]:
        """Data samples (or reflow's coupled pairs) and the recipe's draws, in the order of the
        recipe: reflow's noise levels; progressive distillation's grid intervals and noises;
        consistency models' level pairs and noises."""
        idx = self.order.next(size)
        if self.name == "reflow":
            z, x0, labels = self.pairs
            x0, labels, z = x0[idx], None if labels is None else labels[idx], z[idx]
        else:
            x0, labels = self.data[idx]
            labels = labels.to(self.device) if self.num_classes else None
            x0, z = x0.to(self.device), None
        drawn: dict[str, Tensor | None] = {"x0": x0, "labels": labels}
        g, b = generator, x0.shape[0]
        if self.name == "reflow":
            sigma = self.levels(b, g, x0.device).to(x0.device)
            return drawn | {"z": z, "sigma": sigma}
        if self.name == "progressive":
            grid = self._teacher_grid()
            i = 2 * torch.randint((len(grid) - 1) // 2, (b,), generator=g)
            s, s_mid, s_next = (grid[i + k].to(x0) for k in range(3))
            noise = torch.randn(x0.shape, generator=g, dtype=x0.dtype).to(x0.device)
            return drawn | {"sigma": s, "sigma_mid": s_mid, "sigma_next": s_next, "z": noise}
        m = self.method
        if self.name == "consistency_training":
            steps = self.trainer.config["run"]["steps"]
            n = curriculum(self.trainer.step, steps, m["levels_start"], m["levels_end"])
        else:
            n = m["levels"]
        levels = consistency_levels(n, self.sigma_min, self.sigma_max)
        s, s_next = draw_levels(levels, b, g, m["distribution"])
        z = torch.randn(x0.shape, generator=g, dtype=x0.dtype).to(x0.device)
        return drawn | {"sigma": s.to(x0), "sigma_next": s_next.to(x0), "z": z}

    def losses(self, network: nn.Module, batch: dict[str, Tensor | None], rows: Tensor) -> Tensor:
        """The recipe's per-sample losses of the batch's ``rows``."""
        b = {k: None if v is None else v[rows.to(v.device)] for k, v in batch.items()}
        x0, z, s = b["x0"], b["z"], b["sigma"]
        cond = {} if b["labels"] is None else {"labels": b["labels"]}
        student = self.objective.denoiser(network)
        if self.name == "reflow":
            return denoising_loss(student, x0, z, s, self.objective.weighting, **cond)
        if self.name == "progressive":
            s_x = s.view(-1, *([1] * (x0.ndim - 1)))
            x = x0 + s_x * z
            first = self.phase_teacher is None
            teacher = self.teacher if first else self.objective.denoiser(self.phase_teacher)
            solver = self.trainer.config["teacher"]["solver"] if first else "euler"
            target = progressive_target(
                teacher, x, s, b["sigma_mid"], b["sigma_next"], solver, **cond
            )
            return denoising_loss(
                student, target, (x - target) / s_x, s, self.objective.weighting, **cond
            )
        teacher = None if self.name == "consistency_training" else self.teacher
        return consistency_loss(
            student,
            x0,
            z,
            s,
            b["sigma_next"],
            teacher,
            self.trainer.config["teacher"]["solver"],
            self.method["metric"],
            **cond,
        )

    def fields(self, stats: dict[str, float]) -> dict[str, Any]:
        return {"phase": self.phase, "epoch": self.order.epoch}

    # ------------------------------------------------------------------ phases and exports

    def lr_position(self, step: int) -> tuple[int, int]:
        """Progressive distillation: the learning-rate schedule restarts with each phase."""
        if self.name == "progressive":
            return step - self.phase * self.phase_steps, self.phase_steps
        return step, self.trainer.config["run"]["steps"]

    def end_of_step(self, step: int) -> bool:
        """Progressive distillation, at the end of a phase: export the student of N steps when
        asked, then it becomes the teacher of the next phase and the EMA weights the new student
        (the loop starts a fresh optimizer and EMA)."""
        last = step == self.trainer.config["run"]["steps"]
        if self.name != "progressive" or not (step % self.phase_steps == 0 or last):
            return False
        grid = halve(self._teacher_grid())
        steps = len(grid) - 1
        if steps in self.method["export"]:
            self.trainer.exported += self._export(f"model_{steps}step", self._ddim_settings(grid))
        ema = self.trainer.ema.model
        self.phase += 1
        self.phase_teacher = copy.deepcopy(ema)
        self.trainer.net.load_state_dict(ema.state_dict())
        return True

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
        steps = self.trainer.config["sample"]["steps"]
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
        config = self.trainer.config
        reflow = self.name == "reflow"
        schedule = (config["teacher"]["schedule"] or "karras") if reflow else "karras"
        return few_step_grid(
            config["sample"]["steps"],
            self.sigma_min,
            self.sigma_max,
            schedule,
            process=self.objective.process,
        )

    def export(self) -> list[Path]:
        """The consistency or reflow student, ``model`` (progressive distillation exported its
        students as their phases ended)."""
        if self.name == "progressive":
            return []
        return self._export("model", self.sample_settings())

    def _export(self, name: str, settings: dict[str, Any]) -> list[Path]:
        """The EMA student as the model folder ``name`` of the run (rank 0), or to the callback."""
        t = self.trainer
        if not t.is_main:
            return []
        if self.on_export is not None:
            self.on_export(name, t.ema.model, settings)
            return []
        teacher = t.config["teacher"]
        record = {"teacher": teacher["model"], "guidance": teacher["guidance"]}
        described = self.described or {
            "name": getattr(self.data, "name", "data"),
            "shape": list(self.shape),
            "num_classes": self.num_classes,
            "classes": getattr(self.data, "classes", None),
        }
        config = diffusion_model_config(
            t.ema.model,
            self.objective,
            described,
            settings,
            training=t.record,
            extra={
                "distillation": {
                    "method": self.name,
                    **(self.record or record),
                    "steps": settings["steps"],
                }
            },
        )
        return [save_folder(t.run_dir / name, config, t.ema.model.state_dict())]

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        return {"order": self.order.state_dict(), "phase": self.phase}

    def weights(self) -> dict[str, nn.Module]:
        return {} if self.phase_teacher is None else {"teacher": self.phase_teacher}

    def load_state_dict(self, state: dict[str, Any], checkpoint: Checkpoint) -> None:
        self.phase = int(state["phase"])
        self.phase_teacher = None
        if self.phase > 0:
            self.phase_teacher = copy.deepcopy(self.trainer.net).eval().requires_grad_(False)
            restore(checkpoint, ema={"teacher": self.phase_teacher}, rng=False)
        self.order.load_state_dict(state["order"])

    def describe(self) -> str:
        params = sum(p.numel() for p in self.trainer.net.parameters())
        return f"{self.name}: a student of {params:,} parameters"


class DistillTrainer(Trainer):
    """A distillation run: the training loop with a :class:`Distillation` task (its arguments), from
    a config that :func:`full_config` completes. ``trainer.student`` is the network trained."""

    def __init__(
        self,
        config: dict[str, Any],
        teacher: Denoiser | None = None,
        student: nn.Module | None = None,
        objective: Objective | None = None,
        data: Dataset | None = None,
        sigma_min: float = 0.0,
        sigma_max: float = 0.0,
        run_dir: str | Path | None = None,
        export: Export | None = None,
        progress: bool = True,
        shape: tuple[int, ...] | None = None,
        *,
        task: Distillation | None = None,
        command: str | None = None,
    ) -> None:
        if task is None:
            task = Distillation(
                teacher, student, objective, data, sigma_min, sigma_max, export, shape
            )
        super().__init__(full_config(config), run_dir, progress, task, command)

    @property
    def student(self) -> nn.Module:
        return self.net


def distill(
    teacher: Any,
    config: str | Path | dict[str, Any],
    overrides: list[str] | tuple[str, ...] = (),
    run_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
) -> DistillTrainer:
    """Distil a saved diffusion model by the config (a TOML/JSON file or a dict over
    :data:`DEFAULTS`) with ``section.key=value`` overrides, resuming the run's latest checkpoint;
    the students are written as model folders (``model_4step`` ... or ``model``). ``teacher``: the
    model (a :class:`difflab.pretrained.Model`) or what loads the one [teacher] model names
    (``difflab.load``, as ``difflab distill`` does); see :meth:`Distillation.of_model`. Returns the
    trainer (``trainer.exported``: the folders written).

        distill(difflab.load, "configs/distill_reflow_moons.toml", ["run.steps=500"])
    """
    task = Distillation.of_model(teacher)
    return run(task, config, overrides, run_dir, resume, progress, DistillTrainer)
