"""Save and load model directories, and sample from them: ``difflab.load("mnist").sample(...)``."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from difflab import models
from difflab.data import Dataset, to_uint8
from difflab.guidance import Rule, classifier_free
from difflab.pretrained.generate import Samples, class_labels, sample_batched, step_grid
from difflab.pretrained.schedules import PREFIX, load_grid, parse_grid_name
from difflab.training.objectives import Objective
from difflab.utils.weights import (
    check_fits,
    check_no_pickles,
    load_state_dict_strict,
    load_weights,
    read_config,
    save_weights,
    write_config,
)

__all__ = ["FORMAT", "SHIPPED", "VERSION", "Model", "model_name", "read_model_config", "save_model"]

FORMAT = "difflab model"
VERSION = 1
SHIPPED = Path(__file__).resolve().parent
CONFIG, WEIGHTS = "config.json", "model.safetensors"
# sampling settings used where a model's config has no "sample" section or leaves one out
SAMPLE_DEFAULTS: dict[str, Any] = {
    "sampler": "dpmpp_2m",
    "schedule": "karras",
    "steps": 10,
    "guidance": 1.0,
}


def save_model(
    folder: str | os.PathLike[str],
    net: nn.Module,
    *,
    objective: Objective,
    data: Dataset,
    sample: dict[str, Any],
    training: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``folder/model.safetensors`` and ``folder/config.json`` (each atomically)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "format": FORMAT,
        "version": VERSION,
        "network": net.config,
        "objective": objective.config,
        "data": {
            "name": data.name,
            "shape": list(data.shape),
            "num_classes": data.num_classes,
            "classes": list(data.classes) if data.classes else None,
        },
        "sample": dict(sample),
        "training": training or {},
        **(extra or {}),
    }
    save_weights(folder / WEIGHTS, {k: v.detach().float() for k, v in net.state_dict().items()})
    write_config(folder / CONFIG, config)
    return folder


def model_name(folder: str | os.PathLike[str]) -> str:
    """A model folder's name: its own, or its parent's for a run's ``<run>/model`` folder."""
    folder = Path(folder).resolve()
    return folder.parent.name if folder.name == "model" else folder.name


def _network_shape(network: dict[str, Any]) -> tuple[int, ...] | None:
    """The sample shape a network config expects: [C, S, S] for image networks, [dim] for vectors."""
    if "image_size" in network:
        return (network.get("in_channels", 1), network["image_size"], network["image_size"])
    if "dim" in network:
        return (network["dim"],)
    return None


def _section(config: dict[str, Any], name: str, path: Path) -> dict[str, Any]:
    value = config.get(name)
    if not isinstance(value, dict):
        raise ValueError(f"{path} has no {name!r} section (a table), so it cannot be loaded")
    return value


def read_model_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """``folder/config.json``, checked: its format and version, its sections, and that the network's
    input shape and classes match the data it was trained on. Refuses folders of pickle weights."""
    folder = Path(folder)
    check_no_pickles(folder)
    path = folder / CONFIG
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} is not a model folder: it has no {CONFIG} (a model folder holds {CONFIG} "
            f"and {WEIGHTS}, as `difflab train` writes them)"
        )
    config = read_config(path)
    if config.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not a difflab model config: format {config.get('format')!r}, "
            f"expected {FORMAT!r}"
        )
    version = config.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"{path} has an invalid format version {version!r}")
    if version > VERSION:
        raise ValueError(
            f"{path} is model format version {version}, written by a newer difflab; this one reads "
            f"version {VERSION}: upgrade difflab"
        )
    network = _section(config, "network", path)
    _section(config, "objective", path)
    data = _section(config, "data", path)
    shape, classes = data.get("shape"), data.get("num_classes")
    if not (isinstance(shape, list) and shape and all(isinstance(n, int) and n > 0 for n in shape)):
        raise ValueError(f"{path}: data.shape must be a list of positive integers, got {shape!r}")
    if not isinstance(classes, int) or classes < 0:
        raise ValueError(f"{path}: data.num_classes must be an integer >= 0, got {classes!r}")
    if network.get("num_classes", 0) != classes:
        raise ValueError(
            f"{path} does not match itself: the network has {network.get('num_classes', 0)} "
            f"classes but the data has {classes}"
        )
    expected = _network_shape(network)
    if expected is not None and list(expected) != shape:
        raise ValueError(
            f"{path} does not match itself: the {network.get('type')} network takes samples of "
            f"shape {list(expected)} but the data shape is {shape}"
        )
    if not isinstance(config.get("sample", {}), dict):
        raise ValueError(f"{path}: the 'sample' section must be a table")
    return config


