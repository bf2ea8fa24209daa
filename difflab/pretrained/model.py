"""A saved diffusion model and everything its life after training needs: ``Model.load("mnist")``,
its denoiser, step grids, guidance, sampling, and ``model.save(folder)``.

The folder is the one model-folder format (:mod:`difflab.utils.folder`, type "diffusion"); its
config is built and checked by :mod:`difflab.models.saved` (version 2; version-1 folders load too).
Sampling needs nothing of training: the config's parameterization turns the network into the
denoiser, and its null_class says whether classifier-free guidance is possible.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from difflab import guidance as guidance_rules
from difflab import models
from difflab.core.parameterization import Parameterization
from difflab.core.processes import Process
from difflab.guidance import Rule, classifier_free
from difflab.models.lora import load_adapter, merge_lora, read_adapter_config
from difflab.models.saved import (
    check_diffusion_config,
    read_diffusion_config,
    upgrade_diffusion_config,
)
from difflab.pretrained.generate import Samples, class_labels, sample_batched, step_grid
from difflab.pretrained.grids import FOLDER as GRIDS_FOLDER
from difflab.pretrained.grids import PREFIX, load_grid, parse_grid_name, saved_grids
from difflab.utils.folder import (
    CONFIG,
    FORMAT,
    VERSION,
    WEIGHTS,
    folder_name,
    read_folder_config,
    read_folder_weights,
    save_folder,
)
from difflab.utils.pixels import to_uint8
from difflab.utils.weights import check_fits, load_state_dict_strict

__all__ = [
    "FORMAT",
    "SAMPLE_DEFAULTS",
    "SHIPPED",
    "VERSION",
    "Model",
    "model_name",
    "read_model_config",
]

SHIPPED = Path(__file__).resolve().parent
# sampling settings used where a model's config has no "sample" section or leaves one out
SAMPLE_DEFAULTS: dict[str, Any] = {
    "sampler": "dpmpp_2m",
    "schedule": "karras",
    "steps": 10,
    "guidance": 1.0,
}
# extras a model folder may hold beside config.json and model.safetensors, copied by Model.save
EXTRAS = (GRIDS_FOLDER,)
ADAPTER = "adapter"  # the folder type of LoRA adapters (difflab.models.lora)
# an adapter config's own keys; the others (training, finetune) pass to the adapted model's config
ADAPTER_KEYS = ("type", "format", "version", "adapter", "rank", "alpha", "targets", "base")

model_name = folder_name  # a model folder's name: its own, or its run's for <run>/model
read_model_config = read_diffusion_config  # folder/config.json, checked, as version 2


class Model:
    """A trained diffusion model: its network, its parameterization and the denoiser
    D(x, sigma, labels) = E[x0 | x = x0 + sigma eps] built from them (DESIGN.md).

    ``Model.load("mnist")`` (a shipped name, a name under $DIFFLAB_MODELS, or a folder);
    ``model.sample(n, labels, sampler=..., steps=..., guidance=...)`` draws samples in data scale
    (images in [-1, 1]), defaults from the config's "sample" section; ``model.grid(...)`` and
    ``model.guided(...)`` are the step grid and the guided denoiser sampling uses, for any sampler;
    ``model.save(folder)`` writes it back (version 2).
    """

    def __init__(
        self, config: dict[str, Any], network: nn.Module, folder: Path | None = None
    ) -> None:
        where = Path(folder) / CONFIG if folder is not None else "the model config"
        self.config = check_diffusion_config(upgrade_diffusion_config(config, where), where)
        self.folder = None if folder is None else Path(folder)
        self.network = network.eval().requires_grad_(False)
        self.parameterization = Parameterization.from_config(self.config["parameterization"])
        self.denoiser = self.parameterization.denoiser(self.network).eval()

    # ---------------------------------------------------------------------------------- loading

    @classmethod
    def load(
        cls, name_or_folder: str | os.PathLike[str], device: str | torch.device = "cpu"
    ) -> Model:
        """The model called ``name_or_folder`` (``difflab models``: shipped, then $DIFFLAB_MODELS)
        or saved in that folder (or a training run's folder holding ``model/``), on ``device``."""
        from difflab.pretrained.catalog import resolve  # the catalog lists models of this class

        return cls.from_folder(resolve(name_or_folder), device)

    @classmethod
    def from_folder(
        cls, folder: str | os.PathLike[str], device: str | torch.device = "cpu"
    ) -> Model:
        """Build the network from ``folder/config.json`` and load ``folder/model.safetensors`` into
        it strictly (every key, every shape); an adapter folder loads as :meth:`from_adapter`."""
        folder = Path(folder)
        if read_folder_config(folder).get("type") == ADAPTER:
            return cls.from_adapter(folder, device)
        config = read_diffusion_config(folder)
        tensors = read_folder_weights(folder)
        source = f"{folder / WEIGHTS} (for the network in {CONFIG})"
        try:
            with torch.device("meta"):  # no memory: a config asking for a huge network fails here
                check_fits(models.build(config["network"]), tensors, source)
            network = models.build(config["network"])
        except (TypeError, ValueError, RuntimeError) as e:  # torch refuses impossible sizes
            raise ValueError(f"{folder / CONFIG}: cannot build its network: {e}") from None
        load_state_dict_strict(network, tensors, source)
        return cls(config, network.to(device), folder)

    @classmethod
    def from_adapter(
        cls, folder: str | os.PathLike[str], device: str | torch.device = "cpu"
    ) -> Model:
        """An adapter folder (type "adapter" of :mod:`difflab.models.lora`): the base model it
        names (a name or folder), its LoRA factors added after checking the base's weights digest
        and merged (W + alpha / r B A, Hu et al. 2021); the config is the base's with the
        adapter's extra sections (its training record, "finetune")."""
        config = read_adapter_config(folder)
        base = cls.load(config["base"]["model"], device)
        load_adapter(folder, base.network)
        merge_lora(base.network)
        extras = {k: v for k, v in config.items() if k not in ADAPTER_KEYS}
        return cls({**base.config, **extras}, base.network, Path(folder))

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write the model as a version-2 folder (:func:`difflab.utils.folder.save_folder`) with
        the extras its own folder holds (the saved grids); returns the folder. Loading it gives
        the same samples."""
        folder = Path(folder)
        if self.folder is not None and folder.resolve() == self.folder.resolve():
            raise ValueError(f"{folder} is the folder the model was loaded from; save elsewhere")
        config = {k: v for k, v in self.config.items() if k not in ("format", "version")}
        save_folder(folder, config, self.network.state_dict())
        for extra in EXTRAS if self.folder is not None else ():
            source = self.folder / extra
            if source.is_dir():
                shutil.copytree(source, folder / extra, dirs_exist_ok=True)
        return folder

    # ------------------------------------------------------------------------------- properties

    @property
    def name(self) -> str:
        """The model folder's name ("mnist"), or "model" for one built in memory."""
        return folder_name(self.folder) if self.folder is not None else "model"

    @property
    def process(self) -> Process:
        """The noising process the network was trained on."""
        return self.parameterization.process

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
    def null_class(self) -> bool:
        """Whether the null class (label -1, the unconditional model of classifier-free guidance) was
        trained: the config's ``null_class`` (version 1: a conditional model trained with label
        dropout > 0)."""
        return bool(self.config["null_class"])

    has_null_class = null_class

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

    @property
    def saved_grids(self) -> list[str]:
        """Names of the optimized grids kept in the model folder (``optimized:SAMPLER:NFE``)."""
        return saved_grids(self.folder)

    def to(self, device: str | torch.device) -> Model:
        """Move the network to ``device`` (in place); returns the model."""
        self.network.to(device)
        return self

    # ------------------------------------------------------------------------ grids and labels

    def grid(
        self,
        schedule: str | Tensor | Sequence[float] | None = None,
        steps: int | None = None,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
    ) -> Tensor:
        """sigma_0 > ... > sigma_steps = 0 (float64): the step grid called ``schedule`` (see
        ``difflab schedules``) with ``steps`` intervals between ``sigma_min`` and ``sigma_max``,
        explicit sigmas, or ``"optimized:SAMPLER:NFE"``, a grid kept in the model folder. Unset
        values come from the model's sampling defaults, then from its process."""
        d = self.defaults
        schedule = d["schedule"] if schedule is None else schedule
        if isinstance(schedule, str) and schedule.startswith(PREFIX):
            schedule = load_grid(self.folder, schedule, self.name)
        elif isinstance(schedule, str) and steps is None:
            steps = d["steps"]
        return step_grid(
            schedule,
            steps,
            self.process,
            d.get("sigma_min") if sigma_min is None else sigma_min,
            d.get("sigma_max") if sigma_max is None else sigma_max,
        )

    def _no_null_class(self, what: str, fix: str) -> ValueError:
        return ValueError(
            f"{what} needs an unconditional (null-class) model, but {self.name} was trained "
            f"with label_dropout 0, so its null class is untrained ({fix})"
        )

    def class_labels(self, labels: int | Sequence[int] | Tensor | None, n: int) -> Tensor | None:
        """Labels [n]: None cycles through the classes (i mod C), one label applies to all, n labels
        are taken as given; each checked against the classes, and -1 (the null class) only where
        it was trained. None for an unconditional model."""
        t = class_labels(labels, n, self.num_classes)
        if t is not None and bool((t < 0).any()) and not self.null_class:
            raise self._no_null_class("the null label -1", "give class labels")
        return t

    # -------------------------------------------------------------------------------- guidance

    def guidance_rule(
        self,
        guidance: float | Rule | None = None,
        method: str = "cfg",
        rescale: float | None = None,
        zero_init: float | None = None,
    ) -> Rule:
        """The classifier-free guidance rule, checked: scale ``guidance`` w >= 0 (default: the
        model's sampling guidance when it has a null class, else 1 = none) combined by ``method``
        (a name of :func:`difflab.guidance.available`: cfg, apg, cfg_zero_star), with guidance
        ``rescale`` phi (cfg only) and CFG-Zero*'s ``zero_init`` (default: the start of the model's
        grid). Guidance other than the identity needs a class-conditional model with a trained null
        class. ``guidance`` may be a rule already (then ``method`` and ``rescale`` stay unset)."""
        if hasattr(guidance, "identity"):  # a rule of difflab.guidance.rules
            if method != "cfg" or rescale is not None:
                raise ValueError("guidance is a rule already: give its method and rescale in it")
            rule, scale = guidance, getattr(guidance, "scale", None)
        else:
            if guidance is None:
                guidance = float(self.defaults["guidance"]) if self.null_class else 1.0
            scale = guidance
            rule = None
        if (
            isinstance(scale, bool)
            or not (isinstance(scale, int | float) and math.isfinite(scale))
            or scale < 0
        ):
            raise ValueError(f"guidance must be a number >= 0 (1 = no guidance), got {scale}")
        if rule is None:
            cls = guidance_rules.get(method)
            options: dict[str, Any] = {}
            if rescale is not None:
                if method != "cfg":
                    raise ValueError(f"guidance rescale applies to method cfg, not {method}")
                options["rescale"] = float(rescale)
            if method == "cfg_zero_star":
                options["zero_init"] = self._first_sigma() if zero_init is None else zero_init
            rule = cls(float(scale), **options)
        if not rule.identity:
            what = f"guidance {scale:g}" + ("" if method == "cfg" else f" ({method})")
            if self.num_classes == 0:
                raise ValueError(
                    f"{what} needs a class-conditional model; {self.name} is unconditional "
                    "(use guidance 1)"
                )
            if not self.null_class:
                raise self._no_null_class(what, "use guidance 1")
        return rule

    def _first_sigma(self) -> float:
        """Where the model's default grid starts: its sampling sigma_max, else its process's."""
        return float(self.defaults.get("sigma_max") or self.process.sigma_max)

    def guided(
        self,
        guidance: float | Rule | None = None,
        method: str = "cfg",
        interval: tuple[float, float] | None = None,
        rescale: float | None = None,
    ) -> Callable[..., Tensor]:
        """The denoiser with classifier-free guidance D_w = D(x) + w (D(x, y) - D(x)) (Ho & Salimans
        2022; or the rule ``method`` names), applied for sigma inside ``interval`` when given
        (Kynkäänniemi et al. 2024), after every check of :meth:`guidance_rule`; the plain
        :attr:`denoiser` when the guidance is the identity (w = 1, the default without a null
        class). It runs with any sampler: ``sampler(model.guided(3.0), x, sigmas,
        cond={"labels": labels})``."""
        rule = self.guidance_rule(guidance, method, rescale)
        if rule.identity:
            return self.denoiser
        return classifier_free(self.denoiser, rule, interval)

    # -------------------------------------------------------------------------------- sampling

    def sampler(
        self,
        sampler: str | Callable[..., Tensor] | None = None,
        schedule: str | Tensor | Sequence[float] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[str | Callable[..., Tensor], dict[str, Any] | None]:
        """(sampler, its options) that :meth:`generate` runs: ``sampler``, else the one a saved grid
        ``schedule`` ("optimized:SAMPLER:NFE") names, else the model's default; the options default
        to the config's ``sample.sampler_options`` when the model's own sampler runs (a distilled
        model's final step)."""
        d = self.defaults
        schedule = d["schedule"] if schedule is None else schedule
        if sampler is None and isinstance(schedule, str) and schedule.startswith(PREFIX):
            sampler = parse_grid_name(schedule)[0]
        sampler = sampler or d["sampler"]
        if options is None and sampler == d["sampler"]:
            options = d.get("sampler_options")
        return sampler, options

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
        guidance_method: str = "cfg",
        guidance_rescale: float | None = None,
    ) -> Samples:
        """Samples with their labels, the NFE spent and the time: see :meth:`sample`."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        schedule = self.defaults["schedule"] if schedule is None else schedule
        sampler, sampler_options = self.sampler(sampler, schedule, sampler_options)
        labels_t = self.class_labels(labels, n)
        sigmas = self.grid(schedule, steps, sigma_min, sigma_max)
        # CFG-Zero* zeroes the first step: at the start of this grid
        rule = self.guidance_rule(guidance, guidance_method, guidance_rescale, float(sigmas[0]))
        den = self.guided(rule, interval=guidance_interval)
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
        named_rule = hasattr(guidance, "identity") or guidance_method != "cfg"
        return Samples(
            x=x,
            labels=labels_t,
            sigmas=sigmas,
            nfe=nfe,
            network_evals=nfe * (2 if not rule.identity and labels_t is not None else 1),
            seconds=seconds,
            options={
                "sampler": sampler,
                "schedule": schedule if isinstance(schedule, str) else "explicit",
                "steps": len(sigmas) - 1,
                "guidance": rule.scale,
                "seed": seed,
                **({"guidance_rule": rule} if named_rule or guidance_rescale else {}),
            },
        )

    def sample(
        self, n: int, labels: int | Sequence[int] | Tensor | None = None, **options: Any
    ) -> Tensor:
        """x ~ p(x | labels): n samples [n, *shape] in data scale, solving the sampler from
        x_0 = sigma_max eps_i on the step grid (:meth:`grid`), with classifier-free guidance
        D_w = D(x) + w (D(x, y) - D(x)) for w = ``guidance`` != 1 (Ho & Salimans 2022;
        :meth:`guided`).

        ``labels``: None (a conditional model cycles through its classes, i mod C), one class for
        all, or n labels (-1 = the null class). Sample i starts from noise of its own generator,
        seeded by (``seed``, i), so it does not depend on n or ``batch_size``. Options: ``sampler``
        (a name, or a sampler function such as :class:`difflab.guidance.W2SD`), ``steps``,
        ``schedule`` (a grid name, explicit sigmas, or ``"optimized:<sampler>:<nfe>"``: a grid
        kept in the model folder, its sampler the default), ``guidance`` (a scale or a rule
        of :mod:`difflab.guidance.rules`: ``CFG(w, rescale=phi)``, ``APG(w)``, ``CFGZeroStar(w)``),
        ``guidance_method`` (a rule by name: "cfg", "apg", "cfg_zero_star"), ``guidance_rescale``
        (phi, with "cfg"), ``guidance_interval`` (sigma range where guidance applies), ``seed``,
        ``batch_size``, ``sigma_min``, ``sigma_max``, ``progress``, ``sampler_options`` (the
        sampler's own, e.g. ``{"eta": 0.5}``; by default the config's ``sample.sampler_options``
        when the model's own sampler runs).
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
