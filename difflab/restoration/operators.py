"""Linear measurement operators y = A x with their transpose and singular value decomposition
A = U S V^T, the structure DDRM, PiGDM and the twisted SMC sampler work in.

Every operator maps x [B, *in_shape] to y [B, *out_shape] and exposes the SVD through four maps:
``vt(x)`` = V^T x [B, d], ``v(c)`` = V c, ``ut(y)`` = U^T y [B, m] and ``u(c)`` = U c, plus the r
kept singular values s [r]. The first r coordinates of ``vt`` and ``ut`` pair with s
(U^T A x = [s * (V^T x)[:r], 0]); the other d - r coordinates of ``vt`` span A's null space and the
other m - r of ``ut`` the complement of its range. Singular values below ``rtol`` times the largest are
treated as 0 (their directions join the null space), so that dividing by s stays finite (DDRM's
y-bar = S^+ U^T y); the forward map itself is always the exact A.

The SVDs come from structure, never from a d x d matrix of an image: a mask is a permutation, a
separable operator (average pooling, separable blur) is a Kronecker product whose SVD is the product
of its two small factors' SVDs (Kawar et al. 2022 use the same device for blur).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "MASKS",
    "Inpainting",
    "LinearOperator",
    "Matrix",
    "Separable",
    "downsample",
    "gaussian_blur",
    "mask",
    "random_projection",
    "uniform_blur",
]

RTOL = 1e-6


def _shape(shape: Sequence[int], what: str = "shape") -> tuple[int, ...]:
    shape = tuple(int(n) for n in shape)
    if not shape or any(n < 1 for n in shape):
        raise ValueError(f"{what} must be a non-empty tuple of positive sizes, got {shape}")
    return shape


def _image_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    shape = _shape(shape)
    if len(shape) != 3:
        raise ValueError(f"an image operator needs a [C, H, W] shape, got {list(shape)}")
    return shape  # type: ignore[return-value]


def _kept(s: Tensor, rtol: float) -> Tensor:
    """Which singular values count as non-zero: s > rtol * max(s)."""
    if not 0 <= rtol < 1:
        raise ValueError(f"rtol must be in [0, 1), got {rtol}")
    return s > rtol * s.max() if s.numel() else s.bool()


class LinearOperator(ABC):
    """A linear measurement y = A x, x [B, *in_shape] -> y [B, *out_shape], with A^T and the SVD
    A = U S V^T (module docstring). Its tensors are float64; each is cast once per dtype and
    device of the input and cached."""

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], s: Tensor) -> None:
        self.in_shape = _shape(in_shape, "in_shape")
        self.out_shape = _shape(out_shape, "out_shape")
        self._tensors: dict[str, Tensor] = {"s": s.double()}
        self._cache: dict[tuple[str, torch.dtype, torch.device], Tensor] = {}

    # ------------------------------------------------------------------ sizes
    @property
    def in_dim(self) -> int:
        return math.prod(self.in_shape)

    @property
    def out_dim(self) -> int:
        return math.prod(self.out_shape)

    @property
    def singular_values(self) -> Tensor:
        """The r kept singular values s (float64), paired with the first r spectral coordinates."""
        return self._tensors["s"]

    @property
    def rank(self) -> int:
        return len(self.singular_values)

    def _t(self, name: str, like: Tensor) -> Tensor:
        """Tensor ``name`` in like's dtype and on its device (cached)."""
        key = (name, like.dtype, like.device)
        if key not in self._cache:
            self._cache[key] = self._tensors[name].to(like.device, like.dtype)
        return self._cache[key]

    def s(self, like: Tensor) -> Tensor:
        """The singular values in like's dtype and on its device."""
        return self._t("s", like)

    def _check(self, x: Tensor, shape: tuple[int, ...], what: str) -> None:
        if x.ndim < 1 or tuple(x.shape[1:]) != shape:
            raise ValueError(
                f"{type(self).__name__} takes {what} of shape [B, {', '.join(map(str, shape))}], "
                f"got {list(x.shape)}"
            )

    # ------------------------------------------------------------------ the maps
    def __call__(self, x: Tensor) -> Tensor:
        return self.forward(x)

    def forward(self, x: Tensor) -> Tensor:
        """y = A x."""
        self._check(x, self.in_shape, "x")
        return self._forward(x)

    def transpose(self, y: Tensor) -> Tensor:
        """A^T y."""
        self._check(y, self.out_shape, "y")
        return self._transpose(y)

    def vt(self, x: Tensor) -> Tensor:
        """V^T x [B, d]: the first r coordinates pair with the singular values."""
        self._check(x, self.in_shape, "x")
        return self._vt(x)

    def v(self, c: Tensor) -> Tensor:
        """V c [B, *in_shape] for spectral coordinates c [B, d]."""
        self._check(c, (self.in_dim,), "c")
        return self._v(c)

    def ut(self, y: Tensor) -> Tensor:
        """U^T y [B, m]: the first r coordinates pair with the singular values."""
        self._check(y, self.out_shape, "y")
        return self._ut(y)

    def u(self, c: Tensor) -> Tensor:
        """U c [B, *out_shape] for c [B, m]."""
        self._check(c, (self.out_dim,), "c")
        return self._u(c)

    def pinv(self, y: Tensor) -> Tensor:
        """A^+ y = V S^+ U^T y, the minimum-norm least-squares solution."""
        c = self.ut(y)[:, : self.rank] / self.s(y)
        return self._v(torch.cat([c, c.new_zeros(len(c), self.in_dim - self.rank)], 1))

    def dense(self) -> Tensor:
        """The matrix A [m, d] (float64), built column by column: for tests and small problems."""
        eye = torch.eye(self.in_dim, dtype=torch.float64).reshape(self.in_dim, *self.in_shape)
        return self.forward(eye).reshape(self.in_dim, self.out_dim).T

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({list(self.in_shape)} -> {list(self.out_shape)}, "
            f"rank {self.rank})"
        )

    # subclasses implement these on validated input
    @abstractmethod
    def _forward(self, x: Tensor) -> Tensor: ...

    @abstractmethod
    def _transpose(self, y: Tensor) -> Tensor: ...

    @abstractmethod
    def _vt(self, x: Tensor) -> Tensor: ...

    @abstractmethod
    def _v(self, c: Tensor) -> Tensor: ...

    @abstractmethod
    def _ut(self, y: Tensor) -> Tensor: ...

    @abstractmethod
    def _u(self, c: Tensor) -> Tensor: ...


