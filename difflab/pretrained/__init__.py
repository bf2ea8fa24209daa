"""Layer 5: saved models. A model folder holds ``model.safetensors`` (the network's weights) and
``config.json`` (network, parameterization, null class, data shape and classes, sampling defaults,
training record): the one format of :mod:`difflab.utils.folder`, version 2, its config built by
:func:`difflab.models.saved.diffusion_config`. Shipped models live in this package's folders and load
by name, local folders by path.

    model = difflab.load("mnist")              # Model.load("mnist"), or a folder: "runs/mnist/model"
    x = model.sample(16, labels=3, sampler="dpmpp_2m", steps=10, guidance=2.0, seed=0)
    guided = model.guided(2.0, method="apg")   # the denoiser any sampler takes
    model.save("my_mnist")                     # version 2, with the grids the folder keeps

Saved step grids: :mod:`difflab.pretrained.grids`; shipped classifiers: :func:`load_classifier`.
"""

from difflab.pretrained.catalog import (
    MODELS_ENV,
    available,
    classifiers,
    describe,
    find_local,
    load,
    load_classifier,
    model_folders,
    named,
    resolve,
)
from difflab.pretrained.generate import Samples
from difflab.pretrained.model import (
    FORMAT,
    VERSION,
    Model,
    model_name,
    read_model_config,
)

__all__ = [
    "FORMAT",
    "MODELS_ENV",
    "VERSION",
    "Model",
    "Samples",
    "available",
    "classifiers",
    "describe",
    "find_local",
    "load",
    "load_classifier",
    "model_folders",
    "model_name",
    "named",
    "read_model_config",
    "resolve",
]
