"""The denoising task of the training loop: a diffusion model (any network of
:func:`difflab.models.build`, any objective of :class:`difflab.training.objectives.Objective`) on a
data set of :func:`difflab.data.load`; ``difflab train`` and :func:`difflab.training.train` run it.

A batch: the next samples of the epoch-wise data order, then noise levels, noises and label dropouts
from the run's generator (:meth:`Objective.draw`); its losses are :func:`denoising_loss` per sample.
Evaluations: the EMA network's validation loss on the held-out split with fixed draws
(``run.val_every``) and a preview PNG of samples (``run.sample_every``, ``samples/``). The export:
``model/``, the EMA network as a version-2 diffusion model folder
(:func:`difflab.models.saved.diffusion_config` through :func:`difflab.utils.folder.save_folder`),
which ``difflab.load`` opens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from difflab import data as datasets
from difflab import models
from difflab.core import processes
from difflab.data import Dataset
from difflab.models.saved import data_section, diffusion_config
from difflab.training.checkpoint import Checkpoint
from difflab.training.config import DEFAULTS, FREE_SECTIONS
from difflab.training.loop import DataOrder, Task
from difflab.training.objectives import Draw, Objective, denoising_loss
from difflab.training.preview import preview
from difflab.utils.folder import save_folder

__all__ = ["Denoising", "diffusion_model_config"]


def _for_network(data: Dataset, net: nn.Module) -> Dataset:
    """The data set as the network sees it: without labels for an unconditional network, without a
    context for a network that takes none."""
    context_dim = int(getattr(net, "context_dim", 0))
    if context_dim and data.context is None:
        raise ValueError(
            f"the network takes a context (context_dim={context_dim}) but data set {data.name!r} "
            "has none: set model.context_dim = 0"
        )
    if context_dim:
        length = int(net.config.get("context_length", 0))
        want = [length, context_dim] if length else [context_dim]
        if list(data.context.shape[1:]) != want:
            raise ValueError(
                f"the network takes contexts of shape {want} (model.context_length, "
                f"model.context_dim) but data set {data.name!r} has contexts of shape "
                f"{list(data.context.shape[1:])}"
            )
    if not context_dim and data.context is not None:
        data = Dataset(
            data.x,
            data.labels,
            num_classes=data.num_classes if data.labels is not None else None,
            classes=data.classes,
            name=data.name,
        )
    classes = int(getattr(net, "num_classes", 0))
    if classes == 0:
        return (
            data if data.labels is None else Dataset(data.x, name=data.name, context=data.context)
        )
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


def _conditions(
    labels: Tensor | None, context: Tensor | None, rows: Tensor | slice, device: torch.device
) -> dict[str, Tensor]:
    """The network's conditions of the given rows: labels and context where the data has them."""
    cond = {} if labels is None else {"labels": labels[rows].to(device)}
    return cond if context is None else cond | {"context": context[rows].to(device)}


def _objective(config: dict[str, Any]) -> Objective:
    config = dict(config)
    process = config.get("process", "vp_cosine")
    config["process"] = processes.get(process).config() if isinstance(process, str) else process
    return Objective.from_config(config)