class Matrix(LinearOperator):
    """An explicit matrix A [m, d] acting on x flattened from ``in_shape`` (default (d,)), y [B, m];
    its SVD by LAPACK (for vectors and small problems, e.g. random projections)."""

    def __init__(
        self, matrix: Tensor, in_shape: Sequence[int] | None = None, rtol: float = RTOL
    ) -> None:
        a = torch.as_tensor(matrix, dtype=torch.float64)
        if a.ndim != 2 or a.numel() == 0:
            raise ValueError(f"matrix must be a non-empty [m, d] matrix, got {list(a.shape)}")
        m, d = a.shape
        in_shape = (d,) if in_shape is None else _shape(in_shape, "in_shape")
        if math.prod(in_shape) != d:
            raise ValueError(f"in_shape {list(in_shape)} does not hold the matrix's {d} columns")
        u, s, vh = torch.linalg.svd(a, full_matrices=True)
        keep = _kept(s, rtol)
        super().__init__(in_shape, (m,), s[keep])
        self._tensors.update(a=a, u=u, v=vh.mT)

    def _forward(self, x: Tensor) -> Tensor:
        return x.flatten(1) @ self._t("a", x).T

    def _transpose(self, y: Tensor) -> Tensor:
        return (y @ self._t("a", y)).reshape(-1, *self.in_shape)

    def _vt(self, x: Tensor) -> Tensor:
        return x.flatten(1) @ self._t("v", x)

    def _v(self, c: Tensor) -> Tensor:
        return (c @ self._t("v", c).T).reshape(-1, *self.in_shape)

    def _ut(self, y: Tensor) -> Tensor:
        return y @ self._t("u", y)

    def _u(self, c: Tensor) -> Tensor:
        return c @ self._t("u", c).T


def random_projection(shape: Sequence[int], m: int, seed: int = 0) -> Matrix:
    """A [m, d] with i.i.d. N(0, 1/m) entries (a compressed-sensing measurement of x [*shape])."""
    shape = _shape(shape)
    if m < 1:
        raise ValueError(f"m must be >= 1, got {m}")
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, math.prod(shape), generator=g, dtype=torch.float64) / math.sqrt(m)
    return Matrix(a, shape)


