"""Seeded noise that makes sampling batch-invariant: one generator per sample, so a sample's noise
does not depend on what else is in its batch (DESIGN.md, Principles).

A stochastic sampler draws its noise from a :class:`Noise` source, asked for the standard normal
tensor of an interval sigma -> sigma_next (:func:`noise_source`):

- "gaussian": a fresh independent draw per call (the interval is ignored);
- "brownian": the increment (W(sigma_next) - W(sigma)) / sqrt|sigma_next - sigma| of one Brownian
  path W per sample (:class:`BrownianTree`), a fixed function of the sample's seed: the noise of a
  step is the path's, whatever the other steps, so samples stay close when the step count changes
  and converge pathwise as it grows (k-diffusion's and ComfyUI's default for their SDE samplers).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "NOISES",
    "BrownianTree",
    "Noise",
    "brownian_seeds",
    "generators",
    "hashed_normal",
    "noise_source",
    "rand",
    "randn",
]

NOISES = ("gaussian", "brownian")

Generators = torch.Generator | Sequence[torch.Generator] | None


class Noise(Protocol):
    """A standard normal tensor like x for the interval sigma -> sigma_next (see the module)."""

    def __call__(self, sigma: float | None = None, sigma_next: float | None = None) -> Tensor: ...


def generators(seed: int, n: int, device: str | torch.device = "cpu") -> list[torch.Generator]:
    """n independent generators for samples 0..n-1 of run ``seed`` (numpy SeedSequence spawning, so
    (seed, i) pairs never collide)."""
    states = np.random.SeedSequence(seed).spawn(n)
    return [
        torch.Generator(device=device).manual_seed(
            int(s.generate_state(1, np.uint64)[0] >> np.uint64(1))
        )
        for s in states
    ]


def _draw(
    fn: Callable[..., Tensor],
    shape: Sequence[int],
    generator: torch.Generator | Sequence[torch.Generator] | None,
    dtype: torch.dtype,
    device: str | torch.device,
) -> Tensor:
    if generator is None or isinstance(generator, torch.Generator):
        return fn(
            tuple(shape),
            generator=generator,
            dtype=dtype,
            device=generator.device if generator else device,
        ).to(device)
    gens = list(generator)
    if len(gens) != shape[0]:
        raise ValueError(f"got {len(gens)} generators for a batch of {shape[0]}")
    rows = [fn(tuple(shape[1:]), generator=g, dtype=dtype, device=g.device) for g in gens]
    return torch.stack(rows).to(device)


def randn(
    shape: Sequence[int],
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> Tensor:
    """Standard normal noise of ``shape`` [B, ...]; with a list of B generators, row i comes from
    generator i alone."""
    return _draw(torch.randn, shape, generator, dtype, device)


def rand(
    shape: Sequence[int],
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> Tensor:
    """Uniform numbers in [0, 1) of ``shape`` [B, ...]; with a list of B generators, row i comes
    from generator i alone."""
    return _draw(torch.rand, shape, generator, dtype, device)


# ---------------------------------------------------------------------------------- Brownian tree

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15  # 2^64 / golden ratio: SplitMix64's counter increment
_M1, _M2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB  # SplitMix64's finalizer multipliers


def _signed(v: int) -> int:
    """A 64-bit pattern as the int64 value torch stores for it."""
    v &= _MASK
    return v - (1 << 64) if v >> 63 else v


def _mix_int(z: int) -> int:
    """SplitMix64's finalizer on a Python int, modulo 2^64 (Steele et al. 2014)."""
    z &= _MASK
    z = ((z ^ (z >> 30)) * _M1) & _MASK
    z = ((z ^ (z >> 27)) * _M2) & _MASK
    return z ^ (z >> 31)


def _node_key(*parts: int) -> int:
    """A 64-bit key for a node of the tree, chained through the finalizer."""
    z = 0
    for p in parts:
        z = _mix_int(z + (p & _MASK) * _GOLDEN + _GOLDEN)
    return _signed(z)


