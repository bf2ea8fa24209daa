"""difflab.interop.diffusers on tiny, randomly initialized diffusers models built from configs here
(nothing is fetched): the denoiser reproduces diffusers' own DDIM, Euler, DPM-Solver++(2M) and
flow-matching Euler schedulers when configured alike, the Scheduler wrapper runs inside
DDPMPipeline, DiTPipeline and StableDiffusionPipeline and equals the direct sampler call, and a
difflab UNet saves as a UNet2DModel where the architecture maps."""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys
import threading

os.environ["HF_HUB_OFFLINE"] = "1"  # before diffusers / huggingface_hub read it

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from difflab import sampling, schedules  # noqa: E402
from difflab.core.parameterization import Denoiser  # noqa: E402
from difflab.core.processes import Process, VPDiscrete  # noqa: E402
from difflab.guidance import classifier_free  # noqa: E402
from difflab.interop import diffusers as dd  # noqa: E402
from difflab.interop.stepwise import Coroutine, Finished, evaluation_sigmas  # noqa: E402
from difflab.models import UNet  # noqa: E402

diffusers.utils.logging.set_verbosity_error()
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

SD15 = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}


def close(ours: torch.Tensor, theirs: torch.Tensor, tol: float = 1e-5) -> None:
    """Equal to float32 rounding, relative to the largest value (a random model's x0 estimates reach
    ~1/sqrt(alpha_bar) = 157 times its output)."""
    assert ours.shape == theirs.shape
    err = float((ours.double() - theirs.double()).abs().max())
    assert err <= tol * float(theirs.abs().max()), f"max error {err:g}"


def seeded(build):
    @functools.wraps(build)
    def wrapper():
        torch.manual_seed(0)
        return build().eval().requires_grad_(False)

    return pytest.fixture(scope="module")(wrapper)


@seeded
def unet():
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
        layers_per_block=1, norm_num_groups=4, attention_head_dim=8,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    )  # fmt: skip


@seeded
def cond_unet():
    return diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
        layers_per_block=1, norm_num_groups=4, cross_attention_dim=16, attention_head_dim=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    )  # fmt: skip


@seeded
def dit():
    return diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=1,
        sample_size=8, patch_size=2, num_embeds_ada_norm=1000, norm_type="ada_norm_zero",
        norm_elementwise_affine=False,
    )  # fmt: skip


@seeded
def vae():
    return diffusers.AutoencoderKL(
        block_out_channels=(8,), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
        norm_num_groups=4, layers_per_block=1,
    )  # fmt: skip


@seeded
def sd3():
    return diffusers.SD3Transformer2DModel(
        sample_size=8, patch_size=1, in_channels=4, out_channels=4, num_layers=1,
        attention_head_dim=8, num_attention_heads=2, caption_projection_dim=16,
        joint_attention_dim=16, pooled_projection_dim=8,
    )  # fmt: skip


class Spy:
    """Wraps model.forward to record the timestep the model receives."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.forward, self.timesteps = model, model.forward, []

    def __enter__(self) -> Spy:
        def forward(*args, **kwargs):
            self.timesteps.append(kwargs.get("timestep", args[1] if len(args) > 1 else None))
            return self.forward(*args, **kwargs)

        self.model.forward = forward
        return self

    def __exit__(self, *exc) -> None:
        del self.model.forward


def diffusers_loop(model, scheduler, noise: torch.Tensor, steps: int, **cond) -> torch.Tensor:
    """The loop every diffusers pipeline runs (set_timesteps, scale_model_input, model, step)."""
    scheduler.set_timesteps(steps)
    x = noise * getattr(scheduler, "init_noise_sigma", 1.0)  # flow matching starts at x_t = noise
    for t in scheduler.timesteps:
        scaled = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
        out = model(scaled, timestep=t.expand(len(x)), **cond).sample
        x = scheduler.step(out, t, x).prev_sample
    return x


def randn(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def start(process: Process, sample: torch.Tensor, sigma0: float) -> torch.Tensor:
    """difflab's x = x_t / alpha for the model input x_t a diffusers loop starts from."""
    if math.isinf(sigma0):
        return sample
    return sample / float(process.coefficients(torch.tensor(sigma0))[0])


