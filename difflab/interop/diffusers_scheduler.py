"""Any difflab sampler on any difflab grid as a diffusers scheduler::

    pipe.scheduler = Scheduler.from_config(
        pipe.scheduler.config, sampler="dpmpp_2m", schedule="karras"
    )

The pipeline's loop (``set_timesteps``, then per model call ``scale_model_input`` and ``step``)
drives the unchanged difflab sampler: ``timesteps`` lists one entry per denoiser evaluation the
sampler makes (its documented NFE, inner stages included), the sampler runs in a
:class:`~difflab.interop.stepwise.Coroutine`, and each ``step`` answers its pending network call
with the pipeline's model output and returns the model input of its next evaluation (after the last
one, the final sample). The result is the result of calling the sampler directly with
:func:`~difflab.interop.diffusers_denoiser.denoiser` on the same model, noise and grid.

Samples stay in the model's coordinates x_t = alpha x (``scale_model_input`` is the identity and
``init_noise_sigma`` is 1 on VP grids), which is what pipelines that never scale their latents
(DDPMPipeline, DiTPipeline) assume; the sampler starts at x = sample / alpha(sigma_0). It integrates
in float32 (or the sample's dtype if wider) and hands samples back in the pipeline's dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from torch import Tensor

from difflab import sampling, schedules
from difflab.core.parameterization import Denoiser
from difflab.core.processes import Flow
from difflab.core.tensors import as_tensor, check_name
from difflab.interop.diffusers_denoiser import is_flow, model_prediction, wrap
from difflab.interop.stepwise import Coroutine, Finished, evaluation_sigmas, stepwise_sampler

__all__ = ["Scheduler", "SchedulerOutput"]

PROCESSES = ("vp_discrete", "flow")


@dataclass
class SchedulerOutput(BaseOutput):
    """``prev_sample``: the model input of the next evaluation, or the final sample after the last;
    ``pred_original_sample``: this evaluation's x0 estimate D(x, sigma)."""

    prev_sample: Tensor
    pred_original_sample: Tensor | None = None


