"""Advantages of policy-gradient fine-tuning: rewards normalized per class label (per prompt in
DDPO), with the running statistics the official ddpo-pytorch keeps (``PerPromptStatTracker``).

    stats = LabelStats(buffer=16, min_count=16)
    a = stats.advantages(rewards, labels)         # (r - mean_y) / std_y per label y

A label's mean and std come from its last ``buffer`` rewards once it has ``min_count`` of them, and
from the whole batch before (Black et al. 2023; ddpo-pytorch's stat_tracking.py).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["LabelStats"]


class LabelStats:
    """Running reward statistics per label: A = (r - mean_y) / (std_y + 1e-6), or r - mean_y
    without scaling (Black et al. 2023, per-prompt normalization)."""

    def __init__(self, buffer: int = 16, min_count: int = 16) -> None:
        if buffer < 1 or not 1 <= min_count <= buffer:
            raise ValueError(f"need 1 <= min_count <= buffer, got {min_count} and {buffer}")
        self.buffer, self.min_count = int(buffer), int(min_count)
        self.history: dict[int, list[float]] = {}

    def advantages(self, rewards: Tensor, labels: Tensor, scale: bool = True) -> Tensor:
        """[B] float64 advantages of ``rewards`` [B] with ``labels`` [B], after adding the rewards
        to each label's history."""
        r = rewards.detach().to(torch.float64).cpu()
        y = labels.detach().cpu()
        out = torch.empty_like(r)
        for label in y.unique().tolist():
            rows = y == label
            kept = (self.history.get(label, []) + r[rows].tolist())[-self.buffer :]
            self.history[label] = kept
            ref = torch.tensor(kept, dtype=torch.float64) if len(kept) >= self.min_count else r
            centred = r[rows] - ref.mean()
            out[rows] = centred / (ref.std(correction=0) + 1e-6) if scale else centred
        return out.to(rewards.device)

    def state_dict(self) -> dict[str, Any]:
        return {"history": {str(k): list(v) for k, v in self.history.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = {int(k): [float(v) for v in vs] for k, vs in state["history"].items()}
