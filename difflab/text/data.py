"""Text as integer tokens: a character tokenizer, tiny Shakespeare with a fixed held-out split, and
any tokenized integer sequences (a stream cut into windows, or fixed-length rows)."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from difflab.data.dataset import shared_folder

__all__ = ["SPLITS", "CharTokenizer", "TokenData", "load_tokens", "shakespeare"]

SPLITS = ("train", "val")
SHAKESPEARE = "tinyshakespeare"
VAL_FRACTION = 0.1  # the last 10 % of the characters is the held-out split


class CharTokenizer:
    """One token per character of ``chars`` (a string of distinct characters, id = position)."""

    def __init__(self, chars: str) -> None:
        if not isinstance(chars, str) or not chars or len(set(chars)) != len(chars):
            raise ValueError(
                "a character tokenizer needs a non-empty string of distinct characters"
            )
        self.chars = chars
        self._points = np.frombuffer(chars.encode("utf-32-le"), dtype=np.uint32)
        self._ids = np.full(int(self._points.max()) + 1, -1, dtype=np.int64)
        self._ids[self._points] = np.arange(len(chars))

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """The tokenizer of every distinct character of ``text``, in code-point order."""
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> Tensor:
        """The ids of ``text`` [len(text)] (int64); a character outside the vocabulary is an error."""
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        ids = self._ids[np.minimum(points, len(self._ids) - 1)]
        bad = (ids < 0) | (points >= len(self._ids))
        if bad.any():
            raise ValueError(
                f"character {text[int(bad.argmax())]!r} is not in the tokenizer's vocabulary"
            )
        return torch.from_numpy(ids)

    def decode(self, ids: Tensor | Sequence[int]) -> str:
        """The text of 1-D ``ids``; an id outside 0..V-1 (e.g. a mask left in) is an error."""
        ids = torch.as_tensor(ids).reshape(-1).numpy()
        bad = (ids < 0) | (ids >= len(self.chars))
        if bad.any():
            raise ValueError(
                f"ids {sorted(set(ids[bad].tolist()))[:5]} are outside the vocabulary "
                f"0..{len(self.chars) - 1}"
            )
        return self._points[ids].tobytes().decode("utf-32-le")


class TokenData:
    """Integer tokens: a 1-D stream cut into windows of ``length`` (random ones for training, the
    consecutive non-overlapping ones for evaluation) or fixed-length rows [N, L] used whole."""

    def __init__(self, tokens: Tensor, vocab_size: int, name: str = "tokens") -> None:
        tokens = torch.as_tensor(tokens)
        if (
            tokens.dtype.is_floating_point
            or tokens.dtype == torch.bool
            or tokens.ndim not in (1, 2)
        ):
            raise ValueError(
                f"{name}: tokens must be integers, a stream [N] or rows [N, L]; got "
                f"{tuple(tokens.shape)} {tokens.dtype}"
            )
        tokens = tokens.long()
        if tokens.numel() == 0:
            raise ValueError(f"{name}: no tokens")
        if int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size:
            raise ValueError(
                f"{name}: ids span [{int(tokens.min())}, {int(tokens.max())}], outside the "
                f"vocabulary 0..{vocab_size - 1}"
            )
        self.tokens, self.vocab_size, self.name = tokens, vocab_size, name

    def check_length(self, length: int) -> None:
        """Raise a ValueError unless windows (or rows) of ``length`` tokens exist."""
        limit = self.tokens.shape[-1]
        if self.tokens.ndim == 2 and length != limit:
            raise ValueError(f"{self.name} holds rows of length {limit}; asked for length {length}")
        if not 1 <= length <= limit:
            raise ValueError(f"{self.name}: window length {length} must lie in 1..{limit}")

    def batch(self, n: int, length: int, generator: torch.Generator | None = None) -> Tensor:
        """n random windows (or rows) [n, length]."""
        self.check_length(length)
        if self.tokens.ndim == 2:
            return self.tokens[torch.randint(len(self.tokens), (n,), generator=generator)]
        start = torch.randint(len(self.tokens) - length + 1, (n,), generator=generator)
        return self.tokens[start[:, None] + torch.arange(length)]

    def windows(self, length: int) -> Tensor:
        """Every consecutive non-overlapping window [N // length, length] (the rows themselves)."""
        self.check_length(length)
        if self.tokens.ndim == 2:
            return self.tokens
        n = len(self.tokens) // length
        return self.tokens[: n * length].reshape(n, length)


def _split(tokens: Tensor, split: str, val_fraction: float) -> Tensor:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use 'train' or 'val'")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    cut = len(tokens) - round(len(tokens) * val_fraction)
    return tokens[:cut] if split == "train" else tokens[cut:]


def shakespeare(
    split: str = "train", root: str | os.PathLike[str] | None = None
) -> tuple[TokenData, CharTokenizer]:
    """Tiny Shakespeare (Karpathy 2015, 1,115,394 characters, 65 distinct) by character; "val" is
    the last 10 % of the text, "train" the rest. ``root``: the folder holding input.txt (default:
    the shared data folder, see :func:`difflab.data.dataset.shared_folder`). The tokenizer covers
    the whole text."""
    path = shared_folder(SHAKESPEARE, root) / "input.txt"
    if not path.is_file():
        raise FileNotFoundError(f"tiny Shakespeare not found at {path}")
    tokens, tokenizer = _encoded(path)
    tokens = _split(tokens, split, VAL_FRACTION)
    return TokenData(tokens, tokenizer.vocab_size, f"shakespeare/{split}"), tokenizer


@functools.lru_cache(maxsize=2)
def _encoded(path: Path) -> tuple[Tensor, CharTokenizer]:
    """A text file's character tokens and tokenizer, read once per process."""
    text = path.read_text(encoding="utf-8")
    tokenizer = CharTokenizer.from_text(text)
    return tokenizer.encode(text), tokenizer


def load_tokens(
    path: str | os.PathLike[str], vocab_size: int, split: str = "train", val_fraction: float = 0.1
) -> TokenData:
    """Integer tokens from a .npy file: a 1-D stream (the last ``val_fraction`` of it is "val") or
    rows [N, L] (the last ``val_fraction`` of the rows is "val"). Never unpickled."""
    path = Path(path)
    if path.suffix != ".npy":
        raise ValueError(f"token file {path} must be a .npy array")
    if not path.is_file():
        raise FileNotFoundError(f"token file {path} does not exist")
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"{path} is not a readable .npy array: {e}") from None
    if array.dtype.kind not in "iu":
        raise ValueError(f"{path} holds {array.dtype} values; tokens must be integers")
    tokens = _split(torch.from_numpy(array.astype(np.int64)), split, val_fraction)
    return TokenData(tokens, vocab_size, f"{path.name}/{split}")
