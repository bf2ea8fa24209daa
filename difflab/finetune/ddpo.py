"""DDPO: proximal policy optimization on the denoising MDP (Black et al. 2023, DDPO_IS).

The sampler's steps are the MDP's actions, x_{i+1} ~ p_theta(. | x_i) with the log-probabilities
of :func:`difflab.sampling.trajectory`; the reward comes at the end. A round of trajectories is
sampled without gradients, its rewards become advantages normalized per label
(:class:`~difflab.finetune.advantages.LabelStats`), and several updates of the clipped surrogate

    L = mean_i max(-A rho_i, -A clip(rho_i, 1 - eps, 1 + eps)),   rho_i = p_theta(x_{i+1} | x_i) / p_old(x_{i+1} | x_i)

follow (Schulman et al. 2017, eq. 7), rho_i re-scored by :func:`difflab.sampling.log_probs`. The
optional KL to the base model enters the reward as the sampled log-ratio of the whole chain (its
score-function gradient is that of the chains' KL), so the optimum of E[r] - beta KL is the tilted
p exp(r / beta) / Z of :func:`difflab.testing.tilted`. Log-probabilities are those of whole
transitions (summed over elements); ddpo-pytorch's clip range 1e-4 is on their per-element mean.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["kl_penalized_reward", "ppo_loss"]


def kl_penalized_reward(
    reward: Tensor, log_probs: Tensor, base_log_probs: Tensor, beta: float
) -> Tensor:
    """r~ = r - beta sum_i log p_old(x_{i+1} | x_i) / p_base(x_{i+1} | x_i) [B]: the chain's sampled
    KL to the base as a reward penalty (Ziegler et al. 2019; Black et al. 2023)."""
    if beta == 0:
        return reward.to(log_probs.dtype)
    return reward.to(log_probs.dtype) - beta * (log_probs - base_log_probs).sum(0)


def ppo_loss(
    log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, clip: float, stochastic: Tensor
) -> Tensor:
    """[B] mean over the stochastic steps i of max(-A rho_i, -A clip(rho_i, 1 - eps, 1 + eps)),
    rho_i = exp(log p_theta - log p_old) ([N, B] log-probabilities; Schulman et al. 2017, eq. 7;
    Black et al. 2023)."""
    ratio = (log_probs - old_log_probs)[stochastic].exp()
    a = advantages.to(ratio.dtype)
    surrogate = (-a * ratio).maximum(-a * ratio.clamp(1 - clip, 1 + clip))
    return surrogate.mean(0)
