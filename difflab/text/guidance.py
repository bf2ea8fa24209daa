"""Classifier-free guidance of a masked diffusion model by its prompt: the network wrapped, so that
every sampler takes it."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from difflab.text.diffusion import vocab_size

__all__ = ["PromptGuidance"]


class PromptGuidance:
    """logits_w(z) = logits(z') + w (logits(z) - logits(z')), z' = z with the prompt masked
    (classifier-free guidance, Ho & Salimans 2022, with the prompt as the condition, as LLaDA does,
    Nie et al. 2025, whose ``cfg_scale`` is w - 1). ``prompt``: the positions [L] (bool) holding
    the prompt, the same in every sample; a shorter z (a block decoder's view) reads its first
    positions. Both branches run in one batch of 2B rows, so the network's row count doubles; with
    ``weight`` 1 the wrapper is the network itself, bit for bit and at its cost."""

    def __init__(self, network: Callable[[Tensor], Tensor], prompt: Tensor, weight: float) -> None:
        if isinstance(weight, bool) or not isinstance(weight, int | float) or weight != weight:
            raise ValueError(f"the guidance weight must be a number, got {weight!r}")
        prompt = torch.as_tensor(prompt)
        if prompt.ndim != 1 or prompt.dtype != torch.bool:
            raise ValueError(
                f"prompt must be a bool mask [L], got {tuple(prompt.shape)} {prompt.dtype}"
            )
        self.network, self.prompt, self.weight = network, prompt, float(weight)
        self.vocab_size = vocab_size(network)

    def __call__(self, z: Tensor) -> Tensor:
        if self.weight == 1:
            return self.network(z)
        hidden = torch.where(self.prompt[: z.shape[1]].to(z.device), self.vocab_size, z)
        cond, uncond = self.network(torch.cat([z, hidden])).to(torch.float64).chunk(2)
        return uncond + self.weight * (cond - uncond)