class Model:
    """A trained diffusion model: its network, its training objective and the denoiser
    D(x, sigma, labels) = E[x0 | x = x0 + sigma eps] built from them (DESIGN.md).

    ``model.sample(n, labels, sampler=..., steps=..., guidance=...)`` draws samples in data scale
    (images in [-1, 1]); defaults come from the config's "sample" section.
    """

    def __init__(
        self, config: dict[str, Any], network: nn.Module, folder: Path | None = None
    ) -> None:
        self.config = config
        self.folder = folder
        self.network = network.eval().requires_grad_(False)
        try:
            self.objective = Objective.from_config(config["objective"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"the model's objective config is invalid: {e}") from None
        self.denoiser = self.objective.denoiser(self.network).eval()

    @classmethod
    def from_folder(
        cls, folder: str | os.PathLike[str], device: str | torch.device = "cpu"
    ) -> Model:
        """Build the network from ``folder/config.json`` and load ``folder/model.safetensors`` into
        it strictly (every key, every shape)."""
        folder = Path(folder)
        config = read_model_config(folder)
        weights = folder / WEIGHTS
        if not weights.is_file():
            raise FileNotFoundError(f"{folder} is not a model folder: it has no {WEIGHTS}")
        tensors = load_weights(weights)
        source = f"{weights} (for the network in {CONFIG})"
        try:
            with torch.device("meta"):  # no memory: a config asking for a huge network fails here
                check_fits(models.build(config["network"]), tensors, source)
            network = models.build(config["network"])
        except (TypeError, ValueError, RuntimeError) as e:  # torch refuses impossible sizes
            raise ValueError(f"{folder / CONFIG}: cannot build its network: {e}") from None
        load_state_dict_strict(network, tensors, source)
        return cls(config, network.to(device), folder)

    @property
    def name(self) -> str:
        """The model folder's name ("mnist"), or "model" for one built in memory."""
        return model_name(self.folder) if self.folder is not None else "model"

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one sample, e.g. (1, 28, 28)."""
        return tuple(self.config["data"]["shape"])

    @property
    def num_classes(self) -> int:
        """Number of classes the model is conditioned on (0: unconditional)."""
        return int(self.config["data"]["num_classes"])

    @property
    def classes(self) -> list[str] | None:
        """Class names, when the data set names them."""
        return self.config["data"].get("classes")

    @property
    def has_null_class(self) -> bool:
        """Whether the null class (label -1, the unconditional model of classifier-free guidance) was
        trained: a conditional model trained with label dropout > 0."""
        return self.num_classes > 0 and self.objective.label_dropout > 0

    @property
    def device(self) -> torch.device:
        """The device the network's weights are on."""
        return next(self.network.parameters()).device

    @property
    def parameter_count(self) -> int:
        """Number of the network's parameters."""
        return models.parameter_count(self.network)

    @property
    def defaults(self) -> dict[str, Any]:
        """Sampling settings: the config's "sample" section over :data:`SAMPLE_DEFAULTS`."""
        return {**SAMPLE_DEFAULTS, **self.config.get("sample", {})}

    def to(self, device: str | torch.device) -> Model:
        """Move the network to ``device`` (in place); returns the model."""
        self.network.to(device)
        return self

    def _check_guidance(self, guidance: float, labels: Tensor | None) -> None:
        if not (isinstance(guidance, int | float) and math.isfinite(guidance)) or guidance < 0:
            raise ValueError(f"guidance must be a number >= 0 (1 = no guidance), got {guidance}")
        uses_null = labels is not None and bool((labels < 0).any())
        if self.num_classes == 0 and guidance != 1:
            raise ValueError(
                f"guidance {guidance} needs a class-conditional model; {self.name} is "
                "unconditional (use guidance 1)"
            )
        if (guidance != 1 or uses_null) and not self.has_null_class:
            what = f"guidance {guidance}" if guidance != 1 else "the null label -1"
            raise ValueError(
                f"{what} needs an unconditional (null-class) model, but {self.name} was trained "
                "with label_dropout 0, so its null class is untrained (use guidance 1)"
            )

    def generate(
        self,
        n: int,
        labels: int | Sequence[int] | Tensor | None = None,
        *,
        sampler: str | Callable[..., Tensor] | None = None,
        steps: int | None = None,
        schedule: str | Tensor | Sequence[float] | None = None,
        guidance: float | Rule | None = None,
        guidance_interval: tuple[float, float] | None = None,
        seed: int = 0,
        batch_size: int | None = None,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        progress: bool = False,
        sampler_options: dict[str, Any] | None = None,
    ) -> Samples:
        """Samples with their labels, the NFE spent and the time: see :meth:`sample`."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        d = self.defaults
        schedule = d["schedule"] if schedule is None else schedule
        grid = schedule
        if isinstance(schedule, str) and schedule.startswith(PREFIX):  # a grid the model keeps
            grid = load_grid(self.folder, schedule, self.name)
            sampler = sampler or parse_grid_name(schedule)[0]
        sampler = sampler or d["sampler"]
        if sampler_options is None and sampler == d["sampler"]:
            sampler_options = d.get("sampler_options")  # e.g. a distilled model's final step
        if guidance is None:
            guidance = float(d["guidance"]) if self.has_null_class else 1.0
        labels_t = class_labels(labels, n, self.num_classes)
        scale = getattr(guidance, "scale", guidance)  # a rule (difflab.guidance.rules) or a scale
        self._check_guidance(scale, labels_t)
        guided = not guidance.identity if hasattr(guidance, "identity") else guidance != 1
        sigmas = step_grid(
            grid,
            steps if steps is not None or not isinstance(grid, str) else d["steps"],
            self.objective.process,
            d.get("sigma_min") if sigma_min is None else sigma_min,
            d.get("sigma_max") if sigma_max is None else sigma_max,
        )
        den = self.denoiser
        if guided:
            den = classifier_free(den, guidance, guidance_interval)
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        if batch_size is None:  # about a mebibyte of float32 state per batch
            batch_size = max(1, min(n, 2**18 // math.prod(self.shape)))
        x, nfe, seconds = sample_batched(
            den,
            (n, *self.shape),
            sigmas,
            sampler,
            labels_t,
            seed=seed,
            batch_size=batch_size,
            device=self.device,
            progress=progress,
            options=sampler_options,
        )
        return Samples(
            x=x,
            labels=labels_t,
            sigmas=sigmas,
            nfe=nfe,
            network_evals=nfe * (2 if guided and labels_t is not None else 1),
            seconds=seconds,
            options={
                "sampler": sampler,
                "schedule": schedule if isinstance(schedule, str) else "explicit",
                "steps": len(sigmas) - 1,
                "guidance": scale,
                "seed": seed,
                **({"guidance_rule": guidance} if hasattr(guidance, "identity") else {}),
            },
        )

    def sample(
        self, n: int, labels: int | Sequence[int] | Tensor | None = None, **options: Any
    ) -> Tensor:
        """x ~ p(x | labels): n samples [n, *shape] in data scale, solving the sampler from
        x_0 = sigma_max eps_i on the step grid, with classifier-free guidance
        D_w = D(x) + w (D(x, y) - D(x)) for w = ``guidance`` != 1 (Ho & Salimans 2022).

        ``labels``: None (a conditional model cycles through its classes, i mod C), one class for
        all, or n labels (-1 = the null class). Sample i starts from noise of its own generator,
        seeded by (``seed``, i), so it does not depend on n or ``batch_size``. Options: ``sampler``
        (a name, or a sampler function such as :class:`difflab.guidance.W2SD`), ``steps``,
        ``schedule`` (a grid name, explicit sigmas, or ``"optimized:<sampler>:<nfe>"``: a grid
        kept in the model folder, its sampler the default), ``guidance`` (a scale or a rule
        of :mod:`difflab.guidance.rules`: ``CFG(w, rescale=phi)``, ``APG(w)``, ``CFGZeroStar(w)``),
        ``guidance_interval`` (sigma range where guidance applies), ``seed``, ``batch_size``,
        ``sigma_min``, ``sigma_max``, ``progress``, ``sampler_options`` (the sampler's own, e.g.
        ``{"eta": 0.5}``; by default the config's ``sample.sampler_options`` when the model's own
        sampler runs).
        """
        return self.generate(n, labels, **options).x

    def sample_uint8(
        self, n: int, labels: int | Sequence[int] | Tensor | None = None, **options: Any
    ) -> Tensor:
        """:meth:`sample` as 8-bit images u = round(127.5 (x + 1)) (Ho et al. 2020), [n, C, H, W]."""
        if len(self.shape) != 3:
            raise ValueError(f"{self.name} makes vectors of shape {self.shape}, not images")
        return to_uint8(self.sample(n, labels, **options))

    def __repr__(self) -> str:
        kind = self.config["network"].get("type", "?")
        classes = f", {self.num_classes} classes" if self.num_classes else ""
        return (
            f"Model({self.name!r}: {kind}, {self.parameter_count:,} parameters, samples "
            f"{list(self.shape)}{classes})"
        )
