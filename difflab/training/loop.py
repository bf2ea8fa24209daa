"""The one training loop: every kind of training in difflab (denoising, text, distillation, and the
next ones) is a :class:`Task` plugged into :class:`Trainer`.

The loop owns what every run shares: the config (a task's defaults, a file or dict, ``key=value``
overrides), AdamW, warm-up and cosine/constant/inverse-sqrt learning rates, gradient clipping and
accumulation, the EMA of the weights, autocast (and fp16 loss scaling), guards against non-finite
steps with a rollback to the last checkpoint, SIGINT/SIGTERM save-and-stop, crash-safe checkpoints
that resume bit-identically, ``metrics.jsonl`` (:mod:`difflab.training.records`), TensorBoard, the
progress bar and data-parallel training with torchrun (DDP). The task owns what its kind of training
is: its data and network, the draws and per-sample losses of a batch, its own checkpoint state, its
evaluations, its phases and its export (``model/``).

One step at global batch B: every rank draws the same batch (indices, noise levels, noises, masks,
label dropouts ...) from the run's generator, then computes the losses of its own B / world rows,
in ``accumulate`` micro-batches; DDP averages the gradients. So a run's result does not depend on
the number of processes, up to float rounding. Dropout masks come from the global RNG, seeded at
each step from (seed, step, rank): they need no saved state and differ across ranks.
"""

from __future__ import annotations

import math
import shlex
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from difflab.core.tensors import check_name
from difflab.training import distributed as dist
from difflab.training.board import log_scalars, open_board
from difflab.training.checkpoint import (
    Checkpoint,
    get_rng_state,
    latest_checkpoint,
    load_checkpoint,
    restore,
    save_checkpoint,
    set_rng_state,
)
from difflab.training.config import LOOP_DEFAULTS, load_config
from difflab.training.ema import EMA
from difflab.training.lr import LRSchedule
from difflab.training.records import read_records, write_records
from difflab.utils.weights import write_config

__all__ = ["AUTOCAST", "DataOrder", "Task", "Trainer", "run", "train"]

AUTOCAST = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class DataOrder:
    """Epoch-wise shuffled sample indices: epoch e is randperm(N) under seed + e, read in order;
    the state (epoch, position) is all a resumed run needs."""

    def __init__(self, n: int, seed: int, epoch: int = 0, position: int = 0) -> None:
        self.n, self.seed, self.epoch, self.position = n, seed, epoch, position
        self._perm = self._permutation(epoch)

    def _permutation(self, epoch: int) -> Tensor:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))

    def next(self, size: int) -> Tensor:
        """The next ``size`` indices, crossing into the next epoch's permutation when needed."""
        parts = []
        while size > 0:
            take = min(size, self.n - self.position)
            parts.append(self._perm[self.position : self.position + take])
            self.position += take
            size -= take
            if self.position == self.n:
                self.epoch, self.position = self.epoch + 1, 0
                self._perm = self._permutation(self.epoch)
        return torch.cat(parts)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "n": self.n}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["n"] != self.n or state["seed"] != self.seed:
            raise ValueError(
                f"checkpoint data order is for {state['n']} samples with seed {state['seed']}, "
                f"this run has {self.n} samples with seed {self.seed}"
            )
        self.epoch, self.position = state["epoch"], state["position"]
        self._perm = self._permutation(self.epoch)


