"""Class embeddings as a continuous input: the analogue of a text embedding for difflab's
class-conditional networks, so that methods which optimize the conditioning vector (null-text
inversion, difflab.inversion) work on them.

Every difflab network adds e_y = ``class_embed(labels)`` (a learned row per class and one for the
null class, label -1) to its time embedding; :func:`embedding_denoiser` lets a caller give e_y
directly, one vector per sample.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from difflab.models.embeddings import ClassEmbedding

__all__ = ["embedding_denoiser", "null_embedding"]


def _class_embed(network: nn.Module) -> ClassEmbedding:
    embed = getattr(network, "class_embed", None)
    if not isinstance(embed, ClassEmbedding):
        raise ValueError(
            f"{type(network).__name__} has no class embedding (an unconditional network, or not "
            "a difflab network): there is no class vector to give or optimize"
        )
    return embed


def null_embedding(network: nn.Module, batch: int) -> Tensor:
    """The null class's trained embedding row, one copy per sample [batch, dim] (a fresh tensor
    to optimize)."""
    embed = _class_embed(network)
    return embed.table.weight[embed.num_classes].detach().clone().expand(batch, -1).clone()


def embedding_denoiser(
    denoiser: Callable[..., Tensor], network: nn.Module
) -> Callable[..., Tensor]:
    """D(x, sigma, labels=None, class_embedding=None): ``denoiser`` (which runs ``network``) with
    the class embedding e_y replaced by ``class_embedding`` [B, dim] when given (labels are then
    ignored); gradients flow to it."""
    embed = _class_embed(network)

    def run(
        x: Tensor,
        sigma: Tensor,
        labels: Tensor | None = None,
        class_embedding: Tensor | None = None,
    ) -> Tensor:
        if class_embedding is None:
            return denoiser(x, sigma, labels=labels)
        dim = embed.table.embedding_dim
        if class_embedding.shape != (x.shape[0], dim):
            raise ValueError(
                f"class_embedding must be [{x.shape[0]}, {dim}], got {tuple(class_embedding.shape)}"
            )

        def replace_output(module: nn.Module, args: Any, output: Tensor) -> Tensor:
            return class_embedding.to(output.dtype)

        handle = embed.register_forward_hook(replace_output)
        try:
            return denoiser(x, sigma)
        finally:
            handle.remove()

    return run