def table_grid(process: VPDiscrete, timesteps: torch.Tensor) -> torch.Tensor:
    return torch.cat([process.sigmas[timesteps.long()], torch.zeros(1, dtype=torch.float64)])


# --------------------------------------------------------------------------------------------
# the denoiser


def test_import_difflab_does_not_import_diffusers():
    code = "import sys, difflab, difflab.interop; print('diffusers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    "config",
    [
        {"beta_schedule": "linear"},
        SD15,
        {"beta_schedule": "squaredcos_cap_v2"},
        {**SD15, "rescale_betas_zero_snr": True},
        {"trained_betas": torch.linspace(1e-3, 0.05, 50).tolist(), "num_train_timesteps": 50},
    ],
)
def test_process_is_the_table_diffusers_trains_with(config):
    process = dd.process_of(config)
    table = diffusers.DDPMScheduler(**config).alphas_cumprod.double()
    assert torch.equal(process.alphas_cumprod, table)
    assert process.zero_terminal_snr == config.get("rescale_betas_zero_snr", False)
    t = torch.tensor([0.0, 7.0, len(table) - 1.0], dtype=torch.float64)
    assert torch.equal(process.t_of(process.sigma_ve(t)), t)  # table levels map to their timestep
    # a table level rounded to float32 (as samplers hand it over) still reaches the exact timestep
    time = dd.denoiser(torch.nn.Identity(), config).time(process.sigma_ve(t).float())
    assert time.dtype == torch.float32 and torch.equal(time, t.float())


def test_prediction_and_flow_configs():
    kinds = ("epsilon", "v_prediction", "sample")
    assert [dd.prediction_of({"prediction_type": p}) for p in kinds] == ["eps", "v", "x0"]
    flow = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    assert dd.prediction_of(flow) == "velocity"
    assert dd.process_of(flow).shift == 3.0
    with pytest.raises(ValueError, match=r"prediction_type.*v_prediction"):
        dd.prediction_of({"prediction_type": "v_predict"})
    with pytest.raises(ValueError, match=r"beta_schedule.*scaled_linear"):
        dd.process_of({"beta_schedule": "scaled_linea"})
    with pytest.raises(ValueError, match=r"EDMEulerScheduler.*neither beta_schedule"):
        dd.process_of(diffusers.EDMEulerScheduler())


@pytest.mark.parametrize(
    ("config", "spacing", "steps"),
    [
        ({"prediction_type": "epsilon"}, "leading", 6),
        (
            {**SD15, "prediction_type": "v_prediction", "rescale_betas_zero_snr": True},
            "trailing",
            5,
        ),
        ({"beta_schedule": "squaredcos_cap_v2", "prediction_type": "sample"}, "leading", 7),
    ],
)
def test_ddim_reproduces_diffusers_ddim(unet, config, spacing, steps):
    """difflab's ddim through the denoiser = DDIMScheduler (eta 0, no clipping) on its timesteps;
    the model receives float32 timesteps equal to diffusers' integers (inf at zero terminal SNR ->
    999). (DDIMScheduler steps from t to t - N // n, which is the next timestep only for leading
    spacing and for trailing spacing when n divides N; there it is the DDIM update.)"""
    scheduler = diffusers.DDIMScheduler(**config, timestep_spacing=spacing, clip_sample=False)
    noise = randn(2, 3, 8, 8)
    theirs = diffusers_loop(unet, scheduler, noise, steps)
    denoiser = dd.denoiser(unet, scheduler)
    sigmas = table_grid(denoiser.process, scheduler.timesteps)
    assert math.isinf(sigmas[0]) == config.get("rescale_betas_zero_snr", False)
    with Spy(unet) as spy:
        ours = sampling.get("ddim")(
            denoiser, start(denoiser.process, noise, float(sigmas[0])), sigmas, final="denoised"
        )
    close(ours, theirs)
    assert all(t.dtype == torch.float32 and t.shape == (2,) for t in spy.timesteps)
    assert [float(t[0]) for t in spy.timesteps] == scheduler.timesteps.tolist()


