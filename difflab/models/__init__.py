"""Layer 3: denoising networks, each built from a plain config dict and called as
``net(x_t, time, labels=None, context=None, mask=None, given=None) -> tensor shaped like x_t``.

    net = difflab.models.build({"type": "unet", "in_channels": 1, "image_size": 28, ...})
    net.config  # JSON-serializable dict, defaults filled in: build(net.config) rebuilds it

Images are [B, C, H, W] ("unet", "dit"), vectors [B, D] ("mlp"), sequences [B, T, D] (horizon,
features: "temporal_unet", Diffusion Policy's network; "sequence_transformer", with one noise level
per token, time input [B, T]; "csdi", attention over time and features of a multivariate window). Besides class labels every network takes a context (``context_dim``:
a vector [B, Dc] or, with ``context_length``, a sequence [B, Tc, Dc]) and given entries (``mask``,
``given`` with ``given_input``): :mod:`difflab.models.context`.

Class label -1 (or ``labels=None``) is the null class of classifier-free guidance, a NaN context row
(or ``context=None``) the null context. Also here: the classifier networks
(:mod:`~difflab.models.classifiers`), perturbed-attention guidance on these networks
(:func:`perturbed_attention`) and the config of a saved diffusion model
(:func:`~difflab.models.saved.diffusion_config`).
"""

from difflab.models.attention import (
    Attention,
    attention_layers,
    identity_attention,
    perturbed_attention,
)
from difflab.models.classifiers import MnistClassifier, NoisyClassifier
from difflab.models.csdi import CSDI
from difflab.models.dit import DiT
from difflab.models.mlp import MLP
from difflab.models.registry import Network, available, build, register
from difflab.models.saved import diffusion_config
from difflab.models.sequence_transformer import SequenceTransformer
from difflab.models.summary import flops, parameter_count, summary
from difflab.models.temporal_unet import TemporalUNet
from difflab.models.unet import UNet

__all__ = [
    "CSDI",
    "MLP",
    "Attention",
    "DiT",
    "MnistClassifier",
    "Network",
    "NoisyClassifier",
    "SequenceTransformer",
    "TemporalUNet",
    "UNet",
    "attention_layers",
    "available",
    "build",
    "diffusion_config",
    "flops",
    "identity_attention",
    "parameter_count",
    "perturbed_attention",
    "register",
    "summary",
]
