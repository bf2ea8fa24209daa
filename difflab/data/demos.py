"""Demonstrations: episodes of observations and actions, stored as .npz (never pickled), and the
(observation history, action chunk) windows a policy trains on.

A :class:`Demos` holds E episodes laid end to end: step t of episode e is row ``starts[e] + t`` of
``observations`` [S, obs_dim], ``actions`` [S, act_dim] and ``rewards`` [S], where the action is the
one taken at that observation and the reward the one it earned (the final observation, after the
last action, is not kept). Per episode: ``lengths``, ``success``, ``seeds`` (the episode's seed:
resetting the environment with it replays the episode) and ``modes`` (the index of the way it went
in the environment's mode names, -1 for none). Metadata: the environment's name, the policy that
acted (for demonstrations, the scripted expert) and the difflab version that wrote the file.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field, fields, replace
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from difflab.data.arrays import check_signature, reading_errors
from difflab.data.normalization import Normalizer
from difflab.utils.files import atomic_write_bytes

__all__ = ["FORMAT", "VERSION", "Demos", "Windows", "difflab_version"]

FORMAT = "difflab demos"
VERSION = 1
_STEP_ARRAYS = ("observations", "actions", "rewards")
_EPISODE_ARRAYS = ("lengths", "success", "seeds", "modes")
_TEXT = ("env", "policy", "difflab_version")


def difflab_version() -> str:
    """The installed difflab's version ("unknown" when it runs from a tree that is not installed)."""
    try:
        return metadata.version("difflab")
    except metadata.PackageNotFoundError:
        return "unknown"


class Windows(NamedTuple):
    """Training pairs of a policy: observation histories [W, obs_horizon, obs_dim] and action chunks
    [W, pred_horizon, act_dim]."""

    observations: Tensor
    actions: Tensor


