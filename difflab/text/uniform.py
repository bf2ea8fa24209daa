"""Uniform-state discrete diffusion (D3PM-uniform, Austin et al. 2021) in continuous time, with an
x0-predicting network and the exact continuous-time ELBO.

Each token is kept with probability alpha_t and otherwise redrawn uniformly from the V tokens
(possibly itself):

    q(z_t | x) = prod_l Cat(z_t^l; alpha_t e_{x^l} + (1 - alpha_t) / V 1),    alpha_0 = 1,

the masking schedules of :mod:`difflab.text.masking` giving alpha_t. It is the CTMC with rate
beta_t / V from any token to any other, beta_t = -alpha'_t / alpha_t. A uniform-state network maps
(z_t, alpha_t) to logits [B, L, V] of mu_theta, its prediction of x^l from the sequence; unlike a
masked model it needs the noise level (:class:`~difflab.text.transformer.Transformer` with
``level=True``). The x0-prediction is Bayes' rule with the token's own likelihood
(:func:`x0_logits`):

    x_theta(z_t)^l  proportional to  mu_theta(z_t)^l * q_t(z_t^l | .),

the exact form when mu is p(x^l | the other tokens of z_t), and no restriction otherwise (mu sees
z_t^l too). It is the uniform analogue of SUBS's carry-over: as alpha_t -> 1 it returns z_t^l with
1 - x_theta(z_t)^l_{z_t^l} = O(1 - alpha_t), without which the bound below diverges like
int dt / t for any network that is not exact at t = 0.

Why D3PM-uniform with x0-prediction rather than SEDD's score entropy (Lou et al. 2024): both give
the same continuous-time ELBO, but the x0 form reuses the transformer's V-logit head as a
distribution, its exact denoiser is the Bayes posterior over x0 (so the toy tests have one), and its
reverse step is a closed-form mixture of posteriors. The concrete ratios SEDD learns are a function
of it: for y = z with token l set to j,

    p_t(y) / p_t(z) = sum_x p(x^l = x | z) q_t(j | x) / q_t(z^l | x)                      (*)

(the joint posterior marginalizes to the per-token one), so exact per-token x0-predictions give the
exact reverse CTMC. The bound is SEDD's denoising score entropy (Lou et al. 2024, Thm. 3.6; Campbell
et al. 2022) with those ratios, the form the uniform ELBO of Schiff et al. 2024 (UDLM) integrates:

    -log p(x) <= KL(q_1(. | x) || Uniform) + int_0^1 E_{z_t ~ q(. | x)} sum_l sum_{j != z_t^l}
                 beta_t / V  r_j phi(s_j / r_j) dt,   phi(u) = u - 1 - log u >= 0,

with s_j the model's ratio (*) and r_j the same ratio for x_theta = e_{x^l}. For the exact
x_theta it is an equality when alpha_1 = 0 (linear, cosine): the true reverse CTMC.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from difflab.sampling.noise import rand
from difflab.text.diffusion import check_tokens, corruption_times, vocab_size
from difflab.text.masking import Masking
from difflab.text.masking import get as get_masking

__all__ = [
    "corrupt",
    "draw_corruption",
    "exact_uniform_nelbo",
    "prior_kl",
    "reverse_log_probs",
    "uniform_nelbo",
    "uniform_nelbo_terms",
    "x0_logits",
]

Network = Callable[[Tensor, Tensor], Tensor]
Generator = torch.Generator | Sequence[torch.Generator] | None


def corrupt(x0: Tensor, alpha: Tensor | float, vocab: int, generator: Generator = None) -> Tensor:
    """z_t ~ q(z_t | x0): each token of x0 [B, L] is kept with probability alpha (a number or one
    per sequence [B]) and otherwise redrawn uniformly from 0..V-1 (row i from generator i when
    given a list)."""
    u = rand((x0.shape[0], 2, x0.shape[1]), generator, torch.float64, x0.device)
    keep = torch.as_tensor(alpha, dtype=torch.float64, device=x0.device)
    keep = keep.reshape(-1, 1) if keep.ndim else keep
    redrawn = (u[:, 1] * vocab).long().clamp(max=vocab - 1)
    return torch.where(u[:, 0] < keep, x0, redrawn)


def draw_corruption(
    x0: Tensor,
    schedule: str | Masking,
    vocab: int,
    t: Tensor | float | None = None,
    generator: Generator = None,
) -> tuple[Tensor, Tensor]:
    """(t [B], z_t [B, L]) of :func:`uniform_nelbo`'s estimate: t per sequence (default
    :func:`~difflab.text.diffusion.antithetic_times`), then z_t ~ q(z_t | x0), in that order."""
    schedule, t = corruption_times(x0, schedule, vocab, t, generator)
    return t, corrupt(x0, schedule.alpha(t), vocab, generator)


def x0_logits(logits: Tensor, z: Tensor, alpha: Tensor) -> Tensor:
    """log x_theta(z_t) [B, L, V] in float64 (up to a constant per token) from the network's logits
    of mu_theta [B, L, V], z_t [B, L] and alpha_t [B]: logits + log q_t(z_t^l | x), q_t(z | x) =
    alpha_t [z = x] + (1 - alpha_t) / V."""
    vocab = logits.shape[-1]
    a = torch.as_tensor(alpha, dtype=torch.float64, device=logits.device).expand(len(z))
    a = a[:, None, None]
    same = torch.nn.functional.one_hot(z, vocab).bool()
    return logits.double() + torch.log(torch.where(same, a + (1 - a) / vocab, (1 - a) / vocab))


def _excess(q: Tensor, i: Tensor, alpha: Tensor, vocab: int) -> Tensor:
    """s_j - 1 of (*) for x_theta = q [B, L, V] (float64), z^l = i [B, L], alpha [B], every j:
    with a = alpha, b = (1 - a)/V, s_j = q_i b/(a + b) + (1 - q_i) + q_j a/b (j != i), so
    s_j - 1 = -q_i a/(a + b) + q_j a/b: linear in q, so s - r is this map of x_theta - e_x, with
    no cancellation."""
    a = alpha[:, None, None]
    b = (1 - a) / vocab
    return -q.gather(-1, i[..., None]) * (a / (a + b)) + q * (a / b)


def uniform_nelbo_terms(
    logits: Tensor, x0: Tensor, z: Tensor, t: Tensor, schedule: str | Masking = "linear"
) -> Tensor:
    """The integrand of the bound above at times t [B] and states z_t [B, L], given the network's
    logits of mu_theta [B, L, V], nats [B]:
    sum_l sum_{j != z^l} beta_t / V r_j phi(s_j / r_j), computed in float64 with
    s_j / r_j - 1 = (s_j - r_j) / r_j (no cancellation where the model is right)."""
    schedule = get_masking(schedule)
    vocab = logits.shape[-1]
    alpha = schedule.alpha(t).to(torch.float64)
    onehot = torch.nn.functional.one_hot(x0, vocab).double()
    r = 1 + _excess(onehot, z, alpha, vocab)
    p = x0_logits(logits, z, alpha).softmax(-1)
    w = _excess(p - onehot, z, alpha, vocab) / r
    phi = w - torch.log1p(w)
    other = torch.ones_like(phi).scatter_(-1, z[..., None], 0.0)  # j != z^l
    inner = (r * phi * other).sum((1, 2))
    live = (alpha > 0) & (alpha < 1)  # alpha = 0: s = r = 1; alpha = 1 (t = 0): no time
    beta = -schedule.dalpha(t).to(torch.float64) / torch.where(live, alpha, 1.0)
    return torch.where(live, beta / vocab * inner, 0.0)


def prior_kl(schedule: str | Masking, vocab: int) -> float:
    """KL(q_1(. | x) || Uniform) per token, nats: zero when alpha_1 = 0 (linear, cosine);
    log_linear keeps alpha_1 = eps."""
    a1 = float(get_masking(schedule).alpha(torch.tensor(1.0, dtype=torch.float64)))
    if a1 == 0:
        return 0.0
    top, rest = a1 + (1 - a1) / vocab, (1 - a1) / vocab
    return float(top * np.log(vocab * top) + (vocab - 1) * rest * np.log(vocab * rest))


def uniform_nelbo(
    network: Network,
    x0: Tensor,
    schedule: str | Masking = "linear",
    t: Tensor | float | None = None,
    generator: Generator = None,
) -> Tensor:
    """One-sample Monte-Carlo estimate of the negative ELBO above of each sequence x0 [B, L], nats
    [B]: L KL(q_1 || Uniform) + :func:`uniform_nelbo_terms` at t ~ U(0, 1] (antithetic by default)
    and z_t ~ q(z_t | x0). Its expectation bounds -log p(x0) (Austin et al. 2021; Lou et al.
    2024)."""
    schedule = get_masking(schedule)
    vocab = vocab_size(network)
    t, z = draw_corruption(x0, schedule, vocab, t, generator)
    logits = network(z, schedule.alpha(t))
    return uniform_nelbo_terms(logits, x0, z, t, schedule) + x0.shape[1] * prior_kl(schedule, vocab)


def exact_uniform_nelbo(
    network: Network, x0: Tensor, schedule: str | Masking = "linear", nodes: int = 64
) -> Tensor:
    """The expectation of :func:`uniform_nelbo`, nats [B]: E_{z_t} by enumerating all V^L states
    (V^L <= 4096), the time integral by Gauss-Legendre quadrature with ``nodes`` points in u,
    t = u^3 (the integrand behaves like t log t at t = 0; in u it is smooth: 64 nodes give ~1e-10
    on the tests' toys)."""
    schedule = get_masking(schedule)
    vocab = vocab_size(network)
    check_tokens(x0, vocab)
    b, n = x0.shape
    if vocab**n > 4096:
        raise ValueError(f"exact_uniform_nelbo enumerates V^L = {vocab}^{n} states: at most 4096")
    states = torch.tensor(list(itertools.product(range(vocab), repeat=n)), device=x0.device)
    x = x0[:, None].expand(b, len(states), n).reshape(-1, n)
    z = states.expand(b, -1, -1).reshape(-1, n)
    same = (states[None] == x0[:, None]).double()  # [B, S, L]
    u, weights = np.polynomial.legendre.leggauss(nodes)
    total = torch.zeros(b, dtype=torch.float64, device=x0.device)
    for node, weight in zip((u + 1) / 2, weights / 2):
        t = torch.full((len(z),), node**3, dtype=torch.float64, device=x0.device)
        alpha = schedule.alpha(t)
        q = (alpha[0] * same + (1 - alpha[0]) / vocab).prod(-1)  # q(z_t | x0) [B, S]
        terms = uniform_nelbo_terms(network(z, alpha), x, z, t, schedule).reshape(b, -1)
        total += weight * 3 * node**2 * (q * terms).sum(1)
    return total + n * prior_kl(schedule, vocab)


def reverse_log_probs(logp: Tensor, z: Tensor, alpha_t: float, alpha_s: float) -> Tensor:
    """log p(z_s | z_t) [B, L, V] of the reverse step t -> s < t with x_theta = exp(logp)
    (normalized: :func:`x0_logits` then log_softmax):
    sum_x q(z_s | z_t, x) x_theta(x), q(z_s = j | z_t = i, x) proportional to
    q(z_t = i | z_s = j) q(z_s = j | x) (Austin et al. 2021, eq. 3; the uniform case)."""
    vocab = logp.shape[-1]
    p = logp.exp()
    a_ts = alpha_t / alpha_s  # q(z_t | z_s) = a_ts e_{z_s} + (1 - a_ts) / V
    same = torch.nn.functional.one_hot(z, vocab).bool()
    # p_x / q(z_t = i | x): the posterior weight of each x given z_t = i
    w = p / torch.where(same, alpha_t + (1 - alpha_t) / vocab, (1 - alpha_t) / vocab)
    mix = alpha_s * w + (1 - alpha_s) / vocab * w.sum(-1, keepdim=True)
    probs = torch.where(same, a_ts + (1 - a_ts) / vocab, (1 - a_ts) / vocab) * mix
    return torch.log(probs / probs.sum(-1, keepdim=True))
