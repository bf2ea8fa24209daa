"""Training text models: ``difflab text train --config configs/text_shakespeare.toml [key=value ...]``
or :func:`train` from Python.

The text task of the one training loop (:class:`difflab.training.loop.Trainer`, which owns AdamW,
the learning-rate schedule, clipping, accumulation, the EMA, autocast, non-finite guards, crash-safe
checkpoints that resume exactly, ``metrics.jsonl`` and DDP): a masked diffusion model minimizes the
MDLM negative ELBO per token (:func:`~difflab.text.diffusion.nelbo`, antithetic times, the masking
schedule of ``objective.schedule``); a uniform-state one (``model.kind = "uniform"``) its
continuous-time negative ELBO (:func:`~difflab.text.uniform.uniform_nelbo`, the same schedules as
alpha_t, a network that takes the noise level); an autoregressive one the next-token cross-entropy.
The loss
is in nats per token; step records add ``bits_per_token``, evaluations (``run.eval_every``) the EMA
network's held-out ``val_bits_per_token``. The finished run ends with ``model/`` (EMA weights, type
"text"), which :func:`difflab.text.load` opens.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from difflab.core.tensors import unknown_name
from difflab.text.data import CharTokenizer, TokenData, load_tokens, shakespeare
from difflab.text.diffusion import autoregressive_nll, draw_masks, masked_nelbo, nelbo
from difflab.text.masking import get as get_masking
from difflab.text.model import KINDS, save_text_model
from difflab.text.transformer import Transformer
from difflab.text.uniform import draw_corruption, prior_kl, uniform_nelbo, uniform_nelbo_terms
from difflab.training.config import LOOP_DEFAULTS, extend
from difflab.training.loop import Task, Trainer, run

__all__ = ["DEFAULTS", "TextTask", "TextTrainer", "train"]

DEFAULTS: dict[str, dict[str, Any]] = extend(
    LOOP_DEFAULTS,
    {
        "run": {
            "name": "text",
            "steps": 2000,
            "log_every": 50,
            "checkpoint_every": 250,
            "eval_every": 0,
            "eval_batches": 4,
            "threads": 1,
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
        # the schedule alpha_t (difflab.text.masking) of masked or uniform-state diffusion
        "objective": {"schedule": "log_linear"},
        "optim": {
            "lr": 1e-3,
            "betas": [0.9, 0.99],
            "batch_size": 16,
            "schedule": "cosine",
            "warmup": 100,
            "min_factor": 0.1,
        },
        "ema": {"kind": "constant", "decay": 0.999},
        "sample": {"sampler": "first_hitting", "steps": 256, "length": 256},
    },
)


def _data(config: dict[str, Any], split: str) -> tuple[TokenData, CharTokenizer | None]:
    data = config["data"]
    if data["path"]:
        if data["vocab_size"] < 1:
            raise ValueError("data.path needs data.vocab_size, the number of token ids")
        return load_tokens(data["path"], data["vocab_size"], split, data["val_fraction"]), None
    if data["name"] != "shakespeare":
        raise unknown_name("text data set", str(data["name"]), ["shakespeare"])
    return shakespeare(split)


class TextTask(Task):
    """A masked or uniform-state diffusion transformer or an autoregressive one on token windows
    (the config of :data:`DEFAULTS`; ``model.kind`` picks)."""

    name = "text"
    cli = ("difflab", "text", "train")
    defaults = DEFAULTS

    def build(self) -> nn.Module:
        config = self.trainer.config
        net = config["model"]
        if net["kind"] not in KINDS:
            raise unknown_name("model.kind", str(net["kind"]), KINDS)
        self.kind = net["kind"]
        self.masking = get_masking(config["objective"]["schedule"])
        self.data, self.tokenizer = _data(config, "train")
        self.val = _data(config, "val")[0] if config["run"]["eval_every"] else None
        options = {k: v for k, v in net.items() if k != "kind"}
        network = Transformer(
            vocab_size=self.data.vocab_size,
            causal=self.kind == "autoregressive",
            level=self.kind == "uniform",
            **options,
        )
        self.vocab, self.context = network.vocab_size, network.context
        self.data.check_length(self.context)
        return network

    def batch(self, size: int, generator: torch.Generator) -> tuple[Tensor, ...]:
        """Windows x0, and for diffusion their times t and noised z_t (masked or resampled)."""
        x0 = self.data.batch(size, self.context, generator)
        if self.kind == "autoregressive":
            return (x0,)
        draw = draw_corruption if self.kind == "uniform" else draw_masks
        return (x0, *draw(x0, self.masking, self.vocab, generator=generator))

    def losses(self, network: nn.Module, batch: tuple[Tensor, ...], rows: Tensor) -> Tensor:
        """Nats per token: the negative ELBO (masked, uniform) or the cross-entropy
        (autoregressive)."""
        device = self.trainer.device
        x0 = batch[0][rows].to(device)
        if self.kind == "autoregressive":
            return autoregressive_nll(network, x0, self.vocab).mean(1)
        t, z = batch[1][rows].to(device), batch[2][rows].to(device)
        if self.kind == "uniform":
            logits = network(z, self.masking.alpha(t))
            terms = uniform_nelbo_terms(logits, x0, z, t, self.masking)
            return terms / x0.shape[1] + prior_kl(self.masking, self.vocab)
        return masked_nelbo(network, x0, z, t, self.masking, self.vocab) / x0.shape[1]

    def loss(self, network: nn.Module, x0: Tensor, generator: torch.Generator) -> Tensor:
        """Nats per token of each sequence x0 [B] under ``network`` (draws from ``generator``)."""
        if self.kind == "autoregressive":
            return autoregressive_nll(network, x0).mean(1)
        if self.kind == "uniform":
            return uniform_nelbo(network, x0, self.masking, generator=generator) / x0.shape[1]
        return nelbo(network, x0, self.masking, generator=generator) / x0.shape[1]

    def fields(self, stats: dict[str, float]) -> dict[str, Any]:
        return {"bits_per_token": stats["loss"] / math.log(2)}

    def evaluate(self, step: int) -> dict[str, float]:
        run = self.trainer.config["run"]
        if run["eval_every"] and (step % run["eval_every"] == 0 or step == run["steps"]):
            return {"val_bits_per_token": self.held_out_bits()}
        return {}

    @torch.no_grad()
    def held_out_bits(self) -> float:
        """Held-out bits per token of the EMA network on the first ``eval_batches`` batches of
        consecutive windows, with fixed draws (the same every time)."""
        run, batch = self.trainer.config["run"], self.trainer.config["optim"]["batch_size"]
        windows = self.val.windows(self.context)[: run["eval_batches"] * batch]
        g = torch.Generator().manual_seed(run["seed"] + 2)
        ema, device = self.trainer.ema.model, self.trainer.device
        with self.trainer.autocast_context():
            losses = [self.loss(ema, x.to(device), g) for x in windows.split(batch)]
        return float(torch.cat(losses).mean()) / math.log(2)

    def describe(self) -> str:
        params = sum(p.numel() for p in self.trainer.net.parameters())
        return f"{self.kind} transformer: {params:,} parameters, context {self.context}"

    def export(self) -> list[Path]:
        """``model/``: the EMA network, its tokenizer, masking schedule, sampling defaults and how
        it was trained."""
        t = self.trainer
        folder = save_text_model(
            t.run_dir / "model",
            t.ema.model,
            kind=self.kind,
            schedule=self.masking.name,
            tokenizer=self.tokenizer,
            sample=t.config["sample"],
            training=t.record,
        )
        return [folder]


class TextTrainer(Trainer):
    """The training loop running a :class:`TextTask` from a full config (:data:`DEFAULTS` filled
    in)."""

    def default_task(self) -> TextTask:
        return TextTask()


def train(
    config: str | Path | dict[str, Any],
    overrides: list[str] | tuple[str, ...] = (),
    run_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
) -> TextTrainer:
    """Train from a TOML/JSON config (or a dict) with ``section.key=value`` overrides, resuming the
    run's latest checkpoint; a finished run ends with ``model/``. Returns the trainer."""
    return run(TextTask(), config, overrides, run_dir, resume, progress, TextTrainer)
