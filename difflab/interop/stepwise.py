"""Drive a whole-trajectory sampler one denoiser evaluation at a time.

difflab samplers are plain functions that call the denoiser as often as they need (DESIGN.md); a
step-wise API (a diffusers pipeline's ``scheduler.step``) instead hands in one model output per
call. :class:`Coroutine` bridges the two without re-implementing any sampler: the sampler runs
unchanged in a worker thread, and each of its network calls pauses it until the caller sends the
output back, so the evaluations, their order and the arithmetic between them are exactly those of a
direct call. :func:`evaluation_sigmas` finds, before any model runs, the noise level of every
evaluation.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from difflab import sampling

__all__ = ["Coroutine", "Finished", "evaluation_sigmas", "stepwise_sampler"]


@dataclass(frozen=True)
class Finished:
    """The body of a :class:`Coroutine` returned ``value``."""

    value: Any


class _Cancelled(BaseException):
    """Raised inside the worker to unwind a body that is abandoned mid-way."""


_CANCEL = object()


def _cancel(replies: queue.Queue, waiting: list[bool], thread: threading.Thread) -> None:
    """Unwind a worker that waits for a reply, and wait for it to end."""
    if waiting[0]:
        waiting[0] = False
        replies.put(_CANCEL)
        thread.join()


class Coroutine:
    """``body(call)`` run as a coroutine of its calls: every ``call(request)`` made by the body
    pauses it and hands ``request`` to the caller of :meth:`start` / :meth:`send`; ``send(reply)``
    resumes it with ``reply`` as the value of that call. The body runs in a worker thread under the
    grad and inference modes (and the CUDA stream of ``device``) that were current at :meth:`start`;
    its exceptions are raised by :meth:`start` / :meth:`send`. A coroutine that is closed or dropped
    while paused unwinds its body."""

    def __init__(self, body: Callable[[Callable[[Any], Any]], Any]) -> None:
        self._requests: queue.Queue = queue.Queue(maxsize=1)
        self._replies: queue.Queue = queue.Queue(maxsize=1)
        self._waiting = [False]  # shared with the finalizer, which must not hold self
        self._body = body
        self._thread: threading.Thread | None = None

    def start(self, device: torch.device | None = None) -> Any:
        """Run the body up to its first call; returns that call's request, or :class:`Finished`."""
        if self._thread is not None:
            raise RuntimeError("this coroutine has already been started")
        requests, replies, body = self._requests, self._replies, self._body
        grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
        stream = torch.cuda.current_stream(device) if device and device.type == "cuda" else None

        def call(request: Any) -> Any:
            requests.put(("call", request))
            reply = replies.get()
            if reply is _CANCEL:
                raise _Cancelled
            return reply

        def run() -> None:
            with contextlib.ExitStack() as modes:
                modes.enter_context(torch.inference_mode(inference))
                modes.enter_context(torch.set_grad_enabled(grad))
                if stream is not None:
                    modes.enter_context(torch.cuda.stream(stream))
                try:
                    result = body(call)
                except _Cancelled:
                    return
                except BaseException as e:  # handed to the caller, who raises it
                    requests.put(("error", e))
                    return
            requests.put(("done", result))

        self._thread = threading.Thread(target=run, name="difflab-coroutine", daemon=True)
        weakref.finalize(self, _cancel, replies, self._waiting, self._thread)
        self._thread.start()
        return self._next()

    def send(self, reply: Any) -> Any:
        """Resume the paused body with ``reply``; returns its next request, or :class:`Finished`."""
        if not self._waiting[0]:
            raise RuntimeError("the coroutine is not paused at a call (not started, or finished)")
        self._replies.put(reply)
        return self._next()

    def _next(self) -> Any:
        kind, value = self._requests.get()
        self._waiting[0] = kind == "call"
        if kind == "error":
            raise value
        return Finished(value) if kind == "done" else value

    def close(self) -> None:
        """Unwind a paused body (its pending call raises inside the worker); no-op otherwise."""
        if self._thread is not None:
            _cancel(self._replies, self._waiting, self._thread)


def stepwise_sampler(sampler: str) -> sampling.SamplerInfo:
    """The registry entry of ``sampler``, checked to make a number of evaluations fixed in
    advance."""
    info = sampling.info(sampler)
    if info.adaptive:
        raise ValueError(
            f"sampler {sampler!r} chooses its steps while it runs, so its noise levels cannot be "
            "listed in advance; pick a sampler with a fixed step count"
        )
    return info


def evaluation_sigmas(
    sampler: str, sigmas: Tensor | Sequence[float], **options: Any
) -> list[float]:
    """The noise level of each denoiser evaluation ``sampler`` makes on the grid ``sigmas``, in
    order.

    Found by running the sampler once on a one-element state with the denoiser D = 0 and a fixed
    generator: for a sampler whose steps are fixed in advance (all but the adaptive ones) the levels
    depend on the grid and the options only, not on the values the denoiser returns.
    """
    info = stepwise_sampler(sampler)
    levels: list[float] = []

    def probe(x: Tensor, sigma: Tensor, **cond: Any) -> Tensor:
        levels.append(float(torch.as_tensor(sigma).flatten()[0]))
        return torch.zeros_like(x)

    grid = torch.as_tensor(sigmas, dtype=torch.float64)
    start = torch.zeros(1, dtype=torch.float64)
    info.fn(probe, start, grid, generator=torch.Generator().manual_seed(0), **options)
    return levels
