"""k-nearest-neighbour manifold metrics between real and generated feature sets: precision and recall
(Kynkäänniemi et al. 2019), density and coverage (Naeem et al. 2020).

Each point x of a set spans a ball of radius r_k(x), the distance to its k-th nearest other point of
the same set; the union of the balls estimates that set's support. Distances are computed in float64
row blocks of about ``block`` entries, so 10k x 10k sets never hold a full distance matrix.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

__all__ = ["density_coverage", "distance_blocks", "knn_radii", "precision_recall"]

BLOCK = 1 << 22  # distance entries per block: 32 MiB in float64


def _check_pair(real: Tensor, fake: Tensor, k: int) -> tuple[Tensor, Tensor]:
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"need features real [N, D] and fake [M, D], got {tuple(real.shape)} and "
            f"{tuple(fake.shape)}"
        )
    if k < 1 or min(len(real), len(fake)) <= k:
        raise ValueError(
            f"k must be >= 1 and below both set sizes ({len(real)}, {len(fake)}), got k={k}"
        )
    return real.double(), fake.double()


def distance_blocks(a: Tensor, b: Tensor, block: int = BLOCK) -> Iterator[tuple[slice, Tensor]]:
    """(rows, ||a_i - b_j|| for i in rows, all j) for consecutive row blocks of a [N, D] against
    b [M, D], each about ``block`` entries."""
    rows = max(1, block // max(1, len(b)))
    for start in range(0, len(a), rows):
        part = slice(start, min(start + rows, len(a)))
        yield part, torch.cdist(a[part], b)


def knn_radii(feats: Tensor, k: int, block: int = BLOCK) -> Tensor:
    """r_k(x_i) = distance from x_i to its k-th nearest neighbour among the other points [N]
    (Kynkäänniemi et al. 2019)."""
    if feats.ndim != 2 or not 1 <= k < len(feats):
        raise ValueError(
            f"need features [N, D] with N > k >= 1, got shape {tuple(feats.shape)}, k={k}"
        )
    f = feats.double()
    radii = torch.empty(len(f), dtype=torch.float64, device=f.device)
    for part, d in distance_blocks(f, f, block):
        radii[part] = d.topk(k + 1, dim=1, largest=False).values[:, k]  # index 0: the point itself
    return radii


def precision_recall(
    real: Tensor, fake: Tensor, k: int = 3, block: int = BLOCK
) -> dict[str, float]:
    """precision = 1/M sum_j 1[fake_j in some real ball], recall = 1/N sum_i 1[real_i in some fake
    ball], balls of radius r_k (Kynkäänniemi et al. 2019)."""
    real, fake = _check_pair(real, fake, k)
    r_real, r_fake = knn_radii(real, k, block), knn_radii(fake, k, block)
    inside = torch.zeros(len(fake), dtype=torch.bool, device=fake.device)
    covered = torch.zeros(len(real), dtype=torch.bool, device=real.device)
    for part, d in distance_blocks(fake, real, block):  # d [c, N]: fake rows, real columns
        inside[part] = (d <= r_real).any(1)
        covered |= (d <= r_fake[part, None]).any(0)
    return {"precision": float(inside.double().mean()), "recall": float(covered.double().mean())}


def density_coverage(
    real: Tensor, fake: Tensor, k: int = 5, block: int = BLOCK
) -> dict[str, float]:
    """density = 1/(kM) sum_j sum_i 1[fake_j in B(real_i, r_k(real_i))], coverage = 1/N sum_i
    1[min_j ||real_i - fake_j|| <= r_k(real_i)] (Naeem et al. 2020)."""
    real, fake = _check_pair(real, fake, k)
    r_real = knn_radii(real, k, block)
    count = torch.zeros((), dtype=torch.float64, device=real.device)
    nearest = torch.full((len(real),), torch.inf, dtype=torch.float64, device=real.device)
    for _, d in distance_blocks(fake, real, block):
        count += (d <= r_real).sum()
        nearest = torch.minimum(nearest, d.amin(0))
    return {
        "density": float(count / (k * len(fake))),
        "coverage": float((nearest <= r_real).double().mean()),
    }
