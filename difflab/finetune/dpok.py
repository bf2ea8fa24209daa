"""DPOK: policy gradient on the denoising MDP with a KL regularizer to the base model (Fan et al.
2023).

The objective is E[r(x_N)] - beta KL(p_theta(x_0:N) || p_base(x_0:N)), the chains' KL being the sum
of the Gaussian steps' KL (:func:`difflab.finetune.kl.step_kl`). Its gradient has two parts: the
policy gradient of the KL-penalized return A = r - beta sum_i KL_i - baseline, and the KL's own
gradient at the sampled states (DPOK's regularizer). With both, the optimum is exactly
p exp(r / beta) / Z (:func:`difflab.testing.tilted`); DPOK's code keeps the second alone. Updates
reuse a round of trajectories through the importance ratio rho_i clamped to [1 - eps, 1 + eps], as
DPOK's Algorithm 1 does; the baseline is the label's running mean reward (no scaling by the std,
which would change the balance with beta).
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["dpok_loss"]


def dpok_loss(
    log_probs: Tensor,
    old_log_probs: Tensor,
    advantages: Tensor,
    kl: Tensor,
    beta: float,
    clip: float,
    stochastic: Tensor,
) -> Tensor:
    """[B] mean over the stochastic steps i of -A clamp(rho_i, 1 - eps, 1 + eps) + beta KL_i,
    rho_i = exp(log p_theta - log p_old), KL_i the step's KL to the base at the recorded state
    ([N, B] each; Fan et al. 2023, Algorithm 1)."""
    ratio = (log_probs - old_log_probs)[stochastic].exp().clamp(1 - clip, 1 + clip)
    return (-advantages.to(ratio.dtype) * ratio + beta * kl[stochastic].to(ratio.dtype)).mean(0)
