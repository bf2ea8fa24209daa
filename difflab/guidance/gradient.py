"""Guidance by a gradient: a noise-conditional classifier or any differentiable reward tilts the
denoiser through Tweedie's formula E[x0 | x] = x + sigma^2 grad log p_sigma(x).

Classifier guidance. For the tilted density p_s(x | c) ∝ p_sigma(x) p(c | x, sigma)^s,

    D_s(x, sigma, c) = D(x, sigma) + s sigma^2 grad_x log p(c | x, sigma),

and at s = 1 with the exact classifier this is exactly E[x0 | x, c] (Dhariwal & Nichol 2021).

Reward guidance. For the target p_lam(x0) ∝ p(x0) exp(lam r(x0)), the exact guided denoiser is
E_lam[x0 | x] = D + sigma^2 grad_x log Z(x) with Z(x) = E[exp(lam r(x0)) | x]. Taking
log Z ≈ lam r(D(x, sigma)) (the reward at the posterior mean) gives

    D_lam = D + lam sigma^2 J^T grad r(D),   J = dD/dx = Cov[x0 | x] / sigma^2 (symmetric),
          = D + lam Cov[x0 | x] grad r(D),

which is exact for Gaussian data and a linear reward (Cov[x0 | x] does not depend on x there). It
needs the gradient through the denoiser; ``jacobian=False`` drops J (J ≈ I, right as sigma -> 0 for
full-rank data), at the cost of one denoiser evaluation without backpropagation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from difflab.core.tensors import as_tensor, broadcast_sigma
from difflab.guidance.guided import Denoiser

__all__ = ["classifier_guidance", "reward_guidance"]

Classifier = Callable[[Tensor, Tensor], Tensor]
Reward = Callable[..., Tensor]


def _tilt(denoised: Tensor, grad: Tensor, sigma: Tensor | float, scale: float) -> Tensor:
    """D + scale sigma^2 grad, and D at sigma = inf (x holds the unit noise there)."""
    s = broadcast_sigma(as_tensor(sigma).to(device=denoised.device, dtype=denoised.dtype), denoised)
    return torch.where(torch.isinf(s), denoised, denoised + scale * s.square() * grad)


def _check(scale: float) -> None:
    if not (isinstance(scale, int | float) and abs(scale) < float("inf")):
        raise ValueError(f"guidance scale must be a finite number, got {scale}")


def _denoiser_cond(cond: dict[str, Any], labels: Tensor | None, conditional: bool) -> dict:
    return {**cond, "labels": labels} if conditional else cond


def classifier_guidance(
    denoiser: Denoiser, classifier: Classifier, scale: float = 1.0, conditional: bool = False
) -> Denoiser:
    """D(x, sigma) + s sigma^2 grad_x log softmax(classifier(x, sigma))[labels] (module docstring).

    ``classifier(x, sigma) -> logits [B, C]`` is noise-conditional (e.g.
    ``difflab.pretrained.load_classifier("mnist_noisy_classifier")``). The denoiser is called without ``labels``
    (for difflab's conditional models: the null class) unless ``conditional``."""
    _check(scale)

    def guided(x: Tensor, sigma: Tensor | float, labels: Tensor, **cond: Any) -> Tensor:
        denoised = denoiser(x, sigma, **_denoiser_cond(cond, labels, conditional))
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            logits = classifier(xg, as_tensor(sigma).to(x.device))
            log_p = logits.log_softmax(-1).gather(1, labels.reshape(-1, 1).to(x.device)).sum()
            (grad,) = torch.autograd.grad(log_p, xg)
        return _tilt(denoised.detach(), grad, sigma, scale)

    return guided


def reward_guidance(
    denoiser: Denoiser,
    reward: Reward,
    scale: float,
    jacobian: bool = True,
    conditional: bool = True,
) -> Denoiser:
    """D + lam sigma^2 grad_x r(D(x, sigma)) for the target p(x0) exp(lam r(x0)) (module docstring);
    ``reward(x0, **cond) -> [B]`` is any differentiable function of the clean sample (it receives the
    conditioning, labels included). ``jacobian=False``: D + lam sigma^2 grad r(D). The denoiser gets
    the labels when ``conditional``."""
    _check(scale)

    def guided(x: Tensor, sigma: Tensor | float, **cond: Any) -> Tensor:
        labels = cond.pop("labels", None)
        den_cond = _denoiser_cond(cond, labels, conditional and labels is not None)
        rew_cond = cond if labels is None else {**cond, "labels": labels}
        with torch.enable_grad():
            if jacobian:
                wrt = x.detach().requires_grad_(True)
                denoised = denoiser(wrt, sigma, **den_cond)
                value = reward(denoised, **rew_cond)
            else:
                denoised = denoiser(x, sigma, **den_cond).detach()
                wrt = denoised.clone().requires_grad_(True)
                value = reward(wrt, **rew_cond)
            if value.shape != (x.shape[0],):
                raise ValueError(
                    f"the reward must return one value per sample [{x.shape[0]}], got "
                    f"{tuple(value.shape)}"
                )
            (grad,) = torch.autograd.grad(value.sum(), wrt)
        return _tilt(denoised.detach(), grad, sigma, scale)

    return guided
