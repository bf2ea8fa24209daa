"""Layer 2: restoration, i.e. inverse problems y = A(x0) + noise solved with a diffusion prior (any
denoiser): measurement operators with their SVD, the :class:`Measurement` every method takes, and
DPS, PiGDM, DDRM and twisted SMC, each judged against the exact posterior of a Gaussian mixture
(docs/inverse.md). (Not :mod:`difflab.inversion`, which maps samples back to their noise.)"""

from difflab.restoration.ddrm import ddrm
from difflab.restoration.dps import dps
from difflab.restoration.likelihood import log_likelihood, posterior_variance
from difflab.restoration.measurement import Measurement, Operator
from difflab.restoration.operators import (
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
from difflab.restoration.pigdm import pigdm, pigdm_denoiser
from difflab.restoration.smc import SMCResult, effective_sample_size, smc, systematic_resample

__all__ = [
    "MASKS",
    "Inpainting",
    "LinearOperator",
    "Matrix",
    "Measurement",
    "Operator",
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