def diffusion_model_config(
    network: nn.Module,
    objective: Objective,
    data: Any,
    sample: dict[str, Any],
    training: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The model config of a network trained with ``objective`` on ``data`` (a data set or its
    name, shape, num_classes and classes): its parameterization, and a null class when it is
    class-conditional and was trained with label dropout."""
    described = data_section(data)
    return diffusion_config(
        network,
        objective.parameterization,
        data=described,
        sample=sample,
        null_class=described["num_classes"] > 0 and objective.label_dropout > 0,
        objective=objective.config,
        training=training,
        extra=extra,
    )


class Denoising(Task):
    """Train a diffusion model: the config's [data], [model], [objective] and [sample] sections
    (:data:`difflab.training.config.DEFAULTS`)."""

    name = "denoising"
    cli = ("difflab", "train")
    defaults = DEFAULTS
    free = FREE_SECTIONS

    def build(self) -> nn.Module:
        config, device = self.trainer.config, self.trainer.device
        run = config["run"]
        options = {
            k: v for k, v in config["data"].items() if k not in ("name", "split", "val_split")
        }
        self.data = datasets.load(config["data"]["name"], split=config["data"]["split"], **options)
        self.val_data = (
            datasets.load(config["data"]["name"], split=config["data"]["val_split"], **options)
            if run["val_every"]
            else None
        )
        self.objective = _objective(config["objective"])
        net = models.build(config["model"]).to(device)
        self.data = _for_network(self.data, net)
        if self.val_data is not None:
            self.val_data = _for_network(self.val_data, net)
        self.channels_last = bool(config["precision"]["channels_last"]) and self.data.x.ndim == 4
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.order = DataOrder(len(self.data), run["seed"])
        return net

    def _to_device(self, x: Tensor) -> Tensor:
        x = x.to(self.trainer.device)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def batch(self, size: int, generator: torch.Generator) -> tuple[Tensor, Draw]:
        idx = self.order.next(size)
        x0, labels = self.data[idx]
        context = None if self.data.context is None else self.data.context[idx]
        return x0, self.objective.draw(x0, labels, generator, context)

    def losses(self, network: nn.Module, batch: tuple[Tensor, Draw], rows: Tensor) -> Tensor:
        x0, draw = batch
        device = self.trainer.device
        cond = _conditions(draw.labels, draw.context, rows, device)
        return denoising_loss(
            self.objective.denoiser(network),
            self._to_device(x0[rows]),
            self._to_device(draw.eps[rows]),
            draw.sigma[rows].to(device),
            self.objective.weighting,
            **cond,
        )

    def fields(self, stats: dict[str, float]) -> dict[str, Any]:
        return {"epoch": self.order.epoch}

    def evaluate(self, step: int) -> dict[str, float]:
        run = self.trainer.config["run"]
        metrics = {}
        if run["val_every"] and step % run["val_every"] == 0:
            metrics["val_loss"] = self.validation_loss()
        if run["sample_every"] and step % run["sample_every"] == 0 and self.trainer.is_main:
            preview(
                self.denoiser(),
                self.data,
                self.trainer.config["sample"],
                self.objective.process,
                self.trainer.run_dir / "samples" / f"step_{step:07d}.png",
                self.trainer.device,
            )
        return metrics

    @torch.no_grad()
    def validation_loss(self) -> float:
        """EMA model's loss on the held-out split with fixed draws (the same every time)."""
        run, batch = self.trainer.config["run"], self.trainer.config["optim"]["batch_size"]
        device = self.trainer.device
        generator = torch.Generator().manual_seed(run["seed"] + 2)
        den = self.objective.denoiser(self.trainer.ema.model)
        losses = []
        for i in range(run["val_batches"]):
            idx = torch.arange(i * batch, (i + 1) * batch) % len(self.val_data)
            x0, labels = self.val_data[idx]
            context = None if self.val_data.context is None else self.val_data.context[idx]
            draw = self.objective.draw(x0, labels, generator)
            cond = _conditions(labels, context, slice(None), device)
            with self.trainer.autocast_context():
                loss = denoising_loss(
                    den,
                    self._to_device(x0),
                    self._to_device(draw.eps),
                    draw.sigma.to(device),
                    self.objective.weighting,
                    **cond,
                )
            losses.append(loss.float().mean())
        return float(torch.stack(losses).mean())

    def state_dict(self) -> dict[str, Any]:
        return {"order": self.order.state_dict()}

    def load_state_dict(self, state: dict[str, Any], checkpoint: Checkpoint) -> None:
        self.order.load_state_dict(state["order"])

    def describe(self) -> str:
        return models.summary(self.trainer.net, self.data.shape)

    def denoiser(self) -> nn.Module:
        """The EMA network wrapped as a difflab denoiser (what sampling uses)."""
        return self.objective.denoiser(self.trainer.ema.model)

    def export(self) -> list[Path]:
        """``model/``: the EMA network, its parameterization and data, the sampling defaults of
        [sample] and how it was trained."""
        t = self.trainer
        training = t.record
        config = diffusion_model_config(
            t.ema.model, self.objective, self.data, t.config["sample"], training
        )
        return [save_folder(t.run_dir / "model", config, t.ema.model.state_dict())]
