"""DeepCache on difflab's UNet (Ma et al. 2024, "DeepCache: Accelerating Diffusion Models for Free").

Adjacent denoising calls change the UNet's deep features little, so a full call stores the input
of the up block that pairs with skip connection ``branch``, and the calls in between recompute only
the shallow path: the input conv, the first ``branch`` down blocks (their outputs are the skips the
shallow up blocks need), then the last ``branch + 1`` up blocks starting from the stored deep
feature. Skip 0 is the input conv's output and skip i the output of ``down[i - 1]``; up block
``up[len(up) - 1 - i]`` consumes skip i. Branch 0 (the paper's default, its shallowest branch)
keeps only the input conv, the last up block and the output head.

Both kinds of call run the UNet's own forward: a full call as it is, with a forward hook reading
the deep feature; a cached call with ``down``, ``mid`` and ``up`` swapped for the shallow blocks and
a constant that returns the (reused or forecast) deep feature. So a refresh plan of only full calls is
the uncached network exactly, and a cached call at the input of the last full call is too.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from difflab.acceleration.cache import StepCache, swapped

__all__ = ["DeepCache"]


class _Constant(nn.Module):
    """Stands in for the UNet's deep part: returns the feature it holds, whatever its input."""

    def __init__(self) -> None:
        super().__init__()
        self.value: Tensor | None = None

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        return self.value


class DeepCache(StepCache):
    """A difflab UNet whose deep features are recomputed only at the full calls of its refresh plan.

    ``branch`` in 0 .. len(unet.down) - 1 is the number of down blocks recomputed at cached calls
    (deeper is slower and closer to the full network). ``forecast`` and ``variable``: see
    :class:`~difflab.acceleration.cache.StepCache` (forecast 1 or 2 extrapolates the deep feature
    from the last full calls, as TaylorSeer does, Liu et al. 2025).
    """

    def __init__(
        self,
        unet: nn.Module,
        refresh: Sequence[bool],
        branch: int = 0,
        forecast: int = 0,
        variable: str = "time",
    ) -> None:
        super().__init__(unet, refresh, forecast, variable)
        for name in ("down", "mid", "up"):
            if not isinstance(getattr(unet, name, None), nn.Module):
                raise TypeError(
                    f"DeepCache needs a UNet with down / mid / up blocks (difflab.models.UNet), "
                    f"got {type(unet).__name__}"
                )
        depth = len(unet.down)
        if isinstance(branch, bool) or not isinstance(branch, int) or not 0 <= branch < depth:
            raise ValueError(f"branch must be an integer in [0, {depth - 1}], got {branch!r}")
        self.branch = branch
        first_shallow_up = len(unet.up) - 1 - branch
        self._source = first_shallow_up - 1  # the up block whose output is the deep feature
        # kept in a plain dict: the swapped-in modules are views of the UNet's own, not new ones
        self._shallow = {
            "down": nn.ModuleList(unet.down[:branch]),
            "mid": _Constant(),
            "up": nn.ModuleList(unet.up[first_shallow_up:]),
        }

    def forward(self, x: Tensor, time: Tensor, labels: Tensor | None = None) -> Tensor:
        full, t = self._begin(x, time)
        if full:
            captured: list[Tensor] = []
            source = self.net.up[self._source]
            hook = source.register_forward_hook(lambda m, i, out: captured.append(out))
            try:
                out = self.net(x, time, labels)
            finally:
                hook.remove()
            self.features.update(t, captured[0])
            self.evaluations += 1
            return out
        deep = self._shallow["mid"]
        deep.value = self.features.predict(t)
        try:
            with swapped(self.net, **self._shallow):
                return self.net(x, time, labels)
        finally:
            deep.value = None
