"""A difflab denoiser D(x, sigma, **cond) = E[x0 | x = x0 + sigma eps] from a diffusers model and
its scheduler config (DESIGN.md): the process, prediction type and time input are read from the
config.

- DDPM-type configs (``beta_schedule`` / ``trained_betas``, ``rescale_betas_zero_snr``): the process
  is :class:`~difflab.core.processes.VPDiscrete` on the float32 alphas_cumprod table diffusers
  trains with (its ``DDPMScheduler``), the time input the integer timestep; ``prediction_type``
  epsilon / v_prediction / sample is eps / v / x0. With ``quantize=True`` (the default) the timestep
  is rounded to the nearest table entry, so a sigma on the table reaches the model as that exact
  integer timestep.
- Flow-matching configs (``FlowMatchEulerDiscreteScheduler``, e.g. SD3): x_t = (1 - t) x0 + t eps,
  the model predicts the velocity eps - x0 at timestep N t. ``shift`` warps only the sampling grid.

The model's output is taken from ``.sample`` (or the first element of a tuple); a model that also
predicts its variance (twice the input channels, improved DDPM / DiT) contributes its first half.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import diffusers
import torch
from torch import Tensor, nn

from difflab.core.parameterization import Denoiser
from difflab.core.processes import Flow, Process, VPDiscrete
from difflab.core.tensors import check_name, unknown_name
from difflab.utils.weights import check_no_pickles

__all__ = ["DiffusersNet", "denoiser", "load", "model_prediction", "prediction_of", "process_of"]

PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
_TABLE_KEYS = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "rescale_betas_zero_snr",
)


def _config(scheduler_or_config: Any) -> dict[str, Any]:
    """The config as a dict; a scheduler object's class name is added as diffusers saves it."""
    config = getattr(scheduler_or_config, "config", scheduler_or_config)
    if not isinstance(config, Mapping):
        raise ValueError(
            "expected a diffusers scheduler or its config (a dict), got a "
            f"{type(scheduler_or_config).__name__}"
        )
    if config is scheduler_or_config:
        return dict(config)
    return {"_class_name": type(scheduler_or_config).__name__, **config}


def is_flow(config: Mapping[str, Any]) -> bool:
    """Whether a scheduler config describes flow matching (x_t = (1 - t) x0 + t eps): a FlowMatch*
    class name, or a ``shift`` without a beta table (a scheduler's live config has no class
    name)."""
    kind = config.get("process")
    if kind is not None:
        return kind == "flow"
    if "_class_name" in config:
        return str(config["_class_name"]).startswith("FlowMatch")
    return "shift" in config and "beta_schedule" not in config and "trained_betas" not in config


def process_of(scheduler_or_config: Any) -> Process:
    """The difflab process a diffusers scheduler (config) describes: VPDiscrete on the float32 table
    alpha_bar_t = prod_{i<=t} (1 - beta_i) of DDPMScheduler (Ho et al. 2020), or Flow (Lipman et al.
    2023)."""
    config = _config(scheduler_or_config)
    n = int(config.get("num_train_timesteps", 1000))
    if is_flow(config):
        return Flow(shift=float(config.get("shift", 1.0)), t_min=1 / n, t_max=1.0)
    if "beta_schedule" not in config and config.get("trained_betas") is None:
        name = config.get("_class_name", "this scheduler")
        raise ValueError(
            f"{name} config has neither beta_schedule nor trained_betas, so it is not a DDPM-type "
            "or flow-matching scheduler that difflab can read"
        )
    if config.get("trained_betas") is None and config.get("beta_schedule") not in BETA_SCHEDULES:
        raise unknown_name("beta_schedule", config.get("beta_schedule"), BETA_SCHEDULES)
    table = diffusers.DDPMScheduler(**{k: config[k] for k in _TABLE_KEYS if k in config})
    return VPDiscrete(alphas_cumprod=table.alphas_cumprod.double())


def prediction_of(scheduler_or_config: Any) -> str:
    """difflab's prediction type for a scheduler config: eps, v, x0, or velocity for flow
    matching."""
    config = _config(scheduler_or_config)
    if is_flow(config):
        return "velocity"
    kind = config.get("prediction_type", "epsilon")
    check_name("prediction_type", kind, PREDICTION_TYPES)
    return PREDICTION_TYPES[kind]


def model_prediction(output: Any, x_t: Tensor) -> Tensor:
    """The prediction in a diffusers model output: ``.sample`` or ``output[0]``, and only the first
    C channels when the model also predicts its variance (2C channels for C input channels)."""
    out = output.sample if hasattr(output, "sample") else output
    if isinstance(out, tuple | list):
        out = out[0]
    channels = x_t.shape[1]
    if out.ndim == x_t.ndim and out.shape[1] == 2 * channels:
        out = out[:, :channels]
    return out


