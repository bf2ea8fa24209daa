"""Saved text models: ``model.safetensors`` + ``config.json``, the one model-folder format of
:mod:`difflab.utils.folder` with type "text" (version-1 folders, format "difflab text model", load
too), shipped in ``difflab/pretrained/<name>/`` ("shakespeare": masked diffusion;
"shakespeare_ar": its autoregressive baseline and judge) or in any folder. A model's ``kind`` is
"masked" (absorbing-state diffusion), "uniform" (uniform-state diffusion,
:mod:`difflab.text.uniform`) or "autoregressive".

    model = difflab.text.load("shakespeare")
    texts = model.generate(8, length=256, sampler="first_hitting", seed=0)
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from difflab.core.counting import CountingDenoiser
from difflab.core.tensors import unknown_name
from difflab.sampling.noise import generators
from difflab.text import samplers
from difflab.text.data import CharTokenizer
from difflab.text.diffusion import autoregressive_nll, nelbo
from difflab.text.guidance import PromptGuidance
from difflab.text.transformer import Transformer
from difflab.text.uniform import uniform_nelbo
from difflab.utils.folder import (
    CONFIG,
    WEIGHTS,
    folder_name,
    is_model_folder,
    read_folder_config,
    read_folder_weights,
    save_folder,
)
from difflab.utils.weights import load_state_dict_strict

__all__ = ["KINDS", "TYPE", "Generated", "TextModel", "available", "load", "save_text_model"]

TYPE = "text"  # the model-folder type (difflab.utils.folder)
KINDS = ("masked", "uniform", "autoregressive")
DEFAULT_SAMPLER = {"masked": "first_hitting", "uniform": "uniform_ancestral"}
SHIPPED = Path(__file__).resolve().parent.parent / "pretrained"


def save_text_model(
    folder: str | os.PathLike[str],
    network: Transformer,
    *,
    kind: str,
    schedule: str = "log_linear",
    tokenizer: CharTokenizer | None = None,
    sample: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
) -> Path:
    """Write the model folder (type "text") through :func:`difflab.utils.folder.save_folder`:
    ``model.safetensors`` and ``config.json`` (kind, network, schedule, tokenizer, sample defaults,
    training record), each atomically."""
    if kind not in KINDS:
        raise unknown_name("text model kind", kind, KINDS)
    if network.causal != (kind == "autoregressive"):
        need = "causal" if kind == "autoregressive" else "bidirectional"
        raise ValueError(f"a {kind} model needs a {need} network")
    if (network.level is not None) != (kind == "uniform"):
        need = "takes" if kind == "uniform" else "takes no"
        raise ValueError(f"a {kind} model needs a network that {need} a noise level (level=...)")
    config = {
        "type": TYPE,
        "kind": kind,
        "network": network.config,
        "schedule": schedule,
        "tokenizer": {"chars": tokenizer.chars} if tokenizer is not None else None,
        "sample": dict(sample or {}),
        "training": dict(training or {}),
    }
    return save_folder(folder, config, network.state_dict())


@dataclass
class Generated:
    """Samples [n, length] (token ids), their texts when the model has a tokenizer, the network
    rows evaluated (NFE summed over samples) and the wall time."""

    tokens: Tensor
    texts: list[str] | None
    network_rows: int
    seconds: float


class TextModel:
    """A trained text model: a masked or uniform-state diffusion model (``kind`` "masked",
    "uniform") or an autoregressive one."""

    def __init__(
        self, config: dict[str, Any], network: Transformer, folder: Path | None = None
    ) -> None:
        self.config, self.folder = config, folder
        self.network = network.eval().requires_grad_(False)
        self.kind = config["kind"]
        chars = (config.get("tokenizer") or {}).get("chars")
        self.tokenizer = CharTokenizer(chars) if chars else None

    @classmethod
    def from_folder(
        cls, folder: str | os.PathLike[str], device: str | torch.device = "cpu"
    ) -> TextModel:
        """Build the transformer from ``folder/config.json`` and load its weights strictly."""
        folder = Path(folder)
        config = read_folder_config(folder, TYPE)
        if config.get("kind") not in KINDS:
            raise unknown_name(
                f"text model kind in {folder / CONFIG}", str(config.get("kind")), KINDS
            )
        try:
            network = Transformer(**config["network"])
        except (TypeError, ValueError, KeyError) as e:
            raise ValueError(f"{folder / CONFIG}: cannot build its network: {e}") from None
        load_state_dict_strict(network, read_folder_weights(folder), source=str(folder / WEIGHTS))
        return cls(config, network.to(device), folder)

    @property
    def name(self) -> str:
        """The folder's name ("shakespeare"), its run's for ``<run>/model``, or "model"."""
        return "model" if self.folder is None else folder_name(self.folder)

    @property
    def context(self) -> int:
        """The longest sequence the network takes."""
        return self.network.context

    @property
    def vocab_size(self) -> int:
        return self.network.vocab_size

    @property
    def schedule(self) -> str:
        """The schedule alpha_t it was trained with (the default of samplers and the ELBO)."""
        return self.config.get("schedule", "log_linear")

    def nll(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Nats per sequence [B]: exact -log p(x) (autoregressive) or a one-sample estimate of the
        negative ELBO >= -log p(x) (masked, uniform; average several for a tight estimate)."""
        with torch.no_grad():
            if self.kind == "autoregressive":
                return autoregressive_nll(self.network, x).double().sum(1)
            if self.kind == "uniform":
                return uniform_nelbo(self.network, x, self.schedule, generator=generator)
            return nelbo(self.network, x, self.schedule, generator=generator)

    def generate(
        self,
        n: int,
        length: int | None = None,
        *,
        sampler: str | None = None,
        steps: int | None = None,
        seed: int = 0,
        batch_size: int = 64,
        prompt: str | Tensor | None = None,
        guidance: float = 1.0,
        **options: Any,
    ) -> Generated:
        """n samples of ``length`` tokens (default: the context) from all masks, or continuing the
        ``prompt`` (its tokens are given, never resampled); sample i draws from its own generator
        seeded by (seed, i), so it does not depend on n or ``batch_size``. ``sampler`` defaults to
        first_hitting (masked) or uniform_ancestral (uniform); ``steps`` to ``length`` (one token
        per step); ``guidance`` w != 1 is classifier-free guidance by the prompt
        (:class:`~difflab.text.guidance.PromptGuidance`, masked models); options go to the sampler
        (``temperature``, ``schedule``, ``block``, ``inner``, ``threshold``, ``remasking``, ...)."""
        if self.kind not in DEFAULT_SAMPLER:
            raise ValueError(
                f"{self.name} is an autoregressive model; sampling needs a diffusion model"
            )
        for what, value in (("n", n), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{what} must be a positive integer, got {value!r}")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        length = self.context if length is None else length
        if (
            isinstance(length, bool)
            or not isinstance(length, int)
            or not 1 <= length <= self.context
        ):
            raise ValueError(
                f"length must be an integer in 1..{self.context} (the model's context), got {length!r}"
            )
        sampler = DEFAULT_SAMPLER[self.kind] if sampler is None else sampler
        run = samplers.get(sampler)
        if samplers.process(sampler) != self.kind:
            raise ValueError(
                f"sampler {sampler!r} samples {samplers.process(sampler)} diffusion models; "
                f"{self.name} is a {self.kind} one: use {', '.join(samplers.available(self.kind))}"
            )
        steps = length if steps is None else steps
        target = options.get("inner", "first_hitting") if sampler == "semi_ar" else sampler
        if (
            "schedule" not in options
            and sampler != "confidence"
            and samplers.accepts(target, "schedule")
        ):
            options["schedule"] = self.schedule
        start = torch.full((length,), self.vocab_size, dtype=torch.long)
        if prompt is not None:
            given = self._encode(prompt)
            if len(given) > length:
                raise ValueError(
                    f"the prompt has {len(given)} tokens, more than the {length} to generate"
                    + (" (the model's context)" if length == self.context else "")
                )
            start[: len(given)] = given
        if guidance != 1 and (prompt is None or self.kind != "masked"):
            raise ValueError(
                "guidance needs a prompt and a masked model: the unconditional branch masks the "
                "prompt"
            )
        counting = CountingDenoiser(self.network)  # rows: sequences run
        network = counting
        if guidance != 1:
            network = PromptGuidance(counting, start != self.vocab_size, guidance)
        device = next(self.network.parameters()).device
        gens = generators(seed, n)
        out, t0 = [], time.perf_counter()
        with torch.no_grad():
            for i in range(0, n, batch_size):
                rows = gens[i : i + batch_size]
                z = start.to(device).expand(len(rows), -1).clone()
                out.append(run(network, z, steps, generator=rows, **options).cpu())
        tokens = torch.cat(out)
        texts = [self.tokenizer.decode(row) for row in tokens] if self.tokenizer else None
        return Generated(tokens, texts, counting.rows, time.perf_counter() - t0)

    def _encode(self, prompt: str | Tensor) -> Tensor:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError(f"{self.name} has no tokenizer: give the prompt as token ids")
            return self.tokenizer.encode(prompt)
        return torch.as_tensor(prompt, dtype=torch.long).reshape(-1)

    def __repr__(self) -> str:
        params = sum(p.numel() for p in self.network.parameters())
        return (
            f"TextModel({self.name!r}: {self.kind}, {params:,} parameters, context {self.context})"
        )


def available() -> list[str]:
    """Names of the text models shipped with difflab."""
    return sorted(p.name for p in SHIPPED.iterdir() if is_model_folder(p, TYPE))


def load(name_or_path: str | os.PathLike[str], device: str | torch.device = "cpu") -> TextModel:
    """A shipped text model by name (see :func:`available`) or a text model folder (a training run's
    folder holding ``model/`` too)."""
    key = str(name_or_path)
    if isinstance(name_or_path, str) and key in available():
        return TextModel.from_folder(SHIPPED / key, device)
    path = Path(name_or_path).expanduser()
    if path.is_dir() and (path / "model" / WEIGHTS).is_file():  # a training run's folder
        path = path / "model"
    if not path.exists():
        if "/" in key or os.sep in key or key.startswith((".", "~")):
            raise FileNotFoundError(f"text model folder {path} does not exist")
        raise unknown_name("text model", key, available())
    return TextModel.from_folder(path, device)
