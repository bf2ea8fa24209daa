"""Layer 3: denoising networks, each built from a plain config dict and called as
``net(x_t, time, labels=None) -> tensor shaped like x_t``.

    net = difflab.models.build({"type": "unet", "in_channels": 1, "image_size": 28, ...})
    net.config  # JSON-serializable dict, defaults filled in: build(net.config) rebuilds it

Class label -1 (or ``labels=None``) is the null class of classifier-free guidance.
"""

from difflab.models.attention import Attention, attention_layers, identity_attention
from difflab.models.dit import DiT
from difflab.models.mlp import MLP
from difflab.models.registry import Network, available, build, register
from difflab.models.summary import flops, parameter_count, summary
from difflab.models.unet import UNet

__all__ = [
    "MLP",
    "Attention",
    "DiT",
    "Network",
    "UNet",
    "attention_layers",
    "available",
    "build",
    "flops",
    "identity_attention",
    "parameter_count",
    "register",
    "summary",
]
