"""The masked diffusion ELBO with the SUBS parameterization (MDLM, Sahoo et al. 2024).

A text network maps z_t [B, L] (ids 0..V-1, mask id V = ``network.vocab_size``) to logits [B, L, V]
of x_theta(z_t) ~ p(x0 | z_t). SUBS: the mask is never predicted (the logits have no mask entry:
"zero masking probabilities") and unmasked tokens are copied through ("carry-over unmasking"), so
only masked positions carry a loss. With alpha_0 = 1 the continuous-time negative ELBO is

    -log p(x) <= E_{t ~ U(0,1]} E_{z_t} [ -alpha'_t / (1 - alpha_t) sum_{l: z_t^l = m} -log x_theta(z_t)^l_{x^l} ]

(Sahoo et al. 2024, eq. 10; Shi et al. 2024, eq. 5). For a time-agnostic network it is an integral
over the mask rate r = 1 - alpha_t, int_0^{r_1} E_{z ~ r}[sum_masked -log x_theta] dr / r, the same
for every schedule with the same r_1 = 1 - alpha_1; integrating r^(k-1) (1-r)^(L-k) in closed form
gives the any-order form of :func:`exact_nelbo` (Ou et al. 2024; Hoogeboom et al. 2022).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from difflab.sampling.noise import rand
from difflab.text.masking import Masking
from difflab.text.masking import get as get_masking

__all__ = [
    "antithetic_times",
    "autoregressive_nll",
    "check_tokens",
    "draw_masks",
    "exact_nelbo",
    "mask",
    "masked_nelbo",
    "nelbo",
    "vocab_size",
]

Network = Callable[[Tensor], Tensor]
Generator = torch.Generator | Sequence[torch.Generator] | None


def vocab_size(network: Network) -> int:
    """V of a text network: it predicts ids 0..V-1 and reads id V as the mask (or start) token."""
    v = getattr(network, "vocab_size", None)
    if not isinstance(v, int) or v < 1:
        raise ValueError(
            "a text network needs an integer attribute vocab_size (its mask id), "
            f"got {type(network).__name__} with vocab_size={v!r}"
        )
    return v


def check_tokens(x: Tensor, vocab: int, what: str = "x0", allow_mask: bool = False) -> Tensor:
    """Raise a ValueError unless ``x`` is int64 ids [B, L] in 0..V-1 (0..V with the mask)."""
    if x.ndim != 2 or x.dtype != torch.long:
        raise ValueError(f"{what} must be token ids [B, L] (int64), got {tuple(x.shape)} {x.dtype}")
    top = vocab if allow_mask else vocab - 1
    if x.numel() and (int(x.min()) < 0 or int(x.max()) > top):
        raise ValueError(
            f"{what} holds ids in [{int(x.min())}, {int(x.max())}], outside 0..{top}"
            + (f" ({vocab} is the mask)" if allow_mask else "")
        )
    return x


def mask(x0: Tensor, alpha: Tensor, mask_id: int, generator: Generator = None) -> Tensor:
    """z_t ~ q(z_t | x0): each token of x0 [B, L] becomes ``mask_id`` with probability 1 - alpha
    (a number or one per sequence [B])."""
    u = rand(x0.shape, generator, torch.float64, x0.device)
    keep = torch.as_tensor(alpha, dtype=torch.float64, device=x0.device)
    return torch.where(u >= keep.reshape(-1, 1) if keep.ndim else u >= keep, mask_id, x0)


def antithetic_times(
    n: int, generator: torch.Generator | None = None, device: str | torch.device = "cpu"
) -> Tensor:
    """n times in (0, 1], t_i = 1 - ((u + i/n) mod 1) with one shared u ~ U[0, 1): each t_i is
    uniform and together they cover (0, 1] evenly (Kingma et al. 2021; MDLM's low-discrepancy
    sampler), which lowers the variance of a batch's ELBO estimate."""
    u = torch.rand((), generator=generator, dtype=torch.float64)
    return (1 - torch.remainder(u + torch.arange(n, dtype=torch.float64) / n, 1.0)).to(device)


def nelbo(
    network: Network,
    x0: Tensor,
    schedule: str | Masking = "linear",
    t: Tensor | float | None = None,
    generator: Generator = None,
) -> Tensor:
    """One-sample Monte-Carlo estimate of the negative ELBO of each sequence x0 [B, L] in nats [B]:
    -alpha'_t / (1 - alpha_t) * sum_{masked l} -log x_theta(z_t)^l_{x0^l} with z_t ~ q(z_t | x0) and
    t per sequence (default: :func:`antithetic_times`). Its expectation is the bound above (the
    log_linear schedule's alpha_1 = eps leaves out the last eps of mask rates, as in MDLM)."""
    schedule = get_masking(schedule)
    vocab = vocab_size(network)
    t, z = draw_masks(x0, schedule, vocab, t, generator)
    return masked_nelbo(network, x0, z, t, schedule, vocab)