def _srl(z: Tensor, k: int) -> Tensor:
    """Logical right shift of int64 tensors (torch's >> is arithmetic)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def _mix(z: Tensor) -> Tensor:
    """:func:`_mix_int` on int64 tensors (products wrap modulo 2^64, as in two's complement)."""
    z = (z ^ _srl(z, 30)) * _signed(_M1)
    z = (z ^ _srl(z, 27)) * _signed(_M2)
    return z ^ _srl(z, 31)


def hashed_normal(
    keys: Tensor, nodes: Tensor | Sequence[int], count: int, dtype: torch.dtype
) -> Tensor:
    """[len(nodes), len(keys), count] standard normals, entry (n, i, j) a fixed function of
    (keys[i], nodes[n], j): Phi^-1((b + 1/2) 2^-m), b the top m bits (m = dtype's mantissa, 52 for
    float64) of SplitMix64's output for the counter key + node + (j + 1) G (the generator's stream
    seeded with key + node; Steele et al. 2014). Counter-based (Salmon et al. 2011): any node's
    draws without drawing the others, all of them in one pass."""
    nodes = torch.as_tensor(nodes, dtype=torch.int64).to(keys.device)
    seeds = keys.unsqueeze(0) + nodes.unsqueeze(1)
    counters = torch.arange(1, count + 1, dtype=torch.int64, device=keys.device) * _signed(_GOLDEN)
    m = round(-math.log2(torch.finfo(dtype).eps))  # mantissa bits: (b + 1/2) 2^-m < 1 exactly
    bits = _srl(_mix(seeds.unsqueeze(2) + counters), 64 - m).to(dtype)
    return torch.special.ndtri(bits.add_(0.5).mul_(2.0**-m))


def _pairwise_sum(terms: Tensor) -> Tensor:
    """terms.sum(0) by halving with elementwise adds (zeros pad it to a power of 2): each entry is
    summed in an order that depends on len(terms) alone, so a sample's value is the same in any
    batch (torch's reductions are not)."""
    size = 1 << (len(terms) - 1).bit_length()
    if size > len(terms):
        terms = torch.cat([terms, terms.new_zeros(size - len(terms), *terms.shape[1:])])
    while size > 1:
        size //= 2
        terms = terms[:size] + terms[size:]
    return terms[0]


_CHUNK = 1 << 16  # numbers per hashing pass: fewer passes for small batches, cache-sized for big


class BrownianTree:
    """W(t), t >= 0: one standard Brownian path per sample, a fixed function of its seed, queried
    at any t by Brownian bridges (a virtual Brownian tree, Li et al. 2020; stateless here).

    W(0) = 0; anchors W(1) = xi, W(2^(e+1)) = W(2^e) + 2^(e/2) xi for e >= 0 and, below 1, the bridge
    from 0: W(2^e) = W(2^(e+1)) / 2 + 2^((e-1)/2) xi. In an octave [a, 2a) the midpoint of a dyadic
    cell [l, r] is (W(l) + W(r)) / 2 + sqrt((r - l) / 4) xi, down to ``depth`` levels (cells a 2^-depth
    wide, < 6e-8 t at the default 24), and W is linear inside the last cell: Levy's construction,
    W(t) = lerp(W(a), W(2a), (t - a)/a) + sum_j sqrt(w_j / 4) tent_j(t) xi_j over the cells of width
    w_j that contain t (tent_j: 1 at the cell's midpoint, 0 at its ends). Every xi is
    :func:`hashed_normal` of (seed, node): W at a level does not depend on the other levels asked
    for, so grids that share levels see the same values there, and increments over disjoint
    intervals are independent N(0, length) (to the cell width). Values in float64 (float32 on
    devices without it); a few recent ones are kept, since a sampler asks for each level twice.
    """

    def __init__(
        self,
        seeds: Tensor,
        shape: Sequence[int],
        device: str | torch.device = "cpu",
        depth: int = 24,
    ) -> None:
        if seeds.ndim != 1 or seeds.dtype != torch.int64:
            raise ValueError("seeds must be a 1-D int64 tensor, one seed per sample")
        self.device = torch.device(device)
        self.keys = seeds.to(self.device)
        self.shape = tuple(shape)
        self.count = math.prod(self.shape)
        self.depth = depth
        self.dtype = torch.float32 if self.device.type == "mps" else torch.float64
        self._scales = 2.0 ** np.arange(depth)
        self._levels: dict[int, Tensor] = {}
        self._anchors: dict[int, Tensor] = {0: self._xi(0, 0)}
        self._recent: dict[float, Tensor] = {}

    def _xi(self, *node: int) -> Tensor:
        return hashed_normal(self.keys, [_node_key(*node)], self.count, self.dtype)[0]

    def _level_keys(self, e: int) -> Tensor:
        """Keys of the levels of octave [2^(e-1), 2^e): a node's key mixes in its cell."""
        if e not in self._levels:
            keys = [_node_key(1, e, j) for j in range(self.depth)]
            self._levels[e] = torch.tensor(keys, dtype=torch.int64)
        return self._levels[e]

    def _anchor(self, e: int) -> Tensor:
        """W(2^e), building the anchors between 1 and 2^e once."""
        step = 1 if e > 0 else -1
        for k in range(0, e + step, step):
            if k not in self._anchors:
                parent = self._anchors[k - 1] if k > 0 else self._anchors[k + 1] / 2
                self._anchors[k] = parent + 2.0 ** ((k - 1) / 2) * self._xi(0, k)
        return self._anchors[e]

    def w(self, t: float) -> Tensor:
        """W(t) as [B, *shape] (float64)."""
        return self._w(float(t)).clone()

    def _w(self, t: float) -> Tensor:
        if not (t >= 0 and math.isfinite(t)):
            raise ValueError(f"a Brownian path is defined for finite t >= 0, got {t}")
        if t == 0:
            return torch.zeros((len(self.keys), *self.shape), dtype=self.dtype, device=self.device)
        if t in self._recent:
            return self._recent[t]
        _, e = math.frexp(t)  # t in [a, 2a), a = 2^(e - 1)
        a = math.ldexp(1.0, e - 1)
        q = (t - a) / a  # exact, and so are its scalings by powers of 2
        value = torch.lerp(self._anchor(e - 1), self._anchor(e), q)
        scaled = q * self._scales  # level j: the cell of width a 2^-j containing t, and its tent
        cell = np.floor(scaled)
        tent = 1 - np.abs(2 * (scaled - cell) - 1)
        keep = np.flatnonzero(tent > 0)
        weights = tent[keep] * np.sqrt(a / (4 * self._scales[keep]))
        cells = torch.from_numpy(cell[keep].astype(np.int64))
        nodes = _mix(self._level_keys(e)[keep] + cells * _signed(_GOLDEN))
        chunk = max(1, _CHUNK // (len(self.keys) * self.count))  # levels drawn in one pass
        for i in range(0, len(nodes), chunk):
            xi = hashed_normal(self.keys, nodes[i : i + chunk], self.count, self.dtype)
            w = torch.from_numpy(weights[i : i + chunk]).to(xi)
            value.add_(_pairwise_sum(xi * w[:, None, None]))
        value = value.view(len(self.keys), *self.shape)
        if len(self._recent) >= 4:
            del self._recent[next(iter(self._recent))]
        self._recent[t] = value
        return value

    def __call__(self, sigma: float, sigma_next: float) -> Tensor:
        """(W(sigma_next) - W(sigma)) / sqrt|sigma_next - sigma|: standard normal (float64)."""
        return (self._w(sigma_next) - self._w(sigma)) / math.sqrt(abs(sigma_next - sigma))


def brownian_seeds(generator: Generators, n: int) -> Tensor:
    """n int64 seeds, one per sample, drawn from the caller's generator(s) (row i from generator i
    alone when there is one per sample, as :func:`randn`)."""
    draw = functools.partial(torch.randint, 0, 2**62)
    return _draw(draw, (n,), generator, torch.int64, "cpu")


def noise_source(x: Tensor, generator: Generators, kind: str = "gaussian") -> Noise:
    """The stochastic samplers' noise for samples like x (module docstring): "gaussian" draws from
    one generator or one per sample at every call; "brownian" asks a :class:`BrownianTree` whose
    seeds come from the generator(s) once, here."""
    many = generator is not None and not isinstance(generator, torch.Generator)
    if many and len(generator) != x.shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {x.shape[0]}")
    if kind == "gaussian":
        if generator is None:
            return lambda sigma=None, sigma_next=None: torch.randn_like(x)
        return lambda sigma=None, sigma_next=None: randn(x.shape, generator, x.dtype, x.device)
    if kind != "brownian":
        raise ValueError(f"unknown noise {kind!r}; valid: {', '.join(NOISES)}")
    tree = BrownianTree(brownian_seeds(generator, x.shape[0]), x.shape[1:], x.device)

    def increment(sigma: float | None = None, sigma_next: float | None = None) -> Tensor:
        if sigma is None or sigma_next is None:
            raise ValueError("Brownian noise is an increment: give (sigma, sigma_next)")
        return tree(sigma, sigma_next).to(x.dtype)

    return increment