class Inpainting(LinearOperator):
    """y = x[observed]: the observed entries of x, flattened [B, m] in row-major order. The SVD is a
    permutation: s = 1 (m times), V^T x = (x[observed], x[missing]), U = I."""

    def __init__(self, observed: Tensor) -> None:
        observed = torch.as_tensor(observed)
        if observed.dtype != torch.bool:
            raise ValueError(f"observed must be a boolean mask, got {observed.dtype}")
        flat = observed.flatten()
        kept, missing = torch.nonzero(flat).flatten(), torch.nonzero(~flat).flatten()
        if len(kept) == 0:
            raise ValueError("the mask observes nothing")
        super().__init__(observed.shape, (len(kept),), torch.ones(len(kept)))
        self.observed = observed
        order = torch.cat([kept, missing])
        self._kept, self._order, self._inverse = kept, order, torch.argsort(order)

    def _forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)[:, self._kept.to(x.device)]

    def _transpose(self, y: Tensor) -> Tensor:
        out = y.new_zeros(len(y), self.in_dim)
        return out.index_copy(1, self._kept.to(y.device), y).reshape(-1, *self.in_shape)

    def _vt(self, x: Tensor) -> Tensor:
        return x.flatten(1)[:, self._order.to(x.device)]

    def _v(self, c: Tensor) -> Tensor:
        return c[:, self._inverse.to(c.device)].reshape(-1, *self.in_shape)

    def _ut(self, y: Tensor) -> Tensor:
        return y

    def _u(self, c: Tensor) -> Tensor:
        return c


MASKS = ("center", "half", "random")