class DiffusersNet(nn.Module):
    """net(x_t, time, labels=None, **cond) = model(x_t, timestep=time, **cond), run in the model's
    dtype and returned in x_t's. ``labels`` (difflab's convention, -1 and None the null class)
    become ``class_labels`` with -1 -> ``null_class`` when the model has one (DiT: index
    num_embeds_ada_norm)."""

    def __init__(self, model: nn.Module, null_class: int | None = None) -> None:
        super().__init__()
        self.model, self.null_class = model, null_class

    def class_labels(self, labels: Tensor | None, x_t: Tensor) -> Tensor | None:
        """The model's class indices for difflab labels: -1 (and None) -> the null class."""
        if self.null_class is None:
            return labels
        if labels is None:
            return torch.full((x_t.shape[0],), self.null_class, dtype=torch.long, device=x_t.device)
        return torch.where(labels < 0, self.null_class, labels)

    def forward(
        self, x_t: Tensor, time: Tensor, labels: Tensor | None = None, **cond: Any
    ) -> Tensor:
        if labels is not None or (self.null_class is not None and "class_labels" not in cond):
            if "class_labels" in cond:
                raise ValueError("pass labels= (difflab's convention) or class_labels=, not both")
            cond["class_labels"] = self.class_labels(labels, x_t)
        dtype = getattr(self.model, "dtype", x_t.dtype)
        out = self.model(x_t.to(dtype), timestep=time, **cond)
        return model_prediction(out, x_t).to(x_t.dtype)


def _time_input(process: Process, n: int) -> Any:
    """The model's timestep: the integer t of the DDPM table, or N t for flow matching."""
    if not isinstance(process, Flow):
        return "t"
    return "t1000" if n == 1000 else lambda t, sigma: n * t


def wrap(net: Any, scheduler_or_config: Any, quantize: bool = True) -> Denoiser:
    """A :class:`Denoiser` around ``net(x_t, time, **cond)`` with the process, prediction type and
    time input of a diffusers scheduler config (the one place they are decided)."""
    config = _config(scheduler_or_config)
    process = process_of(config)
    n = int(config.get("num_train_timesteps", 1000))
    return Denoiser(
        net,
        process,
        prediction_of(config),
        time_input=_time_input(process, n),
        quantize=quantize and isinstance(process, VPDiscrete),
    )


def _null_class(model: nn.Module) -> int | None:
    """DiT's null class: the extra row num_embeds_ada_norm of its label table (Peebles & Xie
    2023)."""
    config = getattr(model, "config", {})
    if config.get("norm_type") == "ada_norm_zero" and config.get("num_embeds_ada_norm"):
        return int(config["num_embeds_ada_norm"])
    return None


def denoiser(
    model: nn.Module,
    scheduler_or_config: Any,
    *,
    quantize: bool = True,
    null_class: int | None = None,
) -> Denoiser:
    """D(x, sigma, **cond) = E[x0 | x = x0 + sigma eps] from a diffusers model and its scheduler (or
    scheduler config): x_t = alpha x, model(x_t, timestep=t(sigma), **cond) converted to x0
    (DESIGN.md).

    ``cond`` passes through to the model (``encoder_hidden_states=`` for UNet2DConditionModel,
    ``encoder_hidden_states=`` and ``pooled_projections=`` for SD3, ``labels=`` or ``class_labels=``
    for DiT). ``quantize=False`` gives the model fractional timesteps between table entries, as
    diffusers' Euler scheduler does on Karras grids. ``null_class`` is the class index that label -1
    maps to (default: DiT's null class; None for models without one).
    """
    if null_class is None:
        null_class = _null_class(model)
    return wrap(DiffusersNet(model, null_class), scheduler_or_config, quantize).eval()


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None


def load(
    folder: str | os.PathLike[str],
    *,
    scheduler: Any = None,
    component: str | None = None,
    dtype: torch.dtype | None = None,
    quantize: bool = True,
    null_class: int | None = None,
) -> Denoiser:
    """The difflab denoiser of a local diffusers folder, read offline (``local_files_only``,
    safetensors weights only): a pipeline folder (model_index.json; its ``unet`` or ``transformer``,
    or ``component``, and its ``scheduler``) or a model folder (config.json) with a
    scheduler_config.json beside it or a ``scheduler`` (object or config) given."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder (a diffusers model or pipeline folder)")
    subfolder: str | None = None
    if (folder / "model_index.json").is_file():
        parts = _read_json(folder / "model_index.json")
        subfolder = component or next((n for n in ("unet", "transformer") if n in parts), None)
        if subfolder not in parts:
            listed = ", ".join(sorted(k for k in parts if not k.startswith("_")))
            raise ValueError(
                f"{folder / 'model_index.json'} lists no {component or 'unet or transformer'} "
                f"component (it has {listed})"
            )
        if scheduler is None:
            scheduler = _read_json(folder / "scheduler" / "scheduler_config.json")
    elif not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{folder} is not a diffusers folder: it has neither model_index.json nor config.json"
        )
    elif scheduler is None:
        if not (folder / "scheduler_config.json").is_file():
            raise FileNotFoundError(
                f"{folder} has no scheduler_config.json: pass scheduler= (the model's scheduler or "
                "its config) so difflab knows its noise process and prediction type"
            )
        scheduler = _read_json(folder / "scheduler_config.json")
    model_folder = folder / subfolder if subfolder else folder
    check_no_pickles(model_folder)
    class_name = _read_json(model_folder / "config.json").get("_class_name")
    model_class = getattr(diffusers, str(class_name), None)
    if not (isinstance(model_class, type) and issubclass(model_class, diffusers.ModelMixin)):
        raise ValueError(
            f"{model_folder / 'config.json'} names {class_name!r}, not a diffusers model"
        )
    model = model_class.from_pretrained(
        folder, subfolder=subfolder, local_files_only=True, use_safetensors=True, dtype=dtype
    )
    return denoiser(model, scheduler, quantize=quantize, null_class=null_class)
