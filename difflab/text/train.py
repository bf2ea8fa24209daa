"""Training text models: ``difflab text train --config configs/text_shakespeare.toml [key=value ...]``.

A masked diffusion model minimizes the MDLM negative ELBO per token (:func:`nelbo`, antithetic
times); an autoregressive one the next-token cross-entropy. AdamW with warm-up + cosine learning rate
(:class:`difflab.training.lr.LRSchedule`), gradient clipping, an EMA of the weights
(:class:`difflab.training.ema.EMA`), crash-safe checkpoints that resume exactly
(:mod:`difflab.training.checkpoint`), ``metrics.jsonl`` and, at the end, ``model/`` (EMA weights).
"""

from __future__ import annotations

import math
import shlex
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from difflab.core.tensors import unknown_name
from difflab.text.data import CharTokenizer, TokenData, load_tokens, shakespeare
from difflab.text.diffusion import autoregressive_nll, nelbo
from difflab.text.model import KINDS, save_text_model
from difflab.text.schedules import get as get_schedule
from difflab.text.transformer import Transformer
from difflab.training.checkpoint import latest_checkpoint, load_checkpoint, restore, save_checkpoint
from difflab.training.config import load_config, merge_defaults
from difflab.training.ema import EMA
from difflab.training.lr import LRSchedule
from difflab.training.records import read_records, write_records
from difflab.utils.weights import write_config

__all__ = ["DEFAULTS", "TextTrainer", "train"]

DEFAULTS: dict[str, dict[str, Any]] = {
    "run": {
        "name": "text",
        "out": "runs",
        "seed": 0,
        "steps": 2000,
        "log_every": 50,
        "checkpoint_every": 250,
        "eval_every": 0,
        "eval_batches": 4,
        "threads": 1,
        "keep": 2,
    },
    "data": {"name": "shakespeare", "path": "", "vocab_size": 0, "val_fraction": 0.1},
    "model": {
        "kind": "masked",
        "context": 256,
        "dim": 128,
        "depth": 4,
        "heads": 4,
        "mlp_ratio": 4.0,
        "dropout": 0.0,
    },
    "objective": {"schedule": "log_linear"},
    "optim": {
        "lr": 1e-3,
        "betas": [0.9, 0.99],
        "weight_decay": 0.0,
        "batch_size": 16,
        "grad_clip": 1.0,
        "schedule": "cosine",
        "warmup": 100,
        "min_factor": 0.1,
    },
    "ema": {"kind": "constant", "decay": 0.999, "sigma_rel": 0.05},
    "sample": {"sampler": "first_hitting", "steps": 256, "length": 256},
}


def _data(config: dict[str, Any], split: str) -> tuple[TokenData, CharTokenizer | None]:
    data = config["data"]
    if data["path"]:
        if data["vocab_size"] < 1:
            raise ValueError("data.path needs data.vocab_size, the number of token ids")
        return load_tokens(data["path"], data["vocab_size"], split, data["val_fraction"]), None
    if data["name"] != "shakespeare":
        raise unknown_name("text data set", str(data["name"]), ["shakespeare"])
    return shakespeare(split)