@pytest.mark.parametrize("karras", [False, True])
def test_euler_reproduces_diffusers_euler(unet, karras):
    """Euler in x = x_t / alpha coordinates; on Karras sigmas diffusers feeds fractional timesteps
    (log-linear in sigma between table rows, as difflab's t_of), i.e. quantize=False."""
    scheduler = diffusers.EulerDiscreteScheduler(
        **SD15, timestep_spacing="leading", steps_offset=1, use_karras_sigmas=karras
    )
    noise = randn(2, 3, 8, 8)
    theirs = diffusers_loop(unet, scheduler, noise, 6)
    denoiser = dd.denoiser(unet, scheduler, quantize=not karras)
    x = noise * scheduler.init_noise_sigma
    with Spy(unet) as spy:
        ours = sampling.get("euler")(denoiser, x, scheduler.sigmas.double(), final="denoised")
    close(ours, theirs)
    got = torch.stack([t[0] for t in spy.timesteps])
    torch.testing.assert_close(got, scheduler.timesteps, rtol=0, atol=1e-3 if karras else 0)


@pytest.mark.parametrize("karras", [False, True])
def test_dpmpp_2m_reproduces_diffusers_dpm_solver(cond_unet, karras):
    """DPMSolverMultistepScheduler (dpmsolver++, order 2, lower-order final step into 0) = difflab's
    dpmpp_2m with final="denoised"; diffusers rounds its Karras timesteps like quantize=True.
    UNet2DConditionModel's encoder_hidden_states pass through the denoiser."""
    config = {**SD15, "prediction_type": "v_prediction"}
    scheduler = diffusers.DPMSolverMultistepScheduler(**config, use_karras_sigmas=karras)
    noise, cond = randn(2, 4, 8, 8), {"encoder_hidden_states": randn(2, 3, 16, seed=2)}
    theirs = diffusers_loop(cond_unet, scheduler, noise, 7, **cond)
    denoiser = dd.denoiser(cond_unet, scheduler)
    sigmas = scheduler.sigmas.double()
    x = start(denoiser.process, noise, float(sigmas[0]))
    ours = sampling.get("dpmpp_2m")(denoiser, x, sigmas, cond=cond, final="denoised")
    close(ours, theirs)


def test_flow_matching_euler_reproduces_diffusers(sd3):
    """SD3's flow matching (velocity at timestep 1000 t, shift 3): difflab's euler on sigma =
    t/(1-t), starting at sigma = inf, = FlowMatchEulerDiscreteScheduler; conditioning passes
    through."""
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    cond = {
        "encoder_hidden_states": randn(2, 5, 16, seed=2),
        "pooled_projections": randn(2, 8, seed=3),
    }
    noise = randn(2, 4, 8, 8)
    theirs = diffusers_loop(sd3, scheduler, noise, 5, **cond)
    t = scheduler.sigmas.double()
    sigmas = t / (1 - t)
    assert math.isinf(sigmas[0])
    denoiser = dd.denoiser(sd3, scheduler)
    ours = sampling.get("euler")(denoiser, noise, sigmas, cond=cond, final="denoised")
    close(ours, theirs)


def test_dit_labels_learned_variance_and_guidance(dit):
    """DiT's learned-variance half is dropped; label -1 (and labels=None) is its null class, so
    difflab's classifier-free guidance runs on it."""
    scheduler = diffusers.DDIMScheduler()
    denoiser = dd.denoiser(dit, scheduler)
    x, sigma = randn(2, 4, 8, 8), torch.tensor([3.0, 3.0])
    labels = torch.tensor([1, -1])
    out = dit(x * float(denoiser.process.scale(sigma[0])), timestep=denoiser.time(sigma),
              class_labels=torch.tensor([1, 1000])).sample  # fmt: skip
    assert out.shape[1] == 8
    eps = out[:, :4]
    expected = x - sigma[0] * eps
    close(denoiser(x, sigma, labels=labels), expected)
    close(denoiser(x, sigma), denoiser(x, sigma, labels=torch.tensor([-1, -1])))
    guided = classifier_free(denoiser, 2.0)(x, sigma, labels=torch.tensor([1, 2]))
    d_null = denoiser(x, sigma)
    close(guided, d_null + 2 * (denoiser(x, sigma, labels=torch.tensor([1, 2])) - d_null))


# --------------------------------------------------------------------------------------------
# the stepwise driver


