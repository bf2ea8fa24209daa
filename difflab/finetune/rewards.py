"""Rewards for reward and preference fine-tuning, by the names the command line accepts.

    reward = get("classifier:3")          # log p(3 | x) under the shipped MNIST classifier
    r = reward(x)                         # [B] float, differentiable in x (DRaFT backpropagates)
    get("ink"); get("linear:1,0"); get("quadratic:a=0,1;q=2"); get(my_function)

Names (``available()``):

- ``classifier:K``: log p(K | x) under the shipped MNIST classifier, the one of the metrics' class
  accuracy (:mod:`difflab.metrics.classifier`); ``classifier`` alone scores each sample's own label,
  log p(y | x). x [B, 1, 28, 28] in [-1, 1], the data range of the shipped MNIST models and the
  classifier's input (uint8 k as k / 127.5 - 1).
- ``ink``: mean pixel intensity in [0, 1], mean((x + 1) / 2) with pixels clipped to [-1, 1] (the MNIST
  analogue of DDPO's JPEG compressibility, Black et al. 2023).
- ``linear:w``: w . x on vectors x [B, D], w comma-separated (``linear:1,0``), or one number
  broadcast over ``dim`` (``get("linear:1", dim=2)``).
- ``quadratic``: -1/2 (x - a)^T Q (x - a) on vectors, options ``a`` (a vector or a number) and ``q``
  (a number: Q = q I; a vector: Q = diag(q)) separated by ";": ``quadratic:a=0,1;q=2``; default
  a = 0, Q = I, -1/2 ||x||^2 (needs ``dim``).

Linear and quadratic rewards are :class:`difflab.testing.LinearReward` / ``QuadraticReward``
(``reward.exact``), so the reward a method trains on and the exact optimum
``difflab.testing.tilted(p, reward.exact, beta)`` it is judged against are one object. Any Python
callable ``f(x)`` or ``f(x, labels=None)`` is a reward too. Every reward is :func:`checked`: a value
that is NaN or inf, or not one float per sample, is a ValueError naming the reward when it is called.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from difflab.core.tensors import check_finite
from difflab.testing.tilted import LinearReward, QuadraticReward
from difflab.utils.names import unknown_name

__all__ = ["Reward", "available", "checked", "get", "register"]

RewardFn = Callable[..., Tensor]
# factory(argument after "name:" or None, **context) -> a reward function
Factory = Callable[..., RewardFn]


@dataclass(frozen=True, eq=False)
class Reward:
    """r(x [B, ...], labels=None) -> [B], checked: NaN, inf or another shape is a ValueError naming
    the reward. ``exact`` is the :mod:`difflab.testing.tilted` reward it computes (linear and
    quadratic rewards), for the closed-form optimum, else None."""

    name: str
    fn: Callable[[Tensor, Tensor | None], Tensor]
    exact: LinearReward | QuadraticReward | None = None

    def __call__(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        r = self.fn(x, labels)
        expected = f"one float per sample, shape [{len(x)}]"
        if not isinstance(r, Tensor):
            raise ValueError(f"reward {self.name!r} returned a {type(r).__name__}, not {expected}")
        if r.shape != (len(x),) or not r.is_floating_point():
            raise ValueError(
                f"reward {self.name!r} returned {r.dtype} of shape {list(r.shape)}, not {expected}"
            )
        return check_finite(r, f"reward {self.name!r}")


def _takes_labels(fn: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # some builtins have no signature
        return False
    return any(p.name == "labels" or p.kind == p.VAR_KEYWORD for p in parameters)


def checked(reward: RewardFn, name: str | None = None) -> Reward:
    """``reward`` (any callable ``f(x)`` or ``f(x, labels=None)`` returning [B]) as a :class:`Reward`
    whose every value is checked; a Reward is returned as it is."""
    if isinstance(reward, Reward):
        return reward
    if not callable(reward):
        raise ValueError(f"a reward must be a name or a callable, got {reward!r}")
    name = name or getattr(reward, "__name__", type(reward).__name__)
    exact = reward if isinstance(reward, LinearReward | QuadraticReward) else None
    if _takes_labels(reward):
        return Reward(name, lambda x, labels: reward(x, labels=labels), exact)
    return Reward(name, lambda x, labels: reward(x), exact)


_REWARDS: dict[str, Factory] = {}


def register(name: str) -> Callable[[Factory], Factory]:
    """Decorator: ``factory(argument, **context)`` builds the reward called ``name`` or
    ``name:argument`` (argument None when there is none)."""

    def decorate(factory: Factory) -> Factory:
        if name in _REWARDS:
            raise ValueError(f"reward name {name!r} registered twice")
        _REWARDS[name] = factory
        return factory

    return decorate


def available() -> list[str]:
    """The reward names :func:`get` accepts (``name`` or ``name:argument``)."""
    return sorted(_REWARDS)


def get(spec: str | RewardFn, **context: Any) -> Reward:
    """The reward ``spec`` names ("classifier:3", "ink", "linear:1,0", "quadratic:a=0,1;q=2"; module
    docstring), or a callable, checked. ``context``: what a reward may need besides its name, ``dim``
    (the vector length a number is broadcast over); keys a reward does not use are ignored."""
    if not isinstance(spec, str):
        return checked(spec)
    name, colon, argument = spec.partition(":")
    if name not in _REWARDS:
        raise unknown_name("reward", name, _REWARDS)
    reward = _REWARDS[name](argument if colon else None, **context)
    return checked(reward, spec)


def _no_argument(name: str, argument: str | None) -> None:
    if argument is not None:
        raise ValueError(f"reward {name!r} takes no argument, got {name}:{argument}")


def _numbers(spec: str, text: str) -> Tensor:
    try:
        return torch.tensor([float(v) for v in text.split(",")], dtype=torch.float64)
    except ValueError:
        raise ValueError(
            f"reward {spec!r}: {text!r} is not a comma-separated list of numbers"
        ) from None


def _vector(spec: str, values: Tensor, dim: int | None) -> Tensor:
    """``values`` as a vector of length ``dim`` (one number broadcast; a vector's length checked)."""
    if len(values) > 1:
        if dim is not None and len(values) != dim:
            raise ValueError(f"reward {spec!r} has {len(values)} entries but dim is {dim}")
        return values
    if dim is None:
        raise ValueError(
            f"reward {spec!r} broadcasts a number over vectors x [B, D]: give dim=D, or all D entries"
        )
    return values.expand(dim).clone()


@register("classifier")
def classifier(argument: str | None, **context: Any) -> RewardFn:
    """log p(K | x) (``classifier:K``) or log p(y | x) of each sample's label y (``classifier``) under
    the shipped MNIST classifier; x [B, 1, 28, 28] in [-1, 1]."""
    # deferred: difflab.metrics imports training, which only this reward needs
    from difflab.metrics.classifier import _as_input, load

    network = load()
    classes = network.config["classes"]
    target = None
    if argument is not None:
        if not (argument.isdecimal() and int(argument) < classes):
            raise ValueError(
                f"reward 'classifier:{argument}': the class must be an integer 0..{classes - 1}"
            )
        target = int(argument)

    def log_prob(x: Tensor, labels: Tensor | None = None) -> Tensor:
        if target is None and labels is None:
            raise ValueError(
                "reward 'classifier' scores each sample's label, log p(y | x): give labels, or "
                "name a class (classifier:K)"
            )
        y = torch.full((len(x),), target) if target is not None else torch.as_tensor(labels)
        if y.shape != (len(x),) or bool(((y < 0) | (y >= classes)).any()):
            raise ValueError(
                f"reward 'classifier' needs one label 0..{classes - 1} per sample, got labels of "
                f"shape {list(y.shape)} with values {y.unique().tolist()[:12]}"
            )
        logits = network.to(x.device)(_as_input(x))[1]
        return logits.log_softmax(1).gather(1, y.to(x.device).long()[:, None])[:, 0]

    return log_prob


@register("ink")
def ink(argument: str | None, **context: Any) -> RewardFn:
    """mean((clip(x, -1, 1) + 1) / 2) over each sample's pixels, in [0, 1] (Black et al. 2023's
    compressibility, its MNIST analogue)."""
    _no_argument("ink", argument)

    def mean_intensity(x: Tensor) -> Tensor:
        return ((x.flatten(1).clamp(-1, 1) + 1) / 2).mean(1)

    return mean_intensity


@register("linear")
def linear(argument: str | None, dim: int | None = None, **context: Any) -> RewardFn:
    """w . x on vectors, :class:`difflab.testing.LinearReward`."""
    if not argument:
        raise ValueError("reward 'linear' needs its weights w: linear:1,0 (or linear:1 with dim)")
    spec = f"linear:{argument}"
    return LinearReward(_vector(spec, _numbers(spec, argument), dim))


@register("quadratic")
def quadratic(argument: str | None, dim: int | None = None, **context: Any) -> RewardFn:
    """-1/2 (x - a)^T Q (x - a) on vectors, Q = q I or diag(q), :class:`difflab.testing.QuadraticReward`."""
    spec = "quadratic" if argument is None else f"quadratic:{argument}"
    options = {"a": "0", "q": "1"}
    for item in (argument or "").split(";"):
        key, eq, value = item.partition("=")
        if not item.strip():
            continue
        if key.strip() not in options or not eq:
            raise ValueError(
                f"reward {spec!r}: options are a=VECTOR and q=NUMBER_OR_VECTOR separated by ';' "
                f"(quadratic:a=0,1;q=2), got {item!r}"
            )
        options[key.strip()] = value
    a, q = _numbers(spec, options["a"]), _numbers(spec, options["q"])
    lengths = sorted({len(v) for v in (a, q) if len(v) > 1})
    if len(lengths) > 1:
        raise ValueError(f"reward {spec!r}: a and q have different lengths {lengths}")
    dim = dim if dim is not None else next(iter(lengths), None)
    return QuadraticReward(torch.diag(_vector(spec, q, dim)), _vector(spec, a, dim))
