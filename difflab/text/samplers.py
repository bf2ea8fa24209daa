"""Samplers of masked diffusion models, as plain functions of a time-agnostic network, and the
ancestral sampler of uniform-state diffusion (:mod:`difflab.text.uniform`):

    x = sampler(network, z, steps, *, generator=None, callback=None, **options)

``network(z) -> logits [B, L, V]`` predicts x0 at every position (only masked ones are read: SUBS
carry-over), ``network.vocab_size`` = V is the mask id, and z [B, L] is the start: all masks, or some
tokens given (a prompt, an infilling task), which every sampler keeps. Random numbers come from
``generator``: one, or one per sample (``difflab.sampling.generators(seed, B)``), so that a sample
does not depend on its batch. ``callback(info)`` gets a dict with the step ``i``, the current ``z``
and, where the sampler has one, the time ``t`` after the step. Tokens are drawn by
:func:`difflab.text.categorical.categorical` in float64 (``dtype``).

Decoders of diffusion LLMs: low-confidence and random remasking (``confidence``, LLaDA's
``remasking``), threshold parallel decoding (``threshold``, Fast-dLLM), blocks after a prompt
(``semi_ar``), remasking of decoded tokens (``remdm``, ReMDM); classifier-free guidance wraps the
network (:class:`difflab.text.guidance.PromptGuidance`), so every sampler takes it.
"""

from __future__ import annotations

import inspect
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
from difflab.text.uniform import reverse_log_probs, x0_logits

__all__ = [
    "REMASKINGS",
    "REMDM_ETA",
    "SAMPLERS",
    "UNIFORM",
    "accepts",
    "ancestral",
    "available",
    "confidence",
    "first_hitting",
    "get",
    "process",
    "remdm",
    "semi_ar",
    "threshold",
    "uniform_ancestral",
]

# which masked positions a decoding step commits (LLaDA's ``remasking``): the most confident
# candidates, or uniformly chosen ones
REMASKINGS = ("low_confidence", "random")
# ReMDM's sigma_t schedules and the eta of the paper's OpenWebText runs (Wang et al. 2025)
REMDM_ETA = {"cap": 0.008, "rescale": 0.015, "conf": 1.0, "loop": 0.02}

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


def _log_probs(network: Network, z: Tensor, temperature: float, *level: Tensor) -> Tensor:
    """log x_theta(z) at ``temperature`` in float64 [B, L, V]: log softmax(logits / T); T = 0 puts
    all mass on the argmax. ``level``: the noise level a uniform-state network takes."""
    logits = network(z, *level).to(torch.float64)
    if temperature == 0:
        top = logits.argmax(-1, keepdim=True)
        return torch.full_like(logits, -torch.inf).scatter_(-1, top, 0.0)
    return (logits / temperature).log_softmax(-1)


def _check_temperature(temperature: float) -> None:
    if not isinstance(temperature, int | float) or not 0 <= temperature < float("inf"):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")


def _check_remasking(remasking: str) -> None:
    if not isinstance(remasking, str) or remasking not in REMASKINGS:
        raise unknown_name("remasking", str(remasking), REMASKINGS)


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
    times = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    alphas = get_masking(schedule).alpha(times)
    return _reverse(
        network, z, mask_id, times, alphas, None, temperature, cache, dtype, generator, callback
    )


Sigma = Callable[[int, Tensor, Tensor, Tensor, Tensor], Tensor | float]