class TextTrainer:
    """A training run of a masked diffusion or autoregressive transformer from a full config."""

    def __init__(
        self, config: dict[str, Any], run_dir: str | Path | None = None, progress: bool = True
    ) -> None:
        self.config, self.progress = config, progress
        run, optim, net = config["run"], config["optim"], config["model"]
        if net["kind"] not in KINDS:
            raise unknown_name("model.kind", str(net["kind"]), KINDS)
        self.kind = net["kind"]
        self.schedule = get_schedule(config["objective"]["schedule"])
        if run["threads"]:
            torch.set_num_threads(int(run["threads"]))
        self.run_dir = Path(run_dir or Path(run["out"]) / run["name"])
        self.data, self.tokenizer = _data(config, "train")
        self.val = _data(config, "val")[0] if run["eval_every"] else None
        torch.manual_seed(run["seed"])
        options = {k: v for k, v in net.items() if k != "kind"}
        self.net = Transformer(
            vocab_size=self.data.vocab_size, causal=self.kind == "autoregressive", **options
        )
        self.context = self.net.context
        self.data.check_length(self.context)
        self.ema = EMA(self.net, **config["ema"])
        self.optimizer = torch.optim.AdamW(
            self.net.parameters(),
            lr=optim["lr"],
            betas=tuple(optim["betas"]),
            weight_decay=optim["weight_decay"],
        )
        self.lr = LRSchedule(optim["schedule"], optim["warmup"], run["steps"], optim["min_factor"])
        self.generator = torch.Generator().manual_seed(run["seed"] + 1)
        self.step, self.records = 0, []

    def loss(
        self, network: torch.nn.Module, x0: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """Nats per token: the negative ELBO (masked) or the cross-entropy (autoregressive), [B]."""
        if self.kind == "autoregressive":
            return autoregressive_nll(network, x0).mean(1)
        return nelbo(network, x0, self.schedule, generator=generator) / x0.shape[1]

    def train_step(self) -> dict[str, float]:
        optim = self.config["optim"]
        seed = np.random.SeedSequence([self.config["run"]["seed"], self.step]).generate_state(1)[0]
        torch.manual_seed(int(seed))  # dropout masks: a function of (seed, step), nothing to save
        self.net.train()
        x0 = self.data.batch(optim["batch_size"], self.context, self.generator)
        loss = self.loss(self.net, x0, self.generator).float().mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), optim["grad_clip"] or math.inf)
        )
        lr = optim["lr"] * self.lr(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if not (math.isfinite(loss.item()) and math.isfinite(grad_norm)):
            raise ValueError(f"non-finite loss or gradient at step {self.step + 1}: lower optim.lr")
        self.optimizer.step()
        self.ema.update(self.net)
        return {"bits_per_token": loss.item() / math.log(2), "grad_norm": grad_norm, "lr": lr}

    @torch.no_grad()
    def evaluate(self) -> float:
        """Held-out bits per token of the EMA network on the first ``eval_batches`` batches of
        consecutive windows, with fixed draws (the same every time)."""
        run, batch = self.config["run"], self.config["optim"]["batch_size"]
        windows = self.val.windows(self.context)[: run["eval_batches"] * batch]
        g = torch.Generator().manual_seed(run["seed"] + 2)
        losses = [self.loss(self.ema.model, x, g) for x in windows.split(batch)]
        return float(torch.cat(losses).mean()) / math.log(2)

    def save(self) -> None:
        save_checkpoint(
            self.run_dir,
            self.step,
            model=self.net,
            ema={"ema": self.ema},
            optimizer=self.optimizer,
            data_state={"generator": self.generator.get_state()},
            config=self.config,
            keep=self.config["run"]["keep"],
        )

    def resume(self) -> bool:
        """Continue from the run's latest checkpoint; False when there is none."""
        path = latest_checkpoint(self.run_dir)
        if path is None:
            return False
        ckpt = load_checkpoint(path)
        restore(ckpt, model=self.net, ema={"ema": self.ema}, optimizer=self.optimizer)
        self.generator.set_state(ckpt.data_state["generator"])
        self.step = ckpt.step
        self.records = read_records(self.run_dir, self.step)
        return True

    def _log(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        write_records(self.run_dir, self.records)

    def fit(self) -> bool:
        """Train to ``run.steps``; Ctrl-C saves a checkpoint first. True when finished."""
        run = self.config["run"]
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_config(self.run_dir / "config.json", self.config)
        params = sum(p.numel() for p in self.net.parameters())
        bar = tqdm(
            total=run["steps"],
            initial=self.step,
            disable=not self.progress,
            unit="step",
            desc=f"{self.kind} {params / 1e6:.2f}M",
            dynamic_ncols=True,
        )
        start, start_step = time.perf_counter(), self.step
        try:
            while self.step < run["steps"]:
                stats = self.train_step()
                self.step += 1
                bar.update(1)
                bar.set_postfix(bits=f"{stats['bits_per_token']:.3f}", refresh=False)
                n = self.step
                if n % run["log_every"] == 0 or n == run["steps"]:
                    rate = (n - start_step) / max(time.perf_counter() - start, 1e-9)
                    self._log({"step": n, **stats, "steps_per_s": rate})
                if run["eval_every"] and (n % run["eval_every"] == 0 or n == run["steps"]):
                    self._log({"step": n, "val_bits_per_token": self.evaluate()})
                if n % run["checkpoint_every"] == 0 or n == run["steps"]:
                    self.save()
        except KeyboardInterrupt:
            if self.step > 0:
                self.save()
            raise
        finally:
            bar.close()
        return True

    def export(self, command: str) -> Path:
        """``run_dir/model``: the EMA network, its tokenizer and how to retrain it."""
        return save_text_model(
            self.run_dir / "model",
            self.ema.model,
            kind=self.kind,
            schedule=self.schedule.name,
            tokenizer=self.tokenizer,
            sample=self.config["sample"],
            training={"config": self.config, "steps": self.step, "command": command},
        )


def train(
    config: str | Path | dict[str, Any],
    overrides: list[str] | tuple[str, ...] = (),
    run_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
) -> TextTrainer:
    """Train from a TOML/JSON config (or a dict) with ``section.key=value`` overrides, resuming the
    run's latest checkpoint; exports ``model/`` when finished. Returns the trainer."""
    if isinstance(config, dict):
        from difflab.training.config import apply_overrides

        full = merge_defaults(apply_overrides(config, overrides), DEFAULTS, ())
    else:
        full = load_config(config, overrides, DEFAULTS, ())
    trainer = TextTrainer(full, run_dir, progress)
    if resume:
        trainer.resume()
    trainer.fit()
    source = config if not isinstance(config, dict) else "<dict>"
    command = shlex.join(["difflab", "text", "train", "--config", str(source), *overrides])
    trainer.export(command)
    return trainer