class Task:
    """What a kind of training plugs into the one loop (:class:`Trainer`); subclass it and override
    what applies (the defaults here do nothing). The denoising task
    (:class:`difflab.training.denoising.Denoising`), text (:class:`difflab.text.train.TextTask`) and
    distillation (:class:`difflab.acceleration.distill.Distillation`) are the examples; diffusion
    policies, reward fine-tuning or time series plug in the same way, as a task and nothing else.

    Configuration (class attributes). ``defaults``: the full config defaults, the loop's
    (:data:`difflab.training.config.LOOP_DEFAULTS`: [run], [optim], [ema], [precision]) extended
    with the task's own sections and keys (:func:`difflab.training.config.extend`); ``free``: the
    sections whose keys pass unchecked to another component (a network's options, say); ``cli``:
    the command that runs the task (``("difflab", "train")``), recorded with ``--config`` and the
    overrides in the exported model's training record; ``name``: the progress bar's label.

    The task is bound to its trainer before :meth:`build` (``self.trainer``: the config, device,
    run folder, the EMA, ``trainer.is_main`` ...). Per step the loop calls :meth:`batch` once, with
    the run's generator, then :meth:`losses` for each micro-batch of this rank's rows, inside
    autocast; everything random in a batch must come from that generator, in the same order on every
    rank, so that resumed and data-parallel runs are exact (dropout is the loop's: the global RNG
    is seeded per step). Metrics: each logged step record is ``{"step", "loss", "grad_norm", "lr",
    "steps_per_s"}`` plus :meth:`fields`; :meth:`evaluate` adds records of held-out metrics; the
    loop adds ``{"step", "checkpoint"}`` records and the ``"event"`` records of skipped steps and
    rollbacks. State: anything the task changes while training (data order, phase, extra networks)
    goes through :meth:`state_dict` / :meth:`weights` and comes back in :meth:`load_state_dict`;
    that is also how a rollback restores it. Phases: when :meth:`end_of_step` says a phase ended,
    the loop starts a fresh optimizer and EMA from the network (progressive distillation), and
    :meth:`lr_position` puts the learning-rate schedule in the phase. The end: :meth:`export`
    writes the model folder(s) (rank 0 only, only when the run finished) through
    :func:`difflab.utils.folder.save_folder`.
    """

    name: str = "task"
    cli: tuple[str, ...] = ()
    defaults: dict[str, dict[str, Any]] = LOOP_DEFAULTS
    free: tuple[str, ...] = ()
    trainer: Trainer

    def build(self) -> nn.Module:
        """Load the data, check the config and make the network to train (torch's global RNG was
        just seeded with ``run.seed``: draw its initial weights from it, and data from generators
        of your own). The loop moves it to ``trainer.device``."""
        raise NotImplementedError

    def batch(self, size: int, generator: torch.Generator) -> Any:
        """The global batch of ``size`` samples with all its random draws from ``generator``,
        which :meth:`losses` indexes by rows."""
        raise NotImplementedError

    def losses(self, network: nn.Module, batch: Any, rows: Tensor) -> Tensor:
        """Per-sample losses [len(rows)] of the batch's ``rows`` (indices into the global batch);
        ``network`` is the trained network as the loop runs it (DDP-wrapped under torchrun): give
        it the inputs on ``trainer.device``. Their sum over the batch, divided by its size, is
        minimized."""
        raise NotImplementedError

    def fields(self, stats: dict[str, float]) -> dict[str, Any]:
        """Extra fields of a logged step record (``stats`` holds loss, grad_norm and lr)."""
        return {}

    def evaluate(self, step: int) -> dict[str, float]:
        """Held-out metrics due after optimizer step ``step`` (``{}`` when none are), logged as one
        record; previews (files, rank 0 only) go here too. Every rank calls it."""
        return {}

    def end_of_step(self, step: int) -> bool:
        """After each optimizer step: True when a phase ended (the loop then starts a fresh
        optimizer and EMA from the network)."""
        return False

    def lr_position(self, step: int) -> tuple[int, int]:
        """(step within the learning-rate schedule, the schedule's length) at optimizer step
        ``step``: the run by default, a phase for tasks with phases."""
        return step, self.trainer.config["run"]["steps"]

    def state_dict(self) -> dict[str, Any]:
        """The task's state for checkpoints (tensors, numbers, strings, lists, dicts)."""
        return {}

    def weights(self) -> dict[str, nn.Module]:
        """Extra networks saved in checkpoints beside the network and its EMA."""
        return {}

    def load_state_dict(self, state: dict[str, Any], checkpoint: Checkpoint) -> None:
        """Restore what :meth:`state_dict` (in ``state``) and :meth:`weights` (in
        ``checkpoint.ema``) saved."""

    def describe(self) -> str | None:
        """A summary printed when training starts (None: nothing)."""
        return None

    def export(self) -> list[Path]:
        """Write the finished run's model folder(s) (rank 0 only); returns them."""
        return []


