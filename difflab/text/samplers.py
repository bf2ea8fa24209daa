"""Samplers of masked diffusion models, as plain functions of a time-agnostic network:

    x = sampler(network, z, steps, *, generator=None, callback=None, **options)

``network(z) -> logits [B, L, V]`` predicts x0 at every position (only masked ones are read: SUBS
carry-over), ``network.vocab_size`` = V is the mask id, and z [B, L] is the start: all masks, or some
tokens given (a prompt, an infilling task), which every sampler keeps. Random numbers come from
``generator``: one, or one per sample (``difflab.sampling.generators(seed, B)``), so that a sample
does not depend on its batch. ``callback(info)`` gets a dict with the step ``i``, the current ``z``
and, where the sampler has one, the time ``t`` after the step. Tokens are drawn by
:func:`difflab.text.categorical.categorical` in float64 (``dtype``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from difflab.core.tensors import unknown_name
from difflab.sampling.noise import rand
from difflab.text.categorical import categorical, gumbel
from difflab.text.diffusion import check_tokens, vocab_size
from difflab.text.masking import Masking
from difflab.text.masking import get as get_masking

__all__ = ["SAMPLERS", "ancestral", "available", "confidence", "first_hitting", "get", "semi_ar"]

Network = Callable[[Tensor], Tensor]
Generator = torch.Generator | Sequence[torch.Generator] | None
Callback = Callable[[dict[str, Any]], None] | None


def _start(network: Network, z: Tensor, steps: int | None) -> int:
    mask_id = vocab_size(network)
    check_tokens(z, mask_id, "z", allow_mask=True)
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    return mask_id


def _rows(generator: Generator, rows: Tensor) -> Generator:
    """The generators of the selected rows (a shared generator stays shared)."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    return [generator[i] for i in rows.tolist()]


def _log_probs(network: Network, z: Tensor, temperature: float) -> Tensor:
    """log x_theta(z) at ``temperature`` in float64 [B, L, V]: log softmax(logits / T); T = 0 puts
    all mass on the argmax."""
    logits = network(z).to(torch.float64)
    if temperature == 0:
        top = logits.argmax(-1, keepdim=True)
        return torch.full_like(logits, -torch.inf).scatter_(-1, top, 0.0)
    return (logits / temperature).log_softmax(-1)


def _check_temperature(temperature: float) -> None:
    if not isinstance(temperature, int | float) or not 0 <= temperature < float("inf"):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")


def ancestral(
    network: Network,
    z: Tensor,
    steps: int,
    *,
    schedule: str | Masking = "linear",
    temperature: float = 1.0,
    cache: bool = True,
    dtype: torch.dtype = torch.float64,
    generator: Generator = None,
    callback: Callback = None,
) -> Tensor:
    """D3PM / MDLM ancestral sampling on t_i = 1 - i/steps: each masked token z_t^l = m draws
    z_s^l ~ q(z_s | z_t, x_theta) = (1 - alpha_s)/(1 - alpha_t) [stay m] + (alpha_s - alpha_t)/(1 - alpha_t)
    x_theta(z_t)^l (Austin et al. 2021; Sahoo et al. 2024, eq. 7), one categorical over V + 1 outcomes.
    ``cache``: a sample whose z did not change keeps its network output (the network is
    time-agnostic), so the network runs only on the rows that changed (MDLM's caching); the output is
    the same as without it. NFE per sample <= min(steps, number of distinct states)."""
    mask_id = _start(network, z, steps)
    _check_temperature(temperature)
    schedule = get_masking(schedule)
    times = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    alphas = schedule.alpha(times)
    z = z.clone()
    logp = _log_probs(network, z, temperature)
    stale = torch.zeros(z.shape[0], dtype=torch.bool, device=z.device)
    for i in range(steps):
        a_t, a_s = alphas[i], alphas[i + 1]
        if i > 0 and (bool(stale.any()) or not cache):
            rows = stale.nonzero()[:, 0] if cache else torch.arange(z.shape[0], device=z.device)
            logp[rows] = _log_probs(network, z[rows], temperature)
        stay = torch.log((1 - a_s) / (1 - a_t)).to(z.device).expand(*z.shape, 1)
        move = logp + torch.log((a_s - a_t) / (1 - a_t)).to(z.device)
        draw = categorical(torch.cat([move, stay], -1), generator, dtype=dtype)  # V: stay masked
        masked = z == mask_id
        stale = (masked & (draw != mask_id)).any(1)
        z = torch.where(masked, draw, z)
        if callback is not None:
            callback({"i": i, "t": float(times[i + 1]), "z": z})
    return z