class Scheduler(SchedulerMixin, ConfigMixin):
    """A diffusers scheduler that runs difflab sampler ``sampler`` on grid ``schedule`` (DESIGN.md).

    ``sampler_options`` / ``schedule_options`` go to the sampler / grid function (e.g.
    ``{"final": "denoised"}`` for diffusers' last step x(0) = D, ``{"rho": 5}``). ``schedule=None``
    is the scheduler's own spacing: ``uniform_t`` with ``timestep_spacing`` for DDPM-type configs,
    the shifted ``flow`` grid for flow matching. The remaining arguments are the diffusers config
    keys that fix the process (``process`` is inferred by :meth:`from_config`). ``quantize`` rounds
    timesteps to the training table (see :func:`~difflab.interop.diffusers_denoiser.denoiser`).
    """

    config_name = "scheduler_config.json"
    order = 1

    @register_to_config
    def __init__(
        self,
        sampler: str = "dpmpp_2m",
        schedule: str | None = None,
        sampler_options: dict[str, Any] | None = None,
        schedule_options: dict[str, Any] | None = None,
        quantize: bool = True,
        process: str = "vp_discrete",
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: list[float] | None = None,
        rescale_betas_zero_snr: bool = False,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
    ) -> None:
        check_name("process", process, PROCESSES)
        stepwise_sampler(sampler)
        if schedule is not None:
            schedules.get(schedule)
        self._template = wrap(None, self.config, quantize)  # process, prediction, time input
        self.process = self._template.process
        self.timesteps: Tensor | None = None
        self.sigmas: Tensor | None = None
        self.num_inference_steps: int | None = None
        self._times: list[float] = []
        self._index = 0
        self._run: Coroutine | None = None
        self._handed_out: Tensor | None = None
        self._denoised: list[Tensor | None] = [None]
        self._dtype = torch.float32

    @classmethod
    def from_config(
        cls, config: Any = None, return_unused_kwargs: bool = False, **kwargs: Any
    ) -> Scheduler:
        """``from_config(pipe.scheduler.config, sampler=..., schedule=...)``: the process (DDPM
        table or flow matching) and prediction type come from ``config``, whichever scheduler wrote
        it."""
        if config is not None and "process" not in kwargs:
            kwargs["process"] = "flow" if is_flow(dict(config)) else "vp_discrete"
        return super().from_config(config, return_unused_kwargs, **kwargs)

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    @property
    def init_noise_sigma(self) -> float:
        """The scale of the starting noise: the std of x_t = alpha (x0 + sigma eps) at the first
        level for unit-variance data, alpha sqrt(1 + sigma^2) (1 on every VP grid, as in diffusers'
        DDPM-type schedulers; 1 at sigma = inf)."""
        sigma = math.inf if self.sigmas is None else float(self.sigmas[0])
        if math.isinf(sigma):
            return 1.0
        return float(self.process.coefficients(as_tensor(sigma))[0]) * math.sqrt(1 + sigma * sigma)

    def scale_model_input(self, sample: Tensor, timestep: Any = None) -> Tensor:
        """The identity: samples are already the model's input x_t."""
        return sample

    def _grid(
        self,
        steps: int | None,
        timesteps: list[int] | Tensor | None,
        sigmas: list[float] | Tensor | None,
        mu: float | None,
    ) -> Tensor:
        """The noise-level grid sigma_0 > ... > sigma_n = 0 (difflab's sigma = sigma_t /
        alpha_t)."""
        if sigmas is not None or timesteps is not None:
            if sigmas is None:
                t = as_tensor(timesteps, torch.float64).flatten()
                if isinstance(self.process, Flow):
                    t = t / self.config.num_train_timesteps
                sigmas = self.process.sigma_ve(t)
            values = as_tensor(sigmas, torch.float64).flatten()
            n = len(values) - int(len(values) > 0 and float(values[-1]) == 0)
            return schedules.explicit(max(n, 1), sigmas=values)
        if steps is None:
            raise ValueError("set_timesteps needs num_inference_steps, timesteps or sigmas")
        flow = isinstance(self.process, Flow)
        name = self.config.schedule or ("flow" if flow else "uniform_t")
        options = dict(self.config.schedule_options or {})
        if self.config.schedule is None and not flow:
            options.setdefault("spacing", self.config.timestep_spacing)
            if self.config.timestep_spacing == "leading":
                options.setdefault("steps_offset", self.config.steps_offset)
        if flow and self.config.use_dynamic_shifting and schedules.get(name) is schedules.flow:
            if mu is None:
                raise ValueError("this flow config uses dynamic shifting: pass mu to set_timesteps")
            exponential = self.config.time_shift_type == "exponential"
            options.setdefault("shift", math.exp(mu) if exponential else mu)
        return schedules.get(name)(steps, process=self.process, **options)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[int] | Tensor | None = None,
        sigmas: list[float] | Tensor | None = None,
        mu: float | None = None,
    ) -> None:
        """Build the grid (``num_inference_steps`` on the schedule, or the given model ``timesteps``
        or difflab noise levels ``sigmas``) and list the model timestep of every evaluation the
        sampler will make on it; ``order`` becomes the evaluations per step, rounded up."""
        self._close()
        grid = self._grid(num_inference_steps, timesteps, sigmas, mu)
        levels = evaluation_sigmas(self.config.sampler, grid, **(self.config.sampler_options or {}))
        times = self._template.time(torch.tensor(levels, dtype=torch.float32)).float()
        self.sigmas, self.num_inference_steps = grid, len(grid) - 1
        self.timesteps = times.to(device)
        self._times = times.tolist()
        self.order = math.ceil(len(levels) / self.num_inference_steps)
        self._index = 0

    def _close(self) -> None:
        if self._run is not None:
            self._run.close()
        self._run, self._handed_out, self._denoised[0] = None, None, None

    def _check_call(self, timestep: Any, sample: Tensor) -> None:
        k = self._index
        if self.timesteps is None:
            raise ValueError("call set_timesteps() before step()")
        if k >= len(self._times):
            raise ValueError(
                f"all {len(self._times)} evaluations of this run are done; call set_timesteps() to "
                "start another"
            )
        got = float(torch.as_tensor(timestep).flatten()[0].float())
        if got != self._times[k]:
            raise ValueError(
                f"step() got timestep {got:g}, but evaluation {k} of {len(self._times)} is at "
                f"timestep {self._times[k]:g}: step through scheduler.timesteps in order "
                "(partial schedules such as img2img's are not supported)"
            )
        handed = self._handed_out
        if k > 0 and sample is not handed and not torch.equal(sample, handed):
            raise ValueError(
                "the sample passed to step() is not the prev_sample the scheduler returned: the "
                "difflab sampler integrates its own trajectory and cannot take edited latents"
            )

    def _start(self, sample: Tensor, generator: torch.Generator | None) -> None:
        """Start the sampler at x = sample / alpha(sigma_0) (x = sample at sigma_0 = inf) and run it
        to its first evaluation, the model call the pipeline has just made at ``sample``."""
        self._dtype = dtype = torch.promote_types(sample.dtype, torch.float32)
        sigma0 = float(self.sigmas[0])
        alpha0 = float(self.process.coefficients(as_tensor(sigma0))[0])
        x = sample.to(dtype) if math.isinf(sigma0) else sample.to(dtype) / alpha0
        fn, grid = sampling.get(self.config.sampler), self.sigmas
        options, form, denoised = self.config.sampler_options or {}, self._template, self._denoised

        def body(call: Any) -> Tensor:  # holds no reference to self (see Coroutine)
            # the network is the pipeline: x_t goes out as prev_sample, its output comes back
            pipeline = Denoiser(
                lambda x_t, time, **cond: call(x_t),
                form.process,
                form.prediction,
                form.time_input,
                form.quantize,
            )

            def recorded(x: Tensor, sigma: Tensor, **cond: Any) -> Tensor:
                denoised[0] = pipeline(x, sigma, **cond)
                return denoised[0]

            return fn(recorded, x, grid, generator=generator, **options)

        self._run = Coroutine(body)
        self._run.start(sample.device)

    def step(
        self,
        model_output: Tensor,
        timestep: Any,
        sample: Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[Tensor]:
        """Answer the sampler's pending evaluation with ``model_output`` (the model's output at
        ``sample`` and ``timestep``, as the config's prediction type; a learned-variance half is
        dropped) and run it to its next one. ``generator`` seeds stochastic samplers."""
        self._check_call(timestep, sample)
        if self._index == 0:
            self._start(sample, generator)
        request = self._run.send(model_prediction(model_output, sample).to(self._dtype))
        self._index += 1
        if isinstance(request, Finished):
            request, self._run = request.value, None
        self._handed_out = request.to(sample.dtype)
        out = SchedulerOutput(self._handed_out, self._denoised[0].to(sample.dtype))
        return out if return_dict else (out.prev_sample,)