def mask(kind: str, shape: Sequence[int], missing: float = 0.5, seed: int = 0) -> Tensor:
    """A boolean mask of the observed entries of an image [C, H, W], the same in every channel:
    "center" hides the central H/2 x W/2 square, "half" the right half, "random" each pixel with
    probability ``missing`` (seeded)."""
    c, h, w = _image_shape(shape)
    observed = torch.ones(h, w, dtype=torch.bool)
    if kind == "center":
        observed[h // 4 : h // 4 + h // 2, w // 4 : w // 4 + w // 2] = False
    elif kind == "half":
        observed[:, w // 2 :] = False
    elif kind == "random":
        if not 0 <= missing < 1:
            raise ValueError(f"missing must be in [0, 1), got {missing}")
        g = torch.Generator().manual_seed(seed)
        observed = torch.rand(h, w, generator=g, dtype=torch.float64) >= missing
    else:
        from difflab.core.tensors import unknown_name

        raise unknown_name("mask", kind, MASKS)
    return observed.expand(c, h, w).clone()


class Separable(LinearOperator):
    """Y = R X C^T applied to every channel of x [B, C, H, W] (R [h, H], C [w, W]), y [B, C, h, w]:
    the Kronecker product R (x) C. With R = U_r S_r V_r^T and C = U_c S_c V_c^T, V^T x = V_r^T X V_c,
    U^T y = U_r^T Y U_c, and the singular value of coordinate (i, j) is s_r[i] s_c[j]."""

    def __init__(self, rows: Tensor, cols: Tensor, channels: int = 1, rtol: float = RTOL) -> None:
        rows, cols = (torch.as_tensor(t, dtype=torch.float64) for t in (rows, cols))
        if rows.ndim != 2 or cols.ndim != 2 or rows.numel() == 0 or cols.numel() == 0:
            raise ValueError("rows and cols must be non-empty matrices")
        (h_out, h), (w_out, w) = rows.shape, cols.shape
        ur, sr, vhr = torch.linalg.svd(rows, full_matrices=True)
        uc, sc, vhc = torch.linalg.svd(cols, full_matrices=True)
        prod = torch.zeros(h, w, dtype=torch.float64)
        prod[: len(sr), : len(sc)] = sr[:, None] * sc[None, :]
        keep = _kept(prod, rtol)
        ii, jj = torch.nonzero(keep, as_tuple=True)
        order = torch.argsort(prod[ii, jj], descending=True, stable=True)
        ii, jj = ii[order], jj[order]
        ch = torch.arange(channels)[:, None]
        x_spec = (ch * h * w + ii * w + jj).flatten()
        y_spec = (ch * h_out * w_out + ii * w_out + jj).flatten()
        x_order = torch.cat([x_spec, _complement(x_spec, channels * h * w)])
        y_order = torch.cat([y_spec, _complement(y_spec, channels * h_out * w_out)])
        s = prod[ii, jj].repeat(channels)
        super().__init__((channels, h, w), (channels, h_out, w_out), s)
        self._tensors.update(rows=rows, cols=cols, ur=ur, vr=vhr.mT, uc=uc, vc=vhc.mT)
        self._x_order, self._x_inverse = x_order, torch.argsort(x_order)
        self._y_order, self._y_inverse = y_order, torch.argsort(y_order)

    @staticmethod
    def _apply(left: Tensor, x: Tensor, right: Tensor) -> Tensor:
        """left X right^T for every image and channel of x [B, C, H, W]."""
        return left @ x @ right.T

    def _forward(self, x: Tensor) -> Tensor:
        return self._apply(self._t("rows", x), x, self._t("cols", x))

    def _transpose(self, y: Tensor) -> Tensor:
        return self._apply(self._t("rows", y).T, y, self._t("cols", y).T)

    def _vt(self, x: Tensor) -> Tensor:
        c = self._apply(self._t("vr", x).T, x, self._t("vc", x).T)
        return c.flatten(1)[:, self._x_order.to(x.device)]

    def _v(self, c: Tensor) -> Tensor:
        grid = c[:, self._x_inverse.to(c.device)].reshape(-1, *self.in_shape)
        return self._apply(self._t("vr", c), grid, self._t("vc", c))

    def _ut(self, y: Tensor) -> Tensor:
        c = self._apply(self._t("ur", y).T, y, self._t("uc", y).T)
        return c.flatten(1)[:, self._y_order.to(y.device)]

    def _u(self, c: Tensor) -> Tensor:
        grid = c[:, self._y_inverse.to(c.device)].reshape(-1, *self.out_shape)
        return self._apply(self._t("ur", c), grid, self._t("uc", c))


def _complement(index: Tensor, n: int) -> Tensor:
    """The indices 0..n-1 not in ``index``, ascending."""
    rest = torch.ones(n, dtype=torch.bool)
    rest[index] = False
    return torch.nonzero(rest).flatten()


def _pooling(n: int, factor: int) -> Tensor:
    """[n / factor, n]: the mean of each block of ``factor`` entries."""
    return torch.kron(torch.eye(n // factor, dtype=torch.float64), torch.ones(1, factor) / factor)


def downsample(shape: Sequence[int], factor: int) -> Separable:
    """Average pooling by ``factor`` x ``factor`` blocks (super-resolution): y [B, C, H/f, W/f]; every
    singular value is 1/f."""
    c, h, w = _image_shape(shape)
    if factor < 1 or h % factor or w % factor:
        raise ValueError(f"factor {factor} must be >= 1 and divide the image size {h} x {w}")
    return Separable(_pooling(h, factor), _pooling(w, factor), c)


def _convolution(kernel: Tensor, n: int) -> Tensor:
    """[n, n]: 'same' 1-D convolution with an odd-length kernel, zero padding."""
    k = len(kernel) // 2
    offsets = torch.arange(n)[None, :] - torch.arange(n)[:, None] + k
    inside = (offsets >= 0) & (offsets < len(kernel))
    return torch.where(inside, kernel[offsets.clamp(0, len(kernel) - 1)], 0.0)


def _blur(shape: Sequence[int], kernel: Tensor, rtol: float) -> Separable:
    c, h, w = _image_shape(shape)
    kernel = kernel / kernel.sum()
    return Separable(_convolution(kernel, h), _convolution(kernel, w), c, rtol)


def gaussian_blur(shape: Sequence[int], std: float = 1.0, rtol: float = RTOL) -> Separable:
    """Blur by the separable Gaussian kernel exp(-k^2 / (2 std^2)), |k| <= ceil(3 std), normalized,
    with zero padding: y [B, C, H, W]."""
    if not std > 0:
        raise ValueError(f"std must be > 0, got {std}")
    k = torch.arange(-math.ceil(3 * std), math.ceil(3 * std) + 1, dtype=torch.float64)
    return _blur(shape, torch.exp(-0.5 * (k / std) ** 2), rtol)


def uniform_blur(shape: Sequence[int], size: int = 3, rtol: float = RTOL) -> Separable:
    """Blur by the mean over a size x size box (``size`` odd) with zero padding: y [B, C, H, W]."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"size must be a positive odd number, got {size}")
    return _blur(shape, torch.ones(size, dtype=torch.float64), rtol)
