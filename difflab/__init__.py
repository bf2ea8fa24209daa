"""difflab: diffusion-model research as one correct, fast toolkit."""

__version__ = "0.1.0"