def _reverse(
    network: Network,
    z: Tensor,
    mask_id: int,
    times: Tensor,
    alphas: Tensor,
    sigma: Sigma | None,
    temperature: float,
    cache: bool,
    dtype: torch.dtype,
    generator: Generator,
    callback: Callback,
) -> Tensor:
    """The reverse steps alphas[i] -> alphas[i + 1] of :func:`ancestral` (``sigma`` None) and
    :func:`remdm`: a masked token stays masked with probability (1 - a_s - sigma a_t)/(1 - a_t) or
    becomes v with (a_s - (1 - sigma) a_t)/(1 - a_t) x_theta(v); a decoded token (not one given in
    z) is masked again with probability sigma = sigma(i, a_t, a_s, revisable, psi) [B, L] or a
    number, psi the probability each decoded token had when drawn."""
    z = z.clone()
    fixed = z != mask_id
    psi = torch.full(z.shape, torch.inf, dtype=torch.float64, device=z.device)
    logp = _log_probs(network, z, temperature)
    stale = torch.zeros(z.shape[0], dtype=torch.bool, device=z.device)
    for i in range(len(times) - 1):
        a_t, a_s = alphas[i], alphas[i + 1]
        if i > 0 and (bool(stale.any()) or not cache):
            rows = stale.nonzero()[:, 0] if cache else torch.arange(z.shape[0], device=z.device)
            logp[rows] = _log_probs(network, z[rows], temperature)
        masked = z == mask_id
        revisable = ~masked & ~fixed
        sig = torch.as_tensor(
            0.0 if sigma is None else sigma(i, a_t, a_s, revisable, psi), dtype=torch.float64
        ).to(z.device)
        stay = torch.log((1 - a_s - sig * a_t) / (1 - a_t)).to(z.device)[..., None]
        move = logp + torch.log((a_s - (1 - sig) * a_t) / (1 - a_t)).to(z.device)[..., None]
        draw = categorical(torch.cat([move, stay.expand(*z.shape, 1)], -1), generator, dtype=dtype)
        new = torch.where(masked, draw, z)  # V: stay masked
        if sigma is not None:
            remask = revisable & (rand(z.shape, generator, torch.float64, z.device) < sig)
            new = torch.where(remask, mask_id, new)
            drawn = logp.gather(-1, draw.clamp(max=mask_id - 1)[..., None])[..., 0].exp()
            psi = torch.where(masked & (new != mask_id), drawn, torch.where(remask, torch.inf, psi))
        stale = (new != z).any(1)
        z = new
        if callback is not None:
            callback({"i": i, "t": float(times[i + 1]), "z": z})
    return z


