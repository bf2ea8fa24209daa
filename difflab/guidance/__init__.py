"""Layer 2: guidance as denoiser transformations, so every sampler works with every guidance."""

from difflab.guidance.cfg import classifier_free

__all__ = ["classifier_free"]
