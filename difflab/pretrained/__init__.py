"""Layer 5: saved models. A model directory holds ``model.safetensors`` (the network's weights) and
``config.json`` (network, objective, data shape and classes, sampling defaults, training record);
shipped models live in this package's folders and load by name, local directories by path."""

from difflab.pretrained.model import save_model

__all__ = ["save_model"]