def test_coroutine_pauses_at_each_call_and_returns():
    def body(call):
        return call(1) + call(2)

    run = Coroutine(body)
    assert run.start() == 1
    assert run.send(10) == 2
    assert run.send(20) == Finished(30)
    with pytest.raises(RuntimeError, match="not paused"):
        run.send(0)


def test_coroutine_raises_body_errors_and_unwinds_when_closed():
    def failing(call):
        call("first")
        raise KeyError("inside the body")

    run = Coroutine(failing)
    run.start()
    with pytest.raises(KeyError, match="inside the body"):
        run.send(None)
    unwound = []

    def body(call):
        try:
            call("paused")
        finally:
            unwound.append(True)

    before = threading.active_count()
    run = Coroutine(body)
    run.start()
    assert threading.active_count() == before + 1
    run.close()
    assert unwound == [True] and threading.active_count() == before


def test_coroutine_runs_under_the_callers_grad_mode():
    modes = []
    with torch.no_grad():
        Coroutine(lambda call: modes.append(torch.is_grad_enabled())).start()
    Coroutine(lambda call: modes.append(torch.is_grad_enabled())).start()
    assert modes == [False, True]


@pytest.mark.parametrize(
    ("sampler", "options"), [("heun", {}), ("dpm_solver_3", {}), ("restart", {"restart_k": 3})]
)
def test_evaluation_sigmas_count_the_documented_nfe(sampler, options):
    grid = [*VPDiscrete().sigmas[torch.tensor([999, 700, 400, 100, 0])].tolist(), 0.0]
    levels = evaluation_sigmas(sampler, grid, **options)
    assert len(levels) == sampling.info(sampler).nfe(5, **options)
    assert levels[0] == grid[0] and all(0 < s <= grid[0] for s in levels)


def test_adaptive_samplers_are_refused():
    with pytest.raises(ValueError, match="chooses its steps while it runs"):
        dd.Scheduler(sampler="adaptive")
    with pytest.raises(ValueError, match="dpmpp_2m"):
        dd.Scheduler(sampler="dpmpp_2n")


# --------------------------------------------------------------------------------------------
# the Scheduler inside pipelines


def pipeline_run(pipe, **call) -> tuple[torch.Tensor, int]:
    """The last prev_sample the pipeline's scheduler returned, and how many steps it took."""
    outputs = []
    step = pipe.scheduler.step

    @functools.wraps(step)
    def spy(*args, **kwargs):
        out = step(*args, **kwargs)
        outputs.append(out[0] if isinstance(out, tuple) else out.prev_sample)
        return out

    pipe.scheduler.step = spy
    pipe.set_progress_bar_config(disable=True)
    pipe(generator=torch.Generator().manual_seed(0), **call)
    return outputs[-1], len(outputs)


def direct(denoiser, scheduler: dd.Scheduler, shape: tuple[int, ...], **kw) -> torch.Tensor:
    """The sampler called directly on the same model and grid, from the noise a pipeline seeded 0
    draws (its generator then feeds the sampler)."""
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(shape, generator=generator)
    x = start(scheduler.process, noise, float(scheduler.sigmas[0]))
    options = scheduler.config.sampler_options or {}
    fn = sampling.get(scheduler.config.sampler)
    return fn(denoiser, x, scheduler.sigmas, generator=generator, **options, **kw)


def test_recipe_in_ddpm_pipeline_reproduces_dpm_solver_karras(unet):
    """The two-line recipe: dpmpp_2m on the Karras grid = DPMSolverMultistepScheduler with Karras
    sigmas (both end with x(0) = D)."""
    config = diffusers.DDPMScheduler(**SD15).config
    pipe = diffusers.DDPMPipeline(
        unet=unet,
        scheduler=diffusers.DPMSolverMultistepScheduler.from_config(config, use_karras_sigmas=True),
    )
    theirs, _ = pipeline_run(pipe, batch_size=2, num_inference_steps=8)
    pipe.scheduler = dd.Scheduler.from_config(
        config, sampler="dpmpp_2m", schedule="karras", sampler_options={"final": "denoised"}
    )
    ours, steps = pipeline_run(pipe, batch_size=2, num_inference_steps=8)
    close(ours, theirs)
    assert steps == 8 and pipe.scheduler.init_noise_sigma == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize(("sampler", "options"), [("ddim", {}), ("heun", {}), ("ddpm", {})])
