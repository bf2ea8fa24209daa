"""Layer 2: inverse problems y = A(x0) + noise solved with a diffusion prior (any denoiser):
measurement operators with their SVD, and DPS, PiGDM, DDRM and twisted SMC, each judged against
the exact posterior of a Gaussian mixture (docs/inverse.md)."""

from difflab.inverse.ddrm import ddrm
from difflab.inverse.dps import dps
from difflab.inverse.likelihood import log_likelihood, posterior_variance
from difflab.inverse.operators import (
    MASKS,
    Inpainting,
    LinearOperator,
    Matrix,
    Separable,
    downsample,
    gaussian_blur,
    mask,
    random_projection,
    uniform_blur,
)
from difflab.inverse.pigdm import pigdm, pigdm_denoiser
from difflab.inverse.smc import SMCResult, effective_sample_size, smc, systematic_resample

__all__ = [
    "MASKS",
    "Inpainting",
    "LinearOperator",
    "Matrix",
    "SMCResult",
    "Separable",
    "ddrm",
    "downsample",
    "dps",
    "effective_sample_size",
    "gaussian_blur",
    "log_likelihood",
    "mask",
    "pigdm",
    "pigdm_denoiser",
    "posterior_variance",
    "random_projection",
    "smc",
    "systematic_resample",
    "uniform_blur",
]