def draw_masks(
    x0: Tensor,
    schedule: str | Masking,
    vocab: int,
    t: Tensor | float | None = None,
    generator: Generator = None,
) -> tuple[Tensor, Tensor]:
    """(t [B], z_t [B, L]) of :func:`nelbo`'s estimate: t per sequence (default
    :func:`antithetic_times`), then z_t ~ q(z_t | x0) with mask id ``vocab``, in that order from
    ``generator``."""
    schedule, t = corruption_times(x0, schedule, vocab, t, generator)
    return t, mask(x0, schedule.alpha(t), vocab, generator)


def corruption_times(
    x0: Tensor,
    schedule: str | Masking,
    vocab: int,
    t: Tensor | float | None = None,
    generator: Generator = None,
) -> tuple[Masking, Tensor]:
    """(schedule, t [B]) for corrupting x0: the tokens checked, t given or drawn antithetically
    from ``generator`` (the first draw of an ELBO estimate), each in (0, 1]."""
    schedule = get_masking(schedule)
    check_tokens(x0, vocab)
    if t is None:
        g = generator if isinstance(generator, torch.Generator) else None
        t = antithetic_times(x0.shape[0], g, x0.device)
    t = torch.as_tensor(t, dtype=torch.float64, device=x0.device).expand(x0.shape[0])
    if not bool(((t > 0) & (t <= 1)).all()):
        raise ValueError("times t must lie in (0, 1]")
    return schedule, t


def masked_nelbo(
    network: Network,
    x0: Tensor,
    z: Tensor,
    t: Tensor,
    schedule: str | Masking = "linear",
    vocab: int | None = None,
) -> Tensor:
    """The negative-ELBO estimate of :func:`nelbo` [B] at given times t [B] and masked sequences
    z_t [B, L] (drawn with :func:`mask`, mask id ``vocab``, default ``network.vocab_size``):
    -alpha'_t / (1 - alpha_t) * sum_{masked l} -log x_theta(z_t)^l_{x0^l}."""
    schedule = get_masking(schedule)
    vocab = vocab_size(network) if vocab is None else vocab
    logits = network(z)
    ce = F.cross_entropy(logits.float().transpose(1, 2), x0, reduction="none")
    return schedule.weight(t) * (ce.double() * (z == vocab)).sum(1)


def _rate_integral(k: int, n: int, r1: float) -> float:
    """int_0^r1 r^(k-1) (1-r)^(n-k) dr by the binomial expansion of (1-r)^(n-k) (exact for r1 = 1:
    the Beta function (k-1)! (n-k)! / n!)."""
    if r1 == 1.0:
        return math.factorial(k - 1) * math.factorial(n - k) / math.factorial(n)
    return sum(math.comb(n - k, j) * (-1) ** j * r1 ** (k + j) / (k + j) for j in range(n - k + 1))


def exact_nelbo(network: Network, x0: Tensor, schedule: str | Masking = "linear") -> Tensor:
    """The expectation of :func:`nelbo` for a time-agnostic network, exactly, in nats [B]:
    sum over nonempty masked sets S of c_|S| * sum_{l in S} -log x_theta(x0 with S masked)^l_{x0^l},
    c_k = int_0^{r_1} r^(k-1) (1-r)^(L-k) dr with r_1 = 1 - alpha_1; for alpha_1 = 0 (linear, cosine)
    c_k = (k-1)! (L-k)! / L!, the any-order autoregressive bound (Ou et al. 2024). Enumerates all
    2^L - 1 masks: for short sequences (L <= 16)."""
    schedule = get_masking(schedule)
    vocab = vocab_size(network)
    check_tokens(x0, vocab)
    b, n = x0.shape
    if n > 16:
        raise ValueError(f"exact_nelbo enumerates 2^L masks; L = {n} is too long (at most 16)")
    r1 = 1.0 - float(schedule.alpha(torch.tensor(1.0, dtype=torch.float64)))
    sets = torch.tensor(list(itertools.product([False, True], repeat=n))[1:], device=x0.device)
    z = torch.where(sets[None], vocab, x0[:, None]).reshape(-1, n)  # [B * (2^L - 1), L]
    logp = network(z).double().log_softmax(-1).reshape(b, len(sets), n, -1)
    logp = logp.gather(-1, x0[:, None, :, None].expand(b, len(sets), n, 1))[..., 0]
    coef = torch.tensor(
        [_rate_integral(int(k), n, r1) for k in sets.sum(1)], dtype=torch.float64, device=x0.device
    )
    return -(coef[None] * (logp * sets[None]).sum(-1)).sum(1)


def autoregressive_nll(network: Network, x: Tensor, vocab: int | None = None) -> Tensor:
    """-log p(x) = -sum_l log p(x^l | x^{<l}) of a causal network, nats per token [B, L]: the input is
    x shifted right behind the start id V (``vocab``, default ``network.vocab_size``)."""
    vocab = vocab_size(network) if vocab is None else vocab
    check_tokens(x, vocab, "x")
    start = torch.full_like(x[:, :1], vocab)
    logits = network(torch.cat([start, x[:, :-1]], dim=1))
    return F.cross_entropy(logits.float().transpose(1, 2), x, reduction="none")