def remdm(
    network: Network,
    z: Tensor,
    steps: int,
    *,
    schedule: str | Masking = "linear",
    remasking: str = "cap",
    eta: float | None = None,
    t_on: float = 0.55,
    t_off: float = 0.05,
    alpha_on: float = 0.9,
    temperature: float = 1.0,
    cache: bool = True,
    dtype: torch.dtype = torch.float64,
    generator: Generator = None,
    callback: Callback = None,
) -> Tensor:
    """ReMDM remasking sampler (Wang et al. 2025) on t_i = 1 - i/steps: the ancestral step with
    decoded tokens masked again with probability sigma_t, masked ones unmasking with
    (a_s - (1 - sigma_t) a_t)/(1 - a_t) x_theta, which keeps every marginal q(z_s | x) of the
    masking process for any 0 <= sigma_t <= sigma_max = min(1, (1 - a_s)/a_t) (their Thm. 3.1), so
    a trained MDLM network serves as it is. Tokens given in z (a prompt) are never masked.
    ``remasking`` picks sigma_t: "cap" min(eta, sigma_max); "rescale" eta sigma_max; "loop" decodes
    with sigma = 0 while alpha goes from alpha_1 to ``alpha_on`` (t from 1 to ``t_on``), then
    holds alpha = alpha_on with sigma = min(eta, sigma_max) until ``t_off``, then decodes the rest
    (their ReMDM-loop, on the time grid of the schedule); "conf" sigma^l = eta sigma_max
    softmax_l(-psi^l) over decoded tokens, psi^l the probability token l had when it was drawn,
    and sigma = 0 for masked ones (their code). ``eta`` defaults to the paper's OpenWebText value
    of each (:data:`REMDM_ETA`).

    Every step keeps each token's marginal q(z_s | x) for cap, rescale and loop (tested with a
    denoiser that knows x); which decoded tokens are masked again does not depend on their values,
    so with exact conditionals the decoded tokens stay a draw of their joint marginal, and the only
    error is that of tokens unmasked together in one step from their separate conditionals: the
    ancestral sampler's O(1/steps), plus, since a token is remasked and a masked one unmasked with
    probability ~ sigma per step however many steps there are, a part that shrinks with eta rather
    than with the step count (tested: cap at eta 0.05 and 1000 steps samples a joint table's
    distribution). "conf" keeps no marginal: its sigma depends on z (the theorem asks for a
    sigma_t the same for every z; masked tokens unmask at MDLM's rate while decoded ones are
    remasked) and on the tokens' values, so it tilts the samples toward confident tokens, as the
    paper's heuristic intends. One network call per step where a sample's z changed (cached
    otherwise)."""
    mask_id = _start(network, z, steps)
    _check_temperature(temperature)
    if not isinstance(remasking, str) or remasking not in REMDM_ETA:
        raise unknown_name("ReMDM remasking schedule", str(remasking), REMDM_ETA)
    eta = REMDM_ETA[remasking] if eta is None else eta
    if not isinstance(eta, int | float) or not 0 <= eta <= 1:
        raise ValueError(f"eta must be a number in [0, 1], got {eta!r}")
    schedule = get_masking(schedule)
    times = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    alphas = schedule.alpha(times)
    looping = torch.ones(steps, dtype=torch.bool)
    if remasking == "loop":
        if not 0 < t_off < t_on < 1:
            raise ValueError(f"loop times must satisfy 0 < t_off < t_on < 1, got {t_off}, {t_on}")
        if not float(alphas[0]) < alpha_on < 1:
            raise ValueError(f"alpha_on must lie in ({float(alphas[0]):g}, 1), got {alpha_on}")
        t_a = schedule.t_of(torch.tensor(alpha_on, dtype=torch.float64))
        first = schedule.alpha(t_a + (times - t_on) * (1 - t_a) / (1 - t_on))
        last = schedule.alpha(times * t_a / t_off)
        alphas = torch.where(times >= t_on, first, torch.where(times <= t_off, last, alpha_on))
        looping = (times[:-1] <= t_on) & (times[1:] >= t_off)

    def sigma(i: int, a_t: Tensor, a_s: Tensor, revisable: Tensor, psi: Tensor) -> Tensor:
        sigma_max = torch.clamp((1 - a_s) / a_t, max=1.0) if a_t > 0 else torch.ones_like(a_t)
        if remasking == "rescale":
            return eta * sigma_max
        if remasking == "conf":
            weights = torch.where(revisable, -psi, -torch.inf).softmax(-1)
            return eta * sigma_max * torch.nan_to_num(weights)  # rows with nothing decoded: 0
        return torch.clamp(sigma_max, max=eta) * looping[i]

    return _reverse(
        network, z, mask_id, times, alphas, sigma, temperature, cache, dtype, generator, callback
    )


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
    remasking: str = "low_confidence",
    dtype: torch.dtype = torch.float64,
    generator: Generator = None,
    callback: Callback = None,
) -> Tensor:
    """Confidence-based unmasking (MaskGIT, Chang et al. 2022): at step i every masked position
    draws a candidate x^l ~ x_theta(z)^l at ``temperature``; the candidates with the highest
    confidence log x_theta(z)^l_{x^l} + choice_temperature (1 - (i+1)/steps) G^l (G Gumbel) are kept,
    so that n_0 (1 - alpha_s)/(1 - alpha_1) tokens stay masked at s = 1 - (i+1)/steps ("cosine":
    MaskGIT's cos(pi r / 2) masked fraction), at least one unmasked per step. Deterministic
    selection by default (choice_temperature 0, the low-confidence remasking of LLaDA, Nie et al.
    2025); ``remasking`` "random" keeps uniformly chosen candidates instead (LLaDA's other rule:
    with one token per step, the exact sequential sampler). LLaDA's recipe is this sampler with
    ``schedule`` "linear" (the same number of tokens every step) inside :func:`semi_ar` blocks."""
    mask_id = _start(network, z, steps)
    _check_temperature(temperature)
    _check_temperature(choice_temperature)
    _check_remasking(remasking)
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
        if remasking == "random":
            score = rand(draw.shape, g, torch.float64, z.device)
        else:
            score = logp.gather(-1, draw[..., None])[..., 0]
            noise = choice_temperature * (1 - (i + 1) / steps)
            if noise:
                score = score + noise * gumbel(score.shape, g, torch.float64, z.device)
        chosen = masked[rows] & (_rank(score, masked[rows]) < k[:, None])
        z[rows] = torch.where(chosen, draw, z[rows])
        if callback is not None:
            callback({"i": i, "t": float(times[i + 1]), "z": z})
    return z