@dataclass(frozen=True, eq=False)
class Demos:
    """E episodes of (o_t, a_t, r_t), t < T_e, laid end to end (see the module docstring)."""

    observations: Tensor
    actions: Tensor
    rewards: Tensor
    lengths: Tensor
    success: Tensor
    seeds: Tensor
    modes: Tensor
    env: str
    policy: str
    difflab_version: str = field(default_factory=difflab_version)

    def __post_init__(self) -> None:
        cast = {
            "observations": torch.float32,
            "actions": torch.float32,
            "rewards": torch.float32,
            "lengths": torch.long,
            "success": torch.bool,
            "seeds": torch.long,
            "modes": torch.long,
        }
        for name, dtype in cast.items():
            value = torch.as_tensor(getattr(self, name))
            if value.dtype.is_complex or (dtype != torch.bool and value.dtype == torch.bool):
                raise ValueError(f"demos: {name} must be real numbers, got {value.dtype}")
            object.__setattr__(self, name, value.detach().to("cpu", dtype))
        for name in _TEXT:
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"demos: {name} must be a string, got {getattr(self, name)!r}")
        self._check()

    def _check(self) -> None:
        obs, act, rew, lengths = self.observations, self.actions, self.rewards, self.lengths
        if obs.ndim != 2 or act.ndim != 2 or rew.ndim != 1:
            raise ValueError(
                f"demos: expected observations [S, obs_dim], actions [S, act_dim], rewards [S]; got "
                f"{list(obs.shape)}, {list(act.shape)}, {list(rew.shape)}"
            )
        if not len(obs) == len(act) == len(rew):
            raise ValueError(
                f"demos: {len(obs)} observations, {len(act)} actions and {len(rew)} rewards "
                "(one of each per step)"
            )
        if lengths.ndim != 1 or len(lengths) == 0:
            raise ValueError(f"demos: expected lengths [E] with E >= 1, got {list(lengths.shape)}")
        for name in _EPISODE_ARRAYS[1:]:
            if getattr(self, name).shape != lengths.shape:
                raise ValueError(
                    f"demos: {len(lengths)} episodes but {name} of shape "
                    f"{list(getattr(self, name).shape)}"
                )
        if int(lengths.min()) < 1 or int(lengths.sum()) != len(obs):
            raise ValueError(
                f"demos: episode lengths must be >= 1 and add up to the {len(obs)} steps, got "
                f"lengths summing to {int(lengths.sum())} (min {int(lengths.min())})"
            )
        for name in ("observations", "actions", "rewards"):
            if not bool(torch.isfinite(getattr(self, name)).all()):
                raise ValueError(f"demos: {name} contain NaN or inf")

    @property
    def episodes(self) -> int:
        """E, the number of episodes."""
        return len(self.lengths)

    @property
    def steps(self) -> int:
        """S, the number of steps of all episodes together."""
        return len(self.observations)

    @property
    def starts(self) -> Tensor:
        """[E] int64: the row of each episode's first step, starts[e] = sum_{e' < e} T_e'."""
        return torch.cumsum(self.lengths, 0) - self.lengths

    @property
    def returns(self) -> Tensor:
        """[E] float64: each episode's return, R_e = sum_t r_t (undiscounted)."""
        episode = torch.repeat_interleave(torch.arange(self.episodes), self.lengths)
        return torch.zeros(self.episodes, dtype=torch.float64).index_add_(
            0, episode, self.rewards.double()
        )

    @property
    def obs_dim(self) -> int:
        return self.observations.shape[1]

    @property
    def act_dim(self) -> int:
        return self.actions.shape[1]

    def subset(self, episodes: Tensor) -> Demos:
        """The episodes selected by ``episodes`` (a [E] bool mask or indices), in that order."""
        index = torch.arange(self.episodes)[torch.as_tensor(episodes)]
        if index.numel() == 0:
            raise ValueError("demos: a subset needs at least one episode")
        rows = torch.cat(
            [torch.arange(s, s + n) for s, n in zip(self.starts[index], self.lengths[index])]
        )
        return replace(
            self,
            **{name: getattr(self, name)[rows] for name in _STEP_ARRAYS},
            **{name: getattr(self, name)[index] for name in _EPISODE_ARRAYS},
        )

    @classmethod
    def concat(cls, parts: list[Demos]) -> Demos:
        """The episodes of ``parts`` one after another (same environment, policy and sizes)."""
        first = parts[0]
        for part in parts[1:]:
            if (part.env, part.policy, part.obs_dim, part.act_dim) != (
                first.env,
                first.policy,
                first.obs_dim,
                first.act_dim,
            ):
                raise ValueError(
                    f"demos: cannot join episodes of {part.env} ({part.policy}) to {first.env} "
                    f"({first.policy}), or of other sizes"
                )
        return replace(
            first,
            **{
                name: torch.cat([getattr(p, name) for p in parts])
                for name in _STEP_ARRAYS + _EPISODE_ARRAYS
            },
        )

    def windows(
        self, obs_horizon: int, pred_horizon: int, action_horizon: int | None = None
    ) -> Windows:
        """(observation history, action chunk) pairs with Diffusion Policy's alignment and padding
        (Chi et al. 2023; its SequenceSampler, pad_before = To - 1, pad_after = Ta - 1):
        o_{t-To+1..t} and a_{t-To+1..t-To+H}, indices clamped into the episode.

        The chunk starts with the history (as LeRobot's action indices 1 - To, ..., H - To do), so a
        policy executes its entries To - 1 .. To + Ta - 2. Before an episode's first step the
        observations and actions repeat its first ones; after its last step the actions repeat its
        last one (observations never run past the end). Current times t: every step of the episode
        when ``action_horizon`` is None; with Ta = ``action_horizon``, Diffusion Policy's set,
        t <= T - H + Ta + To - 2: a chunk reaches at most Ta - 1 steps past the episode's last step
        (pad_after), so the last windows' executed actions may include its repeated last action.
        """
        to, h = obs_horizon, pred_horizon
        if to < 1 or h < to:
            raise ValueError(
                f"windows need 1 <= obs_horizon <= pred_horizon, got {obs_horizon} and {pred_horizon}"
            )
        ta = h - to + 1 if action_horizon is None else action_horizon
        if not 1 <= ta <= h - to + 1:
            raise ValueError(
                f"action_horizon must lie in [1, pred_horizon - obs_horizon + 1] = [1, {h - to + 1}], "
                f"got {action_horizon}"
            )
        count = (self.lengths - h + ta + to - 1).clamp_min(0)  # windows per episode
        episode = torch.repeat_interleave(torch.arange(self.episodes), count)
        first = torch.repeat_interleave(torch.cumsum(count, 0) - count, count)
        begin = torch.arange(len(episode)) - first - (to - 1)  # t - To + 1, from 1 - To
        offsets = begin[:, None] + torch.arange(h)[None]  # [W, H] steps within the episode
        last = (self.lengths[episode] - 1)[:, None]
        rows = self.starts[episode][:, None] + torch.minimum(offsets.clamp_min(0), last)
        return Windows(self.observations[rows[:, :to]], self.actions[rows])

    def normalizers(self, mode: str = "minmax") -> tuple[Normalizer, Normalizer]:
        """Per-dimension normalizers of the observations and of the actions, fitted on every step."""
        return Normalizer.fit(self.observations, mode), Normalizer.fit(self.actions, mode)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the episodes to a .npz file (no pickled arrays), atomically."""
        path = Path(path)
        if path.suffix.lower() != ".npz":
            raise ValueError(f"demonstrations are saved as .npz, got {path}")
        arrays: dict[str, Any] = {
            "format": np.array(FORMAT),
            "format_version": np.array(VERSION),
            **{name: np.array(getattr(self, name)) for name in _TEXT},
            **{name: getattr(self, name).numpy() for name in _STEP_ARRAYS + _EPISODE_ARRAYS},
            "starts": self.starts.numpy(),
        }
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write_bytes(path, buffer.getvalue())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Demos:
        """The episodes of a file :meth:`save` wrote; a file of another kind, with pickled arrays,
        missing arrays or inconsistent shapes is a ValueError naming the file and the problem."""
        path = Path(path)
        check_signature(path, (".npz",))
        with reading_errors(path), np.load(path, allow_pickle=False) as archive:
            kind = archive["format"].item() if "format" in archive.files else None
            if kind != FORMAT:
                raise ValueError(
                    f"{path} is not a difflab demonstrations file (format {kind!r}; arrays "
                    f"{', '.join(archive.files)}); write one with `difflab policy collect`"
                )
            version = int(archive["format_version"])
            if version > VERSION:
                raise ValueError(
                    f"{path} is demonstrations format version {version}; this difflab reads up to "
                    f"{VERSION}: update difflab"
                )
            names = [f.name for f in fields(cls)] + ["starts"]
            missing = [name for name in names if name not in archive.files]
            if missing:
                raise ValueError(f"{path} lacks the arrays {', '.join(missing)}")
            arrays = {name: archive[name] for name in names}
        for name in _TEXT:
            if arrays[name].dtype.kind != "U" or arrays[name].ndim != 0:
                raise ValueError(f"{path}: {name} must be one string")
        for name in _STEP_ARRAYS + _EPISODE_ARRAYS + ("starts",):
            if arrays[name].dtype.kind not in "biuf":
                raise ValueError(f"{path}: {name} must be numbers, got dtype {arrays[name].dtype}")
        starts = arrays.pop("starts")
        try:
            demos = cls(
                **{name: str(arrays[name]) for name in _TEXT},
                **{n: torch.from_numpy(arrays[n]) for n in _STEP_ARRAYS + _EPISODE_ARRAYS},
            )
        except ValueError as e:
            raise ValueError(f"{path}: {str(e).removeprefix('demos: ')}") from None
        if starts.shape != demos.lengths.shape or not np.array_equal(starts, demos.starts.numpy()):
            raise ValueError(f"{path}: episode starts do not match the episode lengths")
        return demos
