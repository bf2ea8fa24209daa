"""Probability-flow log-likelihood against the exact Gaussian-mixture density."""

import math

import pytest
import torch

from difflab import schedules
from difflab.metrics import dequantize, image_bits_per_dim, log_likelihood
from difflab.testing import gmm

LN2 = math.log(2)
# The prior N(0, sigma_max^2 I) is off by O(|E x0| / sigma_max) per sample: far out for exactness.
FAR = 1e4


def _bpd_error(result, model, x):
    return float((result.log_prob - model.log_prob(x)).abs().max()) / (x.shape[1] * LN2)


@pytest.fixture(scope="module")
def gauss():
    cov = torch.tensor([[1.0, 0.3, 0.0], [0.3, 0.5, 0.1], [0.0, 0.1, 0.2]], dtype=torch.float64)
    return gmm.gaussian(torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64), cov)


@pytest.fixture(scope="module")
def mixture():
    return gmm.random_mixture(2, 3, seed=1)


def test_gaussian_exact_divergence(gauss):
    x = gauss.sample(6, generator=torch.Generator().manual_seed(0))
    result = log_likelihood(gauss, x, sigma_max=FAR, divergence="exact")
    assert _bpd_error(result, gauss, x) < 1e-3
    bpd = -gauss.log_prob(x) / (3 * LN2)
    assert torch.allclose(result.bits_per_dim, bpd, atol=1e-3)


@pytest.mark.parametrize(
    ("solver", "grid"), [("dopri5", None), ("rk4", schedules.get("karras")(48, 0.002, FAR))]
)
def test_mixture(mixture, solver, grid):
    x = mixture.sample(8, generator=torch.Generator().manual_seed(1))
    result = log_likelihood(mixture, x, sigma_max=FAR, solver=solver, sigmas=grid)
    assert _bpd_error(result, mixture, x) < 0.01
    if solver == "dopri5":
        assert _bpd_error(result, mixture, x) < 1e-3


def test_heun_is_second_order(mixture):
    x = mixture.sample(4, generator=torch.Generator().manual_seed(2))
    errors = [
        float(
            (
                log_likelihood(mixture, x, sigma_max=FAR, solver="heun", steps=n).log_prob
                - mixture.log_prob(x)
            )
            .abs()
            .max()
        )
        for n in (48, 96)
    ]
    assert 3.0 < errors[0] / errors[1] < 5.0


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_agrees_with_exact_within_its_error(gauss, probe):
    x = gauss.sample(2, generator=torch.Generator().manual_seed(3))
    exact = log_likelihood(gauss, x, sigma_max=FAR, divergence="exact").log_prob
    reps = 64
    est = log_likelihood(
        gauss,
        x.repeat(reps, 1),
        sigma_max=FAR,
        divergence="hutchinson",
        probe=probe,
        generator=torch.Generator().manual_seed(4),
    ).log_prob.reshape(reps, 2)
    se = est.std(0) / math.sqrt(reps)
    assert bool((se > 0).all())
    assert bool(((est.mean(0) - exact).abs() < 3 * se).all())


def test_small_sigma_correction(gauss):
    """With a coarse sigma_min the ODE gives log p_{sigma_min} exactly; the correction recovers log p_0
    to O(sigma_min^4)."""
    x = gauss.sample(5, generator=torch.Generator().manual_seed(5))
    sigma_min = 0.05
    plain = log_likelihood(gauss, x, sigma_min=sigma_min, sigma_max=FAR, correction=False)
    fixed = log_likelihood(gauss, x, sigma_min=sigma_min, sigma_max=FAR)
    assert torch.allclose(plain.log_prob, gauss.log_prob(x, sigma_min), atol=1e-3)
    assert bool((plain.correction == 0).all())
    err_plain = (plain.log_prob - gauss.log_prob(x)).abs().max()
    err_fixed = (fixed.log_prob - gauss.log_prob(x)).abs().max()
    assert err_plain > 0.01
    assert err_fixed < err_plain / 10


def test_per_sample_steps_make_results_batch_invariant(mixture):
    x = mixture.sample(5, generator=torch.Generator().manual_seed(6))
    batch = log_likelihood(mixture, x, sigma_max=FAR).log_prob
    alone = log_likelihood(mixture, x[2:3], sigma_max=FAR).log_prob
    assert torch.allclose(batch[2:3], alone, rtol=0, atol=1e-10)


def test_conditioning_is_passed_per_sample():
    """A class-conditional denoiser (one component per label) gives each class's density."""
    ring = gmm.ring2d(modes=3, std=0.3)

    def denoiser(x, sigma, labels):
        out = torch.empty_like(x)
        for c in labels.unique().tolist():
            rows = labels == c
            out[rows] = ring.condition(c).denoise(x[rows], sigma[rows])
        return out

    labels = torch.tensor([0, 2, 1, 2])
    x = torch.stack(
        [ring.condition(c).sample(1, torch.Generator().manual_seed(c))[0] for c in labels.tolist()]
    )
    result = log_likelihood(denoiser, x, sigma_max=FAR, cond={"labels": labels})
    truth = torch.cat(
        [ring.condition(c).log_prob(x[i : i + 1]) for i, c in enumerate(labels.tolist())]
    )
    assert torch.allclose(result.log_prob, truth, atol=2e-3)


def test_image_bits_per_dim_is_the_discrete_data_bound():
    """bpd = -(log p(y) + d log(2/256)) / (d ln 2), y the uniformly dequantized data in [-1, 1)."""
    g = torch.Generator().manual_seed(7)
    images = torch.randint(0, 256, (3, 1, 2, 2), generator=g, dtype=torch.uint8)
    model = gmm.gaussian(torch.zeros(4, dtype=torch.float64), 0.3)

    def denoiser(x, sigma):
        return model(x.reshape(len(x), 4), sigma).reshape(x.shape)

    result = image_bits_per_dim(
        denoiser,
        images,
        generator=torch.Generator().manual_seed(8),
        dtype=torch.float64,
        sigma_max=FAR,
    )
    y = dequantize(images, torch.Generator().manual_seed(8), torch.float64)
    assert float(y.min()) >= -1 and float(y.max()) < 1
    assert torch.equal(((y + 1) * 128).floor().to(torch.uint8), images)
    expected = -(model.log_prob(y.reshape(3, 4)) + 4 * math.log(2 / 256)) / (4 * LN2)
    assert torch.allclose(result.bits_per_dim, expected, atol=1e-3)


def test_bad_input(gauss):
    x = torch.zeros(2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="Did you mean 'rk4'"):
        log_likelihood(gauss, x, solver="rk5")
    with pytest.raises(ValueError, match="dopri5"):
        log_likelihood(gauss, x, sigmas=torch.tensor([1.0, 0.1]))
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        log_likelihood(gauss, x, sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="monotone grid"):
        log_likelihood(gauss, x, solver="rk4", sigmas=torch.tensor([1.0, 0.1, 0.5]))
    with pytest.raises(ValueError, match="uint8"):
        image_bits_per_dim(gauss, torch.zeros(2, 1, 2, 2))

    def detached(x, sigma):
        with torch.no_grad():
            return gauss(x, sigma)

    with pytest.raises(ValueError, match="differentiable denoiser"):
        log_likelihood(detached, x)