def test_scheduler_equals_the_direct_sampler_call(unet, sampler, options):
    """Inside DDPMPipeline the model runs exactly NFE times and the result is the direct call's,
    stochastic samplers included (noise from the pipeline's generator)."""
    config = diffusers.DDIMScheduler(**SD15, prediction_type="v_prediction").config
    scheduler = dd.Scheduler.from_config(config, sampler=sampler, sampler_options=options)
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=scheduler)
    with Spy(unet) as spy:
        ours, steps = pipeline_run(pipe, batch_size=2, num_inference_steps=5)
    nfe = sampling.info(sampler).nfe(5)
    assert steps == len(spy.timesteps) == len(scheduler.timesteps) == nfe
    assert torch.equal(scheduler.timesteps, scheduler.timesteps.round())  # training timesteps
    assert scheduler.order == math.ceil(nfe / 5)
    theirs = direct(dd.denoiser(unet, config), scheduler, (2, 3, 8, 8))
    close(ours, theirs, 1e-6)


def test_dit_pipeline_with_guidance(dit, vae):
    scheduler = dd.Scheduler.from_config(diffusers.DDIMScheduler().config, schedule="karras")
    pipe = diffusers.DiTPipeline(transformer=dit, vae=vae, scheduler=scheduler)
    ours, steps = pipeline_run(pipe, class_labels=[1, 3], guidance_scale=1.5, num_inference_steps=6)
    assert steps == 6 and ours.shape == (4, 4, 8, 8)  # conditional and null halves
    guided = classifier_free(dd.denoiser(dit, scheduler), 1.5)
    theirs = direct(guided, scheduler, (2, 4, 8, 8), cond={"labels": torch.tensor([1, 3])})
    close(ours[:2], theirs)


