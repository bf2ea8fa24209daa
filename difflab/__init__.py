"""difflab: diffusion-model research as one correct, fast toolkit."""

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """``difflab.load`` (:func:`difflab.pretrained.load`), imported on first use so that
    ``import difflab`` stays cheap."""
    if name == "load":
        from difflab.pretrained import load

        return load
    raise AttributeError(f"module 'difflab' has no attribute {name!r}")