def first_hitting(
    network: Network,
    z: Tensor,
    steps: int | None = None,
    *,
    schedule: str | Masking = "linear",
    temperature: float = 1.0,
    dtype: torch.dtype = torch.float64,
    generator: Generator = None,
    callback: Callback = None,
) -> Tensor:
    """The first-hitting sampler (Zheng et al. 2024, Alg. 1): with n tokens masked at time t, the
    next time one of them unmasks solves 1 - alpha_s = (1 - alpha_t) u^(1/n), u ~ U(0, 1) (each
    masked token's unmasking time has P(still masked at s) = (1 - alpha_s)/(1 - alpha_t)); that token
    is uniform among the masked ones and draws its value from x_theta(z). One token and one network
    call per step: exactly the ancestral process in the limit of infinitely many steps. The time is
    reported to ``callback``; a time-agnostic network does not read it.

    ``steps`` < n unmasks ceil(n_left / steps_left) tokens per step (parallel decoding, no longer
    exact); the time is then that of the k-th of n unmaskings, prod_j u_j^(1/(n-j))."""
    mask_id = _start(network, z, steps)
    _check_temperature(temperature)
    schedule = get_masking(schedule)
    z = z.clone()
    masked = z == mask_id
    n0 = int(masked.sum(1).max())
    steps = n0 if steps is None else min(steps, n0)
    t = torch.ones(z.shape[0], dtype=torch.float64, device=z.device)
    length = z.shape[1]
    for i in range(steps):
        n = masked.sum(1)
        rows = (n > 0).nonzero()[:, 0]
        n, g = n[rows], _rows(generator, rows)
        k = torch.ceil(n / (steps - i)).long()
        kmax = int(k.max())
        u = rand((len(rows), length + kmax), g, torch.float64, z.device)
        # where: k uniformly chosen masked positions (the top k of uniform scores)
        scores = torch.where(masked[rows], u[:, :length], -1.0)
        where = scores.argsort(-1, descending=True)[:, :kmax]
        valid = torch.arange(kmax, device=z.device) < k[:, None]
        # when: 1 - alpha_s = (1 - alpha_t) prod_{j<k} u_j^(1/(n-j))
        j = torch.arange(kmax, device=z.device)
        log_v = torch.where(valid, torch.log(u[:, length:]) / (n[:, None] - j).clamp(min=1), 0.0)
        alpha = 1 - (1 - schedule.alpha(t[rows])) * torch.exp(log_v.sum(1))
        t[rows] = schedule.t_of(alpha)
        # what: x_theta at those positions
        logp = _log_probs(network, z[rows], temperature)
        picked = logp.gather(1, where[..., None].expand(-1, -1, logp.shape[-1]))
        draw = categorical(picked, g, dtype=dtype)
        zr = z[rows]
        zr.scatter_(1, where, torch.where(valid, draw, zr.gather(1, where)))
        z[rows] = zr
        masked = z == mask_id
        if callback is not None:
            callback({"i": i, "t": t.clone(), "z": z})
    return z


