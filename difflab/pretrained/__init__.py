"""Layer 5: saved models. A model directory holds ``model.safetensors`` (the network's weights) and
``config.json`` (network, objective, data shape and classes, sampling defaults, training record);
shipped models live in this package's folders and load by name, local directories by path.

    model = difflab.load("mnist")              # or a folder: difflab.load("runs/mnist/model")
    x = model.sample(16, labels=3, sampler="dpmpp_2m", steps=10, guidance=2.0, seed=0)
"""

from difflab.pretrained.catalog import (
    MODELS_ENV,
    available,
    describe,
    find_local,
    load,
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
    save_model,
)

__all__ = [
    "FORMAT",
    "MODELS_ENV",
    "VERSION",
    "Model",
    "Samples",
    "available",
    "describe",
    "find_local",
    "load",
    "model_folders",
    "model_name",
    "named",
    "read_model_config",
    "resolve",
    "save_model",
]
