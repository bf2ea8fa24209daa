"""The training loop: AdamW, warm-up and cosine/constant learning rates, gradient clipping and
accumulation, EMA, autocast, NaN guards, periodic samples and validation, crash-safe checkpoints that
resume bit-identically, and data-parallel training with torchrun (DDP).

One step at global batch B: every rank draws the same B indices, noise levels, noises and label
dropouts from the run's generator, then computes the loss of its own B / world slice; DDP averages the
gradients. So a run's result does not depend on the number of processes, up to float rounding.
Dropout masks come from the global RNG, seeded at each step from (seed, step, rank): they need no
saved state and differ across ranks.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from difflab import data as datasets
from difflab import models
from difflab.core import processes
from difflab.core.tensors import check_name
from difflab.data import Dataset
from difflab.training import distributed as dist
from difflab.training.board import log_scalars, open_board
from difflab.training.checkpoint import (
    get_rng_state,
    latest_checkpoint,
    load_checkpoint,
    restore,
    save_checkpoint,
    set_rng_state,
)
from difflab.training.config import load_config
from difflab.training.ema import EMA
from difflab.training.lr import LRSchedule
from difflab.training.objectives import Objective, denoising_loss
from difflab.training.preview import preview
from difflab.training.records import read_records, write_records
from difflab.utils.weights import write_config

__all__ = ["AUTOCAST", "DataOrder", "Trainer", "train"]

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


def _for_network(data: Dataset, net: nn.Module) -> Dataset:
    """The data set as the network sees it: without labels for an unconditional network."""
    classes = int(getattr(net, "num_classes", 0))
    if classes == 0:
        return data if data.labels is None else Dataset(data.x, name=data.name)
    if data.labels is None:
        raise ValueError(
            f"the network is class-conditional (num_classes={classes}) but data set {data.name!r} "
            "has no labels: set model.num_classes = 0"
        )
    if data.num_classes > classes:
        raise ValueError(
            f"data set {data.name!r} has {data.num_classes} classes but the network "
            f"{classes} (model.num_classes)"
        )
    return data


def _objective(config: dict[str, Any]) -> Objective:
    config = dict(config)
    process = config.get("process", "vp_cosine")
    config["process"] = processes.get(process).config() if isinstance(process, str) else process
    return Objective.from_config(config)


class _Interrupt:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint at the end of the step and stops.
    A second signal acts as it would without the loop (Ctrl-C twice stops at once)."""

    def __init__(self) -> None:
        self.requested = False

    @contextmanager
    def installed(self) -> Iterator[None]:
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
    """A training run from a full configuration (see :mod:`difflab.training.config`).

    The run folder holds ``config.json``, ``checkpoints/``, ``metrics.jsonl``, ``samples/`` and, at the
    end, ``model/`` (EMA weights + config: a model directory that ``difflab.load`` opens).
    """

    def __init__(
        self, config: dict[str, Any], run_dir: str | Path | None = None, progress: bool = True
    ) -> None:
        self.config = config
        run, optim = config["run"], config["optim"]
        self.rank, self.world = dist.rank(), dist.world_size()
        self.device = dist.device()
        if run["threads"]:
            torch.set_num_threads(int(run["threads"]))
        self.run_dir = Path(run_dir or Path(run["out"]) / run["name"])
        self.progress = progress and dist.is_main()

        data_options = {
            k: v for k, v in config["data"].items() if k not in ("name", "split", "val_split")
        }
        self.data = datasets.load(
            config["data"]["name"], split=config["data"]["split"], **data_options
        )
        self.val_data = (
            datasets.load(config["data"]["name"], split=config["data"]["val_split"], **data_options)
            if run["val_every"]
            else None
        )
        self.objective = _objective(config["objective"])

        torch.manual_seed(run["seed"])  # network initialization
        self.net = models.build(config["model"]).to(self.device)
        self.data = _for_network(self.data, self.net)
        if self.val_data is not None:
            self.val_data = _for_network(self.val_data, self.net)
        self.channels_last = bool(config["precision"]["channels_last"]) and self.data.x.ndim == 4
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        check_name("autocast precision", config["precision"]["autocast"], AUTOCAST)
        self.autocast = AUTOCAST[config["precision"]["autocast"]]
        # fp16 needs loss scaling against gradient underflow (Micikevicius et al. 2018); bf16 not
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.autocast is torch.float16)
        self.ema = EMA(self.net, **config["ema"])
        self.model = dist.wrap(self.net)
        self.optimizer = torch.optim.AdamW(
            self.net.parameters(),
            lr=optim["lr"],
            betas=tuple(optim["betas"]),
            eps=optim["eps"],
            weight_decay=optim["weight_decay"],
            foreach=True,
        )
        self.lr = LRSchedule(optim["schedule"], optim["warmup"], run["steps"], optim["min_factor"])
        batch, accumulate = optim["batch_size"], optim["accumulate"]
        if batch % (self.world * accumulate):
            raise ValueError(
                f"batch_size {batch} must divide evenly into {self.world} processes x "
                f"{accumulate} accumulation steps"
            )
        self.order = DataOrder(len(self.data), run["seed"])
        self.generator = torch.Generator().manual_seed(run["seed"] + 1)
        self.step, self.bad_steps, self.records = 0, 0, []
        if run["max_bad_steps"] < 1:
            raise ValueError(f"run.max_bad_steps must be >= 1, got {run['max_bad_steps']}")
        self.rolled_back_to: int | None = None  # the checkpoint step of the last rollback
        self.finished = False
        self.interrupt = _Interrupt()
        self.board: Any = None  # TensorBoard writer while fit() runs (rank 0, when enabled)

    # ------------------------------------------------------------------ state

    def _data_state(self) -> dict[str, Any]:
        state = {"order": self.order.state_dict(), "generator": self.generator.get_state()}
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        return state

    def save(self) -> Path:
        """A checkpoint of everything the run needs to continue exactly (rank 0 writes)."""
        path = None
        if dist.is_main():
            path = save_checkpoint(
                self.run_dir,
                self.step,
                model=self.net,
                ema={"ema": self.ema},
                optimizer=self.optimizer,
                rng_state=get_rng_state(),
                data_state=self._data_state(),
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
        restore(ckpt, model=self.net, ema={"ema": self.ema}, optimizer=self.optimizer, rng=False)
        set_rng_state(ckpt.rng_state)
        self.order.load_state_dict(ckpt.data_state["order"])
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

    def _autocast(self) -> Any:
        if self.autocast is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    def _to_device(self, x: Tensor) -> Tensor:
        x = x.to(self.device)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

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
        x0, labels = self.data[self.order.next(batch)]
        draw = self.objective.draw(x0, labels, self.generator)
        local = slice(self.rank * batch // self.world, (self.rank + 1) * batch // self.world)
        parts = torch.arange(batch // self.world).chunk(accumulate)
        den = self.objective.denoiser(self.model)
        total = 0.0
        for i, part in enumerate(parts):
            rows = torch.arange(batch)[local][part]
            cond = {} if draw.labels is None else {"labels": draw.labels[rows].to(self.device)}
            sync = nullcontext() if i == len(parts) - 1 else dist.no_sync(self.model)
            with sync, self._autocast():
                losses = denoising_loss(
                    den,
                    self._to_device(x0[rows]),
                    self._to_device(draw.eps[rows]),
                    draw.sigma[rows].to(self.device),
                    self.objective.weighting,
                    **cond,
                )
                loss = losses.float().sum() / (batch // self.world)
            self.scaler.scale(loss).backward()
            total += float(loss.detach())
        self.scaler.unscale_(self.optimizer)
        clip = optim["grad_clip"] or math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.net.parameters(), clip))
        total = dist.mean(total)
        factor = self.lr(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = optim["lr"] * factor
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
        return {"loss": total, "grad_norm": grad_norm, "lr": optim["lr"] * factor}

    @torch.no_grad()
    def validation_loss(self) -> float:
        """EMA model's loss on the held-out split with fixed draws (the same every time)."""
        run, batch = self.config["run"], self.config["optim"]["batch_size"]
        generator = torch.Generator().manual_seed(run["seed"] + 2)
        den = self.objective.denoiser(self.ema.model)
        losses = []
        for i in range(run["val_batches"]):
            idx = torch.arange(i * batch, (i + 1) * batch) % len(self.val_data)
            x0, labels = self.val_data[idx]
            draw = self.objective.draw(x0, labels, generator)
            cond = {} if labels is None else {"labels": labels.to(self.device)}
            with self._autocast():
                loss = denoising_loss(
                    den,
                    self._to_device(x0),
                    self._to_device(draw.eps),
                    draw.sigma.to(self.device),
                    self.objective.weighting,
                    **cond,
                )
            losses.append(loss.float().mean())
        return float(torch.stack(losses).mean())

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
        """Train to ``run.steps`` (or until interrupted, after saving); True when finished."""
        run = self.config["run"]
        if dist.is_main():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_config(self.run_dir / "config.json", self.config)
        dist.barrier()
        if self.progress:
            print(models.summary(self.net, self.data.shape), flush=True)
        bar = tqdm(
            total=run["steps"],
            initial=self.step,
            disable=not self.progress,
            unit="step",
            dynamic_ncols=True,
        )
        start, start_step = time.perf_counter(), self.step
        if dist.is_main():
            self.board = open_board(self.run_dir, run["tensorboard"], self.step)
        try:
            return self._loop(bar, start, start_step)
        finally:
            if self.board is not None:
                self.board.close()
                self.board = None

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
                bar.set_postfix(loss=f"{stats['loss']:.4f}", refresh=False)
                self._periodic(stats, start, start_step)
        bar.close()
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
            self._log({"step": n, **stats, "steps_per_s": rate, "epoch": self.order.epoch})
        if run["val_every"] and n % run["val_every"] == 0:
            self._log({"step": n, "val_loss": self.validation_loss()})
        if run["sample_every"] and n % run["sample_every"] == 0 and dist.is_main():
            preview(
                self.denoiser(),
                self.data,
                self.config["sample"],
                self.objective.process,
                self.run_dir / "samples" / f"step_{n:07d}.png",
                self.device,
            )
        if n % run["checkpoint_every"] == 0 or n == run["steps"]:
            self.save()
            self._log({"step": n, "checkpoint": n})

    def denoiser(self) -> nn.Module:
        """The EMA network wrapped as a difflab denoiser (what sampling uses)."""
        return self.objective.denoiser(self.ema.model)


def train(
    config: str | Path | dict[str, Any],
    overrides: list[str] | tuple[str, ...] = (),
    run_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
) -> Trainer:
    """Train from a TOML/JSON config file (or a dict) with ``section.key=value`` overrides;
    resumes the run folder's latest checkpoint when there is one. Returns the trainer after
    ``fit`` (``trainer.finished`` says whether it ran to the end)."""
    if isinstance(config, dict):
        from difflab.training.config import apply_overrides, merge_defaults

        full = merge_defaults(apply_overrides(config, overrides))
    else:
        full = load_config(config, overrides)
    with dist.initialized():
        trainer = Trainer(full, run_dir, progress)
        if resume:
            trainer.resume()
        trainer.finished = trainer.fit()
        return trainer