class _Interrupt:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint at the end of the step and stops.
    A second signal acts as it would without the loop (Ctrl-C twice stops at once)."""

    def __init__(self) -> None:
        self.requested = False

    @contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be set in the main thread
            return
        old: dict[int, Any] = {}

        def handle(signum: int, frame: Any) -> None:
            self.requested = True
            signal.signal(signum, old.get(signum) or signal.SIG_DFL)

        for s in (signal.SIGINT, signal.SIGTERM):
            old[s] = signal.signal(s, handle)
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)


class Trainer:
    """A training run of ``task`` (default: the denoising task,
    :class:`difflab.training.denoising.Denoising`) from a full configuration (the task's defaults
    filled in: :func:`difflab.training.config.load_config`).

    The run folder holds ``config.json``, ``checkpoints/``, ``metrics.jsonl``, ``tensorboard/``, what
    the task's evaluations write (``samples/``) and, at the end, what it exports (``model/``: the EMA
    weights as a model folder). Attributes the trainer does not have are its task's
    (``trainer.data``, ``trainer.objective``, ``trainer.denoiser()``, ``trainer.phase`` ...).
    """

    def __init__(
        self,
        config: dict[str, Any],
        run_dir: str | Path | None = None,
        progress: bool = True,
        task: Task | None = None,
        command: str | None = None,
    ) -> None:
        task = task or self.default_task()
        self.config, self.task = config, task
        run, optim = config["run"], config["optim"]
        self.rank, self.world = dist.rank(), dist.world_size()
        self.device = dist.device()
        if run["threads"]:
            torch.set_num_threads(int(run["threads"]))
        self.run_dir = Path(run_dir or Path(run["out"]) / run["name"])
        self.progress = progress and dist.is_main()
        self.command = command or _command(task, "<dict>")
        if run["max_bad_steps"] < 1:
            raise ValueError(f"run.max_bad_steps must be >= 1, got {run['max_bad_steps']}")
        check_name("autocast precision", config["precision"]["autocast"], AUTOCAST)
        self.autocast = AUTOCAST[config["precision"]["autocast"]]
        batch, accumulate = optim["batch_size"], optim["accumulate"]
        if batch % (self.world * accumulate):
            raise ValueError(
                f"batch_size {batch} must divide evenly into {self.world} processes x "
                f"{accumulate} accumulation steps"
            )

        task.trainer = self
        torch.manual_seed(run["seed"])  # network initialization
        self.net = task.build().to(self.device)
        # fp16 needs loss scaling against gradient underflow (Micikevicius et al. 2018); bf16 not
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.autocast is torch.float16)
        self.model = dist.wrap(self.net)
        self._new_optimizer()
        self.generator = torch.Generator().manual_seed(run["seed"] + 1)
        self.step, self.bad_steps, self.records = 0, 0, []
        self.rolled_back_to: int | None = None  # the checkpoint step of the last rollback
        self.finished = False
        self.exported: list[Path] = []  # the model folders written so far
        self.interrupt = _Interrupt()
        self.board: Any = None  # TensorBoard writer while fit() runs (rank 0, when enabled)

    def default_task(self) -> Task:
        """The task of a trainer made without one: denoising (subclasses name theirs)."""
        from difflab.training.denoising import Denoising

        return Denoising()

    def __getattr__(self, name: str) -> Any:
        # called only for names the trainer lacks: the task's attributes (data, objective, ...)
        task = self.__dict__.get("task")
        if task is None or name.startswith("__"):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        try:
            return getattr(task, name)
        except AttributeError:
            raise AttributeError(
                f"{type(self).__name__!r} object and its {type(task).__name__} task have no "
                f"attribute {name!r}"
            ) from None

    @property
    def is_main(self) -> bool:
        """Whether this process writes files (rank 0)."""
        return dist.is_main()

    def _new_optimizer(self) -> None:
        """A fresh EMA of the network and AdamW (at the start, and at the start of each phase)."""
        optim = self.config["optim"]
        self.ema = EMA(self.net, **self.config["ema"])
        self.optimizer = torch.optim.AdamW(
            self.net.parameters(),
            lr=optim["lr"],
            betas=tuple(optim["betas"]),
            eps=optim["eps"],
            weight_decay=optim["weight_decay"],
            foreach=True,
        )

    def learning_rate(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based): optim.lr times the schedule."""
        optim = self.config["optim"]
        position, total = self.task.lr_position(step)
        schedule = LRSchedule(optim["schedule"], optim["warmup"], total, optim["min_factor"])
        return optim["lr"] * schedule(position)

    # ------------------------------------------------------------------ state

    @property
    def record(self) -> dict[str, Any]:
        """The training record an exported model keeps: the full config, the steps run and the
        command that reproduces the run."""
        return {"config": self.config, "steps": self.step, "command": self.command}

    def save(self) -> Path:
        """A checkpoint of everything the run needs to continue exactly (rank 0 writes)."""
        path = None
        if dist.is_main():
            data_state = {"generator": self.generator.get_state(), **self.task.state_dict()}
            if self.scaler.is_enabled():
                data_state["scaler"] = self.scaler.state_dict()
            path = save_checkpoint(
                self.run_dir,
                self.step,
                model=self.net,
                ema={"ema": self.ema, **self.task.weights()},
                optimizer=self.optimizer,
                rng_state=get_rng_state(),
                data_state=data_state,
                config=self.config,
                metrics={"records": len(self.records)},
                keep=self.config["run"]["keep"],
            )
        dist.barrier()
        return path or latest_checkpoint(self.run_dir)

    def resume(self, path: str | Path | None = None) -> bool:
        """Continue from a checkpoint (default: the run's latest); False if there is none."""
        path = path or latest_checkpoint(self.run_dir)
        if path is None:
            return False
        ckpt = load_checkpoint(path)
        self.task.load_state_dict(ckpt.data_state, ckpt)
        restore(ckpt, model=self.net, ema={"ema": self.ema}, optimizer=self.optimizer, rng=False)
        set_rng_state(ckpt.rng_state)
        self.generator.set_state(ckpt.data_state["generator"])
        if self.scaler.is_enabled() and "scaler" in ckpt.data_state:
            self.scaler.load_state_dict(ckpt.data_state["scaler"])
        self.step = ckpt.step
        self.records = read_records(self.run_dir, self.step)
        return True

    def _log(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if dist.is_main():
            write_records(self.run_dir, self.records)
        if self.board is not None:
            log_scalars(self.board, record)

    # ------------------------------------------------------------------ one step

    def autocast_context(self) -> Any:
        """The autocast context of ``precision.autocast`` (nothing for "none")."""
        if self.autocast is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    def _dropout_seed(self) -> int:
        """The global RNG's seed for this step on this rank (it drives dropout)."""
        key = [self.config["run"]["seed"], self.step, self.rank]
        return int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0])

    def train_step(self) -> dict[str, float]:
        """Draw the global batch, accumulate gradients of this rank's slice, clip, guard, update."""
        optim = self.config["optim"]
        batch, accumulate = optim["batch_size"], optim["accumulate"]
        seed = self._dropout_seed()
        torch.default_generator.manual_seed(seed)  # torch.manual_seed also queues lazy device seeds
        if self.device.type == "cuda":
            torch.cuda.manual_seed(seed)
        self.net.train()
        drawn = self.task.batch(batch, self.generator)
        local = slice(self.rank * batch // self.world, (self.rank + 1) * batch // self.world)
        parts = torch.arange(batch // self.world).chunk(accumulate)
        total = 0.0
        for i, part in enumerate(parts):
            rows = torch.arange(batch)[local][part]
            sync = nullcontext() if i == len(parts) - 1 else dist.no_sync(self.model)
            with sync, self.autocast_context():
                losses = self.task.losses(self.model, drawn, rows)
                loss = losses.float().sum() / (batch // self.world)
            self.scaler.scale(loss).backward()
            total += float(loss.detach())
        self.scaler.unscale_(self.optimizer)
        clip = optim["grad_clip"] or math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.net.parameters(), clip))
        total = dist.mean(total)
        lr = self.learning_rate(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if not (math.isfinite(total) and math.isfinite(grad_norm)):
            # fp16 gradients beyond its range at a loss scale >= 1: retry at a smaller scale
            overflow = (
                math.isfinite(total) and self.scaler.is_enabled() and self.scaler.get_scale() >= 1
            )
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            if overflow:
                return {"loss": total, "grad_norm": grad_norm, "overflow": 1.0}
            self.bad_steps += 1
            return {"loss": total, "grad_norm": grad_norm, "skipped": 1.0}
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.net)
        self.bad_steps = 0
        return {"loss": total, "grad_norm": grad_norm, "lr": lr}

    def _rollback(self) -> None:
        """After repeated non-finite steps: back to the last checkpoint with fresh draws. The log
        keeps its events (skips, rollbacks) but drops the records of the abandoned steps."""
        path = latest_checkpoint(self.run_dir)
        failed, bad = self.step + 1, self.bad_steps
        advice = "lower the learning rate or check the data for NaN/inf values"
        if path is None:
            raise ValueError(
                f"{bad} consecutive attempts at step {failed} had a non-finite loss or gradient "
                f"and there is no checkpoint to roll back to: {advice}"
            )
        records, skipped_generator = self.records, self.generator.get_state()
        self.resume(path)
        if self.step == self.rolled_back_to:
            raise ValueError(
                f"training failed again with {bad} non-finite steps in a row at step {failed} "
                f"after rolling back to the checkpoint of step {self.step}: {advice}"
            )
        self.rolled_back_to = self.step
        self.generator.set_state(skipped_generator)  # do not replay the draws that failed
        self.bad_steps = 0
        self.records = [r for r in records if r["step"] <= self.step or "event" in r]
        self._log({"step": failed, "event": f"rolled back to the checkpoint of step {self.step}"})

    # ------------------------------------------------------------------ the loop

    def fit(self) -> bool:
        """Train to ``run.steps`` (or until interrupted, after saving); True when finished, after
        the task's export (``model/``) when this is rank 0."""
        run = self.config["run"]
        if dist.is_main():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_config(self.run_dir / "config.json", self.config)
        dist.barrier()
        if self.progress:
            summary = self.task.describe()
            if summary:
                print(summary, flush=True)
        bar = tqdm(
            total=run["steps"],
            initial=self.step,
            disable=not self.progress,
            unit="step",
            desc=self.task.name,
            dynamic_ncols=True,
        )
        start, start_step = time.perf_counter(), self.step
        if dist.is_main():
            self.board = open_board(self.run_dir, run["tensorboard"], self.step)
        try:
            self.finished = self._loop(bar, start, start_step)
        finally:
            bar.close()
            if self.board is not None:
                self.board.close()
                self.board = None
        if self.finished:
            if dist.is_main():
                self.exported += self.task.export()
            dist.barrier()
        return self.finished

    def _loop(self, bar: tqdm, start: float, start_step: int) -> bool:
        run = self.config["run"]
        with self.interrupt.installed():
            while self.step < run["steps"] and not dist.any_rank(self.interrupt.requested):
                stats = self.train_step()
                if stats.get("overflow"):
                    scale = self.scaler.get_scale()
                    self._log({"step": self.step + 1, "event": f"fp16 overflow, scale {scale}"})
                    continue
                if stats.get("skipped"):
                    self._log({"step": self.step + 1, "event": "skipped non-finite step", **stats})
                    if self.bad_steps >= run["max_bad_steps"]:
                        self._rollback()
                    continue
                self.step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{stats['loss']:.4g}", refresh=False)
                self._periodic(stats, start, start_step)
        if self.step > 0 and (not self.records or self.records[-1].get("checkpoint") != self.step):
            self.save()
        finished = self.step >= run["steps"]
        if not finished and self.progress:
            print(f"interrupted: saved step {self.step} to {self.run_dir}", flush=True)
        return finished

    def _periodic(self, stats: dict[str, float], start: float, start_step: int) -> None:
        run, n = self.config["run"], self.step
        if n % run["log_every"] == 0 or n == run["steps"]:
            rate = (n - start_step) / max(time.perf_counter() - start, 1e-9)
            self._log({"step": n, **stats, "steps_per_s": rate, **self.task.fields(stats)})
        metrics = self.task.evaluate(n)
        if metrics:
            self._log({"step": n, **metrics})
        if self.task.end_of_step(n):
            self._new_optimizer()
        if n % run["checkpoint_every"] == 0 or n == run["steps"]:
            self.save()
            self._log({"step": n, "checkpoint": n})


def _command(task: Task, source: str, overrides: Iterable[str] = ()) -> str:
    """The command line that runs ``task`` from config ``source`` (for the training record)."""
    words = task.cli or (f"{type(task).__module__}.{type(task).__name__}",)
    return shlex.join([*words, "--config", source, *overrides])


def run(
    task: Task,
    config: str | Path | dict[str, Any],
    overrides: list[str] | tuple[str, ...] = (),
    run_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    trainer: Callable[..., Trainer] = Trainer,
) -> Trainer:
    """Train ``task`` from a TOML/JSON config file (or a dict) with ``section.key=value``
    overrides over the task's defaults, resuming the run folder's latest checkpoint when there is
    one; a finished run ends with the task's export (``model/``). Returns the trainer after ``fit``
    (``trainer.finished`` says whether it ran to the end, ``trainer.exported`` lists the folders
    written). ``trainer``: the class (or factory) called as ``trainer(config, run_dir=...,
    progress=..., task=task, command=...)``. Under torchrun every process calls it."""
    full = load_config(config, overrides, task.defaults, task.free)
    command = _command(task, "<dict>" if isinstance(config, dict) else str(config), overrides)
    with dist.initialized():
        t = trainer(full, run_dir=run_dir, progress=progress, task=task, command=command)
        if resume:
            t.resume()
        t.fit()
        return t


def train(
    config: str | Path | dict[str, Any],
    overrides: list[str] | tuple[str, ...] = (),
    run_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
) -> Trainer:
    """Train a diffusion model (the denoising task) from a TOML/JSON config file (or a dict) with
    ``section.key=value`` overrides; resumes the run folder's latest checkpoint when there is one,
    and a finished run writes ``model/``, which ``difflab.load`` opens. Returns the trainer."""
    from difflab.training.denoising import Denoising

    return run(Denoising(), config, overrides, run_dir, resume, progress)
