"""D3PO: direct preference optimization on the denoising MDP, online (Yang et al. 2024).

Pairs of trajectories are sampled from the current model, labelled by Bradley-Terry preferences of
their final samples (:func:`difflab.finetune.dpo.bradley_terry`), and every stochastic step i of the
pair gets DPO's loss with the same label, on the exact transition log-probabilities of
:func:`difflab.sampling.log_probs` and the frozen base model as the reference:

    L = mean_i -log sigmoid(beta [log p_theta(x^w_{i+1} | x^w_i) / p_ref(x^w_{i+1} | x^w_i) - (same for l)]).

Each step's implicit reward beta log p_theta / p_ref then tracks the value of the step's outcome,
the soft-optimal policy's tilt, so beta is close to the KL coefficient of
:func:`difflab.testing.tilted`. The official code clamps each ratio to 1 +- eps (``clip``; off by
default): clamped log-ratios no longer saturate the sigmoid, which is what holds the policy near the
reference, so with a clamp the reward climbs past the optimum. Without it the nearly noise-free last
steps make the loss stiff (a step's log-ratio moves as 1 / s_i^2): use a smaller learning rate
than for DDPO.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

__all__ = ["d3po_loss"]


def d3po_loss(
    log_probs_w: Tensor,
    ref_log_probs_w: Tensor,
    log_probs_l: Tensor,
    ref_log_probs_l: Tensor,
    beta: float,
    stochastic: Tensor,
    clip: float = 0.0,
) -> Tensor:
    """[B] mean over the stochastic steps i of -log sigmoid(beta [log rho^w_i - log rho^l_i]),
    rho_i = p_theta(x_{i+1} | x_i) / p_ref(x_{i+1} | x_i), each clamped to [1 - clip, 1 + clip] when
    clip > 0 ([N, B] log-probabilities; Yang et al. 2024)."""
    log_w, log_l = log_probs_w - ref_log_probs_w, log_probs_l - ref_log_probs_l
    if clip:
        low, high = math.log1p(-clip), math.log1p(clip)
        log_w, log_l = log_w.clamp(low, high), log_l.clamp(low, high)
    return -F.logsigmoid(beta * (log_w - log_l)[stochastic]).mean(0)