def _rank(score: Tensor, masked: Tensor) -> Tensor:
    """The rank of each masked position's score [B, L] among the masked ones, 0 the highest."""
    return torch.where(masked, score, -torch.inf).argsort(-1, descending=True).argsort(-1)


def threshold(
    network: Network,
    z: Tensor,
    steps: int | None = None,
    *,
    threshold: float = 0.9,
    remasking: str = "low_confidence",
    temperature: float = 1.0,
    dtype: torch.dtype = torch.float64,
    generator: Generator = None,
    callback: Callback = None,
) -> Tensor:
    """Threshold parallel decoding (Fast-dLLM, Wu et al. 2025): at each step every masked position
    draws a candidate x^l ~ x_theta(z)^l at ``temperature``, and every candidate whose confidence
    x_theta(z)^l_{x^l} (at temperature 1, so that greedy decoding has one) is >= ``threshold`` is
    kept, and at least k = ceil(n_left / steps_left) by ``remasking`` ("low_confidence": the most
    confident; "random": uniformly chosen), so that a sample is done within ``steps`` (default:
    its number of masks; the step count adapts below it, and finished samples stop calling the
    network). A token with probability 1 is determined by the others, so unmasking it with them
    is exact; with ``threshold`` 1, "random" and one token per step this is the exact sequential
    sampler (first-hitting; tested)."""
    mask_id = _start(network, z, steps)
    _check_temperature(temperature)
    _check_remasking(remasking)
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, int | float)
        or not 0 < threshold <= 1
    ):
        raise ValueError(f"threshold must lie in (0, 1], got {threshold!r}")
    z = z.clone()
    masked = z == mask_id
    n0 = int(masked.sum(1).max())
    steps = n0 if steps is None else min(steps, n0)
    for i in range(steps):
        n = masked.sum(1)
        rows = (n > 0).nonzero()[:, 0]
        if len(rows) == 0:
            break
        g = _rows(generator, rows)
        logits = network(z[rows]).to(torch.float64)
        draw = categorical(logits, g, temperature, dtype=dtype)
        sure = logits.log_softmax(-1).gather(-1, draw[..., None])[..., 0].exp()
        score = (
            sure if remasking == "low_confidence" else rand(draw.shape, g, torch.float64, z.device)
        )
        k = torch.ceil(n[rows] / (steps - i)).long()
        chosen = masked[rows] & ((sure >= threshold) | (_rank(score, masked[rows]) < k[:, None]))
        z[rows] = torch.where(chosen, draw, z[rows])
        masked = z == mask_id
        if callback is not None:
            callback({"i": i, "z": z})
    return z