def confidence(
    network: Network,
    z: Tensor,
    steps: int,
    *,
    schedule: str | Masking = "cosine",
    temperature: float = 1.0,
    choice_temperature: float = 0.0,
    dtype: torch.dtype = torch.float64,
    generator: Generator = None,
    callback: Callback = None,
) -> Tensor:
    """Confidence-based unmasking (MaskGIT, Chang et al. 2022): at step i every masked position
    draws a candidate x^l ~ x_theta(z)^l at ``temperature``; the candidates with the highest
    confidence log x_theta(z)^l_{x^l} + choice_temperature (1 - (i+1)/steps) G^l (G Gumbel) are kept,
    so that n_0 (1 - alpha_s)/(1 - alpha_1) tokens stay masked at s = 1 - (i+1)/steps ("cosine":
    MaskGIT's cos(pi r / 2) masked fraction), at least one unmasked per step. Deterministic
    selection by default (choice_temperature 0, the low-confidence remasking of LLaDA)."""
    mask_id = _start(network, z, steps)
    _check_temperature(temperature)
    _check_temperature(choice_temperature)
    schedule = get_masking(schedule)
    times = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    masked_fraction = (1 - schedule.alpha(times)) / (1 - schedule.alpha(times[:1]))
    z = z.clone()
    n0 = (z == mask_id).sum(1)
    for i in range(steps):
        masked = z == mask_id
        n = masked.sum(1)
        rows = (n > 0).nonzero()[:, 0]
        if len(rows) == 0:
            break
        g = _rows(generator, rows)
        keep = torch.floor(n0[rows] * masked_fraction[i + 1].item()).long()
        k = n[rows] - torch.minimum(keep, n[rows] - 1)  # tokens to unmask in this step
        logp = _log_probs(network, z[rows], temperature)
        draw = categorical(logp, g, dtype=dtype)
        score = logp.gather(-1, draw[..., None])[..., 0]
        noise = choice_temperature * (1 - (i + 1) / steps)
        if noise:
            score = score + noise * gumbel(score.shape, g, torch.float64, z.device)
        score = torch.where(masked[rows], score, -torch.inf)
        rank = score.argsort(-1, descending=True).argsort(-1)
        chosen = masked[rows] & (rank < k[:, None])
        z[rows] = torch.where(chosen, draw, z[rows])
        if callback is not None:
            callback({"i": i, "t": float(times[i + 1]), "z": z})
    return z


class _Padded:
    """The network seeing a prefix z [B, l] followed by masks up to ``length`` (the future blocks
    of semi-autoregressive decoding); returns the prefix's logits."""

    def __init__(self, network: Network, length: int) -> None:
        self.network, self.length = network, length
        self.vocab_size = vocab_size(network)

    def __call__(self, z: Tensor) -> Tensor:
        pad = self.length - z.shape[1]
        return self.network(torch.nn.functional.pad(z, (0, pad), value=self.vocab_size))[
            :, : z.shape[1]
        ]


def semi_ar(
    network: Network,
    z: Tensor,
    steps: int,
    *,
    block: int = 32,
    inner: str = "first_hitting",
    generator: Generator = None,
    callback: Callback = None,
    **options: Any,
) -> Tensor:
    """Semi-autoregressive block decoding (Han et al. 2023, SSD-LM; Nie et al. 2025, LLaDA): the
    sequence is cut into blocks of ``block`` tokens decoded left to right, each by the ``inner``
    sampler with its share of ``steps``, seeing the decoded prefix and masks for every later block
    (tokens given there are kept in the output but hidden from the network until their block).
    ``options`` go to the inner sampler."""
    _start(network, z, steps)
    if inner == "semi_ar":
        raise ValueError("semi_ar cannot be its own inner sampler")
    run = get(inner)
    if not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be a positive integer, got {block!r}")
    length = z.shape[1]
    blocks = -(-length // block)
    if steps < blocks:
        raise ValueError(
            f"{steps} steps cannot decode {blocks} blocks: give at least one per block"
        )
    padded = _Padded(network, length)
    z = z.clone()
    done = 0
    for j in range(blocks):
        end = min(length, (j + 1) * block)
        share = steps // blocks + (j < steps % blocks)
        view = run(padded, z[:, :end], share, generator=generator, **options)
        z[:, :end] = view
        if callback is not None:
            callback({"i": done + share - 1, "block": j, "z": z})
        done += share
    return z


SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "ancestral": ancestral,
    "first_hitting": first_hitting,
    "confidence": confidence,
    "semi_ar": semi_ar,
}


def available() -> list[str]:
    """The sampler names :func:`get` knows."""
    return sorted(SAMPLERS)


def get(name: str) -> Callable[..., Tensor]:
    """A sampler by name; an unknown name is a ValueError listing the nearest ones."""
    if not isinstance(name, str) or name not in SAMPLERS:
        raise unknown_name("text sampler", str(name), SAMPLERS)
    return SAMPLERS[name]