def test_stable_diffusion_pipeline(cond_unet):
    """Needs transformers (the pipeline class and its CLIPTextModel); prompts enter as embeddings,
    so no tokenizer files are needed. Equals diffusers' DPM-Solver++ with Karras sigmas and the
    direct call with classifier-free guidance written on the denoiser."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    text = transformers.CLIPTextModel(
        transformers.CLIPTextConfig(
            bos_token_id=0, eos_token_id=2, pad_token_id=1, hidden_size=16, intermediate_size=32,
            num_attention_heads=2, num_hidden_layers=1, vocab_size=100,
        )
    ).eval()  # fmt: skip
    torch.manual_seed(0)
    autoencoder = diffusers.AutoencoderKL(
        block_out_channels=(8,), latent_channels=4, norm_num_groups=4, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
    )  # fmt: skip
    config = diffusers.DDIMScheduler(**SD15, steps_offset=1, clip_sample=False).config
    pipe = diffusers.StableDiffusionPipeline(
        vae=autoencoder, text_encoder=text, tokenizer=None, unet=cond_unet,
        scheduler=diffusers.DPMSolverMultistepScheduler.from_config(config, use_karras_sigmas=True),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    with torch.no_grad():
        embeds = text(torch.tensor([[0, 5, 9, 2], [0, 7, 2, 1]]))[0]
    call = {
        "prompt_embeds": embeds[:1],
        "negative_prompt_embeds": embeds[1:],
        "guidance_scale": 3.0,
        "num_inference_steps": 6,
        "output_type": "latent",
    }
    theirs, _ = pipeline_run(pipe, **call)
    pipe.scheduler = dd.Scheduler.from_config(
        config, sampler="dpmpp_2m", schedule="karras", sampler_options={"final": "denoised"}
    )
    ours, steps = pipeline_run(pipe, **call)
    assert steps == 6
    close(ours, theirs)
    denoiser = dd.denoiser(cond_unet, config)

    def guided(x, sigma):
        d_neg = denoiser(x, sigma, encoder_hidden_states=embeds[1:])
        return d_neg + 3.0 * (denoiser(x, sigma, encoder_hidden_states=embeds[:1]) - d_neg)

    close(ours, direct(guided, pipe.scheduler, (1, 4, 8, 8)))


def test_scheduler_drives_a_flow_model(sd3):
    """The Scheduler on a flow-matching config, stepped as SD3's pipeline does, on diffusers' own
    grid passed as sigmas = t / (1 - t), = FlowMatchEulerDiscreteScheduler."""
    reference = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    cond = {
        "encoder_hidden_states": randn(1, 5, 16, seed=2),
        "pooled_projections": randn(1, 8, seed=3),
    }
    noise = randn(1, 4, 8, 8)
    theirs = diffusers_loop(sd3, reference, noise, 4, **cond)
    t = reference.sigmas.double()
    scheduler = dd.Scheduler.from_config(
        reference.config, sampler="euler", sampler_options={"final": "denoised"}
    )
    scheduler.set_timesteps(sigmas=t / (1 - t))
    torch.testing.assert_close(scheduler.timesteps, reference.timesteps, rtol=1e-6, atol=0)
    x = noise * scheduler.init_noise_sigma
    for step in scheduler.timesteps:
        out = sd3(x, timestep=step.expand(1), **cond).sample
        x = scheduler.step(out, step, x).prev_sample
    close(x, theirs)


def test_scheduler_steps_half_precision_latents_in_float32():
    """The sampler integrates in float32 and hands fp16 samples to the model: the result is the
    direct float32 call whose network sees its input rounded to fp16."""
    scheduler = dd.Scheduler(
        sampler="dpmpp_2m", schedule="karras", sampler_options={"final": "denoised"}
    )
    scheduler.set_timesteps(4)
    noise = randn(1, 2, 4, 4).half()
    x = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        out = scheduler.step(0.5 * x - 0.1, t, x)
        x = out.prev_sample
        assert x.dtype == out.pred_original_sample.dtype == torch.float16
    assert torch.equal(x, out.pred_original_sample)  # final="denoised": x(0) = D
    net = lambda x_t, time: (0.5 * x_t.half() - 0.1).float()  # noqa: E731
    denoiser = Denoiser(net, scheduler.process, "eps", quantize=True)
    theirs = sampling.get("dpmpp_2m")(
        denoiser, start(scheduler.process, noise.float(), float(scheduler.sigmas[0])),
        scheduler.sigmas, final="denoised",
    )  # fmt: skip
    assert torch.equal(x, theirs.half())


def test_custom_timesteps_and_model_outputs():
    scheduler = dd.Scheduler(sampler="ddim")
    scheduler.set_timesteps(timesteps=[999, 500, 0])
    assert scheduler.timesteps.tolist() == [999, 500, 0]
    assert scheduler.sigmas.tolist() == [*scheduler.process.sigmas[[999, 500, 0]].tolist(), 0.0]
    x = torch.zeros(2, 3, 4, 4)
    learned_variance = torch.arange(2 * 6 * 16.0).reshape(2, 6, 4, 4)
    assert torch.equal(dd.model_prediction(learned_variance, x), learned_variance[:, :3])
    output = diffusers.models.unets.unet_2d.UNet2DOutput(sample=x + 1)
    assert torch.equal(dd.model_prediction(output, x), x + 1)
    assert torch.equal(dd.model_prediction((x + 2,), x), x + 2)


def test_dynamic_shifting_uses_the_shift_exp_mu():
    config = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True).config
    scheduler = dd.Scheduler.from_config(config, sampler="euler")
    with pytest.raises(ValueError, match="pass mu"):
        scheduler.set_timesteps(4)
    scheduler.set_timesteps(4, mu=0.5)
    expected = schedules.flow(4, process=dd.process_of(config), shift=math.exp(0.5))
    torch.testing.assert_close(scheduler.sigmas, expected)


def test_scheduler_refuses_out_of_order_steps_and_edited_latents(unet):
    scheduler = dd.Scheduler(sampler="heun", schedule="karras")
    with pytest.raises(ValueError, match="set_timesteps"):
        scheduler.step(torch.zeros(1, 3, 8, 8), 999, torch.zeros(1, 3, 8, 8))
    scheduler.set_timesteps(3)
    x = randn(1, 3, 8, 8)
    t0, t1 = scheduler.timesteps[:2]
    with pytest.raises(ValueError, match="img2img"):
        scheduler.step(unet(x, t1).sample, t1, x)
    x = scheduler.step(unet(x, t0).sample, t0, x).prev_sample
    with pytest.raises(ValueError, match="edited latents"):
        scheduler.step(unet(x, t1).sample, t1, x + 1)
    before = threading.active_count()
    scheduler.set_timesteps(3)  # abandons the paused run: its worker thread ends
    assert threading.active_count() == before - 1


def test_scheduler_config_round_trip(tmp_path):
    config = diffusers.DDIMScheduler(**SD15, prediction_type="v_prediction").config
    scheduler = dd.Scheduler.from_config(config, sampler="unipc", schedule="exponential")
    scheduler.save_config(tmp_path)
    again = dd.Scheduler.from_pretrained(tmp_path, local_files_only=True)
    assert again.config.sampler == "unipc" and again.config.schedule == "exponential"
    assert dd.prediction_of(again.config) == "v" and again.config.beta_schedule == "scaled_linear"
    flow = dd.Scheduler.from_config(diffusers.FlowMatchEulerDiscreteScheduler().config)
    assert flow.config.process == "flow"


# --------------------------------------------------------------------------------------------
# saving a difflab UNet, loading folders


def mappable_unet() -> UNet:
    torch.manual_seed(0)
    net = UNet(in_channels=3, image_size=8, channels=128, channel_mult=(1, 1), num_res_blocks=1,
               attention_resolutions=(4,), head_channels=64, num_classes=3)  # fmt: skip
    with torch.no_grad():  # move the zero-initialized layers off zero so every weight matters
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


def test_saved_unet_loads_as_unet2dmodel_and_as_a_denoiser(tmp_path):
    net = mappable_unet()
    process = VPDiscrete("scaled_linear", beta_start=0.00085, beta_end=0.012)
    dd.save_unet(net, tmp_path, process=process, prediction="v")
    model = diffusers.UNet2DModel.from_pretrained(tmp_path, local_files_only=True).eval()
    x, t = randn(3, 3, 8, 8), torch.tensor([0.0, 411.0, 999.0])
    labels = torch.tensor([2, 0, -1])
    with torch.no_grad():
        close(model(x, t, class_labels=torch.tensor([2, 0, 3])).sample, net(x, t, labels))
        ours = Denoiser(net, process, "v", quantize=True)
        loaded = dd.load(tmp_path, null_class=3)
        sigma = process.sigmas[torch.tensor([3, 500, 990])].float()
        close(loaded(x, sigma, labels=labels), ours(x, sigma, labels=labels), 1e-4)
    assert (
        json.loads((tmp_path / "scheduler_config.json").read_text())["prediction_type"]
        == "v_prediction"
    )


def test_unmappable_unets_are_refused_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match=r"norm_num_groups.*min\(32, C // 4\).*\[16, 32\]"):
        dd.save_unet(UNet(in_channels=1, image_size=8, channels=64), tmp_path / "a")
    fourier = UNet(image_size=8, channels=128, channel_mult=(1,), time_embedding="fourier")
    with pytest.raises(ValueError, match=r"fourier.*positional"):
        dd.save_unet(fourier, tmp_path / "b")
    heads = UNet(
        image_size=8, channels=128, channel_mult=(1,), attention_resolutions=(8,), head_channels=96
    )
    with pytest.raises(ValueError, match="not a multiple of head_channels=96"):
        dd.save_unet(heads, tmp_path / "c")
    with pytest.raises(ValueError, match="no scheduler for process"):
        dd.save_unet(mappable_unet(), tmp_path / "d", process=VPDiscrete(), time_input="t1000")
    assert not any(tmp_path.iterdir())


def test_load_pipeline_folder_offline(tmp_path, unet):
    scheduler = diffusers.DDIMScheduler(**SD15, prediction_type="v_prediction")
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp_path)
    loaded = dd.load(tmp_path)
    x, sigma = randn(2, 3, 8, 8), torch.tensor([0.5, 20.0])
    with torch.no_grad():
        close(loaded(x, sigma), dd.denoiser(unet, scheduler)(x, sigma), 1e-6)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        dd.load(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match=r"no scheduler_config.json"):
        dd.load(tmp_path / "unet")