def uniform_ancestral(
    network: Callable[[Tensor, Tensor], Tensor],
    z: Tensor,
    steps: int,
    *,
    schedule: str | Masking = "linear",
    temperature: float = 1.0,
    dtype: torch.dtype = torch.float64,
    generator: Generator = None,
    callback: Callback = None,
) -> Tensor:
    """Ancestral sampling of uniform-state diffusion (D3PM-uniform, Austin et al. 2021) on
    t_i = 1 - i/steps: the positions holding the id V start from the prior, uniform tokens, and each
    step draws z_s^l ~ sum_x q(z_s | z_t, x) x_theta(z_t, alpha_t)^l_x
    (:func:`difflab.text.uniform.reverse_log_probs`, x_theta from ``network(z, alpha)`` by
    :func:`~difflab.text.uniform.x0_logits`, ``temperature`` applied to it).
    Exact in the limit of many steps with exact x0-predictions (tested). Tokens given in z are kept
    and shown to the network as they are (replacement conditioning: the network reads them as
    noisy tokens at level alpha_t, an approximation). One network call per step."""
    mask_id = _start(network, z, steps)
    _check_temperature(temperature)
    times = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    alphas = get_masking(schedule).alpha(times)
    free = z == mask_id
    prior = (rand(z.shape, generator, torch.float64, z.device) * mask_id).long()
    z = torch.where(free, prior.clamp(max=mask_id - 1), z)

    def denoiser(z: Tensor, alpha: Tensor) -> Tensor:
        return x0_logits(network(z, alpha), z, alpha)

    for i in range(steps):
        a_t, a_s = alphas[i], alphas[i + 1]
        level = a_t.to(z.device).expand(z.shape[0])
        logp = _log_probs(denoiser, z, temperature, level)
        draw = categorical(reverse_log_probs(logp, z, a_t, a_s), generator, dtype=dtype)
        z = torch.where(free, draw, z)
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
    sequence after the prompt (the tokens given in every sample before the first mask) is cut into
    blocks of ``block`` tokens decoded left to right, each by the ``inner`` sampler with its share
    of ``steps``, seeing the prompt, the decoded blocks and masks for every later block (tokens
    given there are kept in the output but hidden from the network until their block). ``options``
    go to the inner sampler (a remasking one revises its own block only)."""
    mask_id = _start(network, z, steps)
    if inner == "semi_ar" or process(inner) != "masked":
        raise ValueError(f"semi_ar cannot run {inner!r} within its blocks")
    run = get(inner)
    if not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be a positive integer, got {block!r}")
    length = z.shape[1]
    start = int((z != mask_id).all(0).long().cumprod(0).sum())
    blocks = -(-(length - start) // block)
    if steps < blocks:
        raise ValueError(
            f"{steps} steps cannot decode {blocks} blocks: give at least one per block"
        )
    padded = _Padded(network, length)
    z = z.clone()
    done = 0
    for j in range(blocks):
        end = min(length, start + (j + 1) * block)
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
    "threshold": threshold,
    "remdm": remdm,
    "uniform_ancestral": uniform_ancestral,
}
UNIFORM = ("uniform_ancestral",)  # the samplers of uniform-state models; the others: masked ones


def available(kind: str | None = None) -> list[str]:
    """The sampler names :func:`get` knows; with ``kind`` ("masked", "uniform") those that sample
    that kind of model."""
    return sorted(name for name in SAMPLERS if kind is None or process(name) == kind)


def process(name: str) -> str:
    """The diffusion process a sampler samples: "uniform" or "masked"."""
    return "uniform" if name in UNIFORM else "masked"


def accepts(name: str, option: str) -> bool:
    """Whether sampler ``name`` takes keyword ``option``."""
    return option in inspect.signature(get(name)).parameters


def get(name: str) -> Callable[..., Tensor]:
    """A sampler by name; an unknown name is a ValueError listing the nearest ones."""
    if not isinstance(name, str) or name not in SAMPLERS:
        raise unknown_name("text sampler", str(name), SAMPLERS)
    return SAMPLERS[name]
