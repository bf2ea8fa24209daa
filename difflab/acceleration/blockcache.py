"""Block caching for difflab's DiT with a change threshold: first-block cache (FBCache, as in
ParaAttention and TeaCache's relative-change test, Liu et al. 2024) over a FORA-style refresh plan
(Selvaraju et al. 2024).

Every call runs the first transformer block, h_1 = B_1(h_0). Its residual r = h_1 - h_0 is
compared with r_ref, the first block's residual at the sample's last full evaluation:

    delta = mean |r - r_ref| / mean |r_ref|.

Where delta < ``threshold`` (and the refresh plan does not force a full call) the remaining blocks are
skipped and h_L = h_1 + R, with R the stored residual h_L - h_1 of the remaining blocks (reused, or
forecast from the last full calls). The test and the choice are per sample, so a sample's output
does not depend on its batch; the samples that need it run the remaining blocks as a sub-batch.
Threshold 0 never skips (the uncached network exactly); threshold inf skips at every call the
refresh plan does not force, which is FORA's static reuse.

The DiT's own forward runs every call, with its block list swapped for [first block, remaining
blocks or their cached residual].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from difflab.acceleration.cache import StepCache, swapped

__all__ = ["BlockCache", "relative_change"]


def relative_change(r: Tensor, r_ref: Tensor) -> Tensor:
    """Per sample mean |r - r_ref| / mean |r_ref| over all but the batch dimension (inf where
    r_ref = 0)."""
    num = (r - r_ref).abs().flatten(1).mean(1)
    den = r_ref.abs().flatten(1).mean(1)
    return torch.where(den > 0, num / den.clamp(min=torch.finfo(den.dtype).tiny), math.inf)


class _First(nn.Module):
    def __init__(self, cache: BlockCache) -> None:
        super().__init__()
        self.cache = [cache]  # a list: not a registered submodule (no cycle in the module tree)

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        cache = self.cache[0]
        h1 = cache._blocks[0](h, c)
        cache._residual = h1 - h
        return h1


class _Rest(nn.Module):
    def __init__(self, cache: BlockCache) -> None:
        super().__init__()
        self.cache = [cache]

    def forward(self, h1: Tensor, c: Tensor) -> Tensor:
        return self.cache[0]._rest(h1, c)


class BlockCache(StepCache):
    """A difflab DiT (any network with a ``blocks`` list called as ``block(h, c)``) that skips all
    but its first block where that block's output changed less than ``threshold`` since the
    sample's last full evaluation. ``refresh``: the calls that are always full (True), the others
    skip where the test allows. ``forecast`` and ``variable``: see
    :class:`~difflab.acceleration.cache.StepCache`.
    """

    def __init__(
        self,
        dit: nn.Module,
        refresh: Sequence[bool],
        threshold: float = 0.1,
        forecast: int = 0,
        variable: str = "time",
    ) -> None:
        super().__init__(dit, refresh, forecast, variable)
        blocks = getattr(dit, "blocks", None)
        if not isinstance(blocks, nn.ModuleList) or len(blocks) < 2:
            raise TypeError(
                f"BlockCache needs a network with a list of at least 2 blocks (difflab.models.DiT), "
                f"got {type(dit).__name__}"
            )
        if not threshold >= 0:
            raise ValueError(f"threshold must be >= 0 (inf: always reuse), got {threshold}")
        self.threshold = float(threshold)
        self._blocks = tuple(blocks)  # the DiT's own blocks, while its list is swapped
        self._split = {"blocks": nn.ModuleList([_First(self), _Rest(self)])}
        self._residual: Tensor | None = None  # the first block's residual in this call
        self._reference: Tensor | None = None  # ... at each sample's last full evaluation
        self._full, self._t = True, None

    def reset(self) -> None:
        super().reset()
        self._reference = None

    def forward(self, x: Tensor, time: Tensor, labels: Tensor | None = None) -> Tensor:
        self._full, self._t = self._begin(x, time)
        try:
            with swapped(self.net, **self._split):
                return self.net(x, time, labels)
        finally:
            self._residual, self._t = None, None

    def _rest(self, h1: Tensor, c: Tensor) -> Tensor:
        """h_L for the samples that run the remaining blocks, h_1 + R for the others."""
        r = self._residual
        if self._full or self._reference is None:
            compute = torch.ones(h1.shape[0], dtype=torch.bool, device=h1.device)
        else:
            compute = relative_change(r, self._reference) >= self.threshold
        rows = None if bool(compute.all()) else torch.nonzero(compute).flatten()
        self.evaluations += float(compute.float().mean())
        if rows is None:  # the whole batch: the network's own computation
            h = h1
            for block in self._blocks[1:]:
                h = block(h, c)
            self.features.update(self._t, h - h1)
            self._reference = r
            return h
        skip = torch.nonzero(~compute).flatten()
        out = h1.clone()
        out[skip] += self.features.predict(self._t[skip], skip)
        if len(rows):
            h = h1[rows]
            for block in self._blocks[1:]:
                h = block(h, c[rows])
            out[rows] = h
            self.features.update(self._t[rows], h - h1[rows], rows)
            self._reference[rows] = r[rows]
        return out
