"""The exact AR(1) model: its samples against its covariance, and its closed-form conditionals against
forecasting's formula and brute-force Gaussian conditioning."""

import pytest
import torch

from difflab.testing import AR1, GaussianMixture


def brute_force(model: AR1, values: torch.Tensor, given: torch.Tensor):
    """Mean and variance of every entry by Gaussian conditioning on the L x L covariance,
    mu_r = C_rg C_gg^-1 x_g, var_r = diag(C_rr - C_rg C_gg^-1 C_gr), with torch.linalg."""
    cov = model.covariance(values.shape[1])
    mean, var = values.clone(), torch.zeros_like(values)
    for b in range(values.shape[0]):
        for k in range(values.shape[2]):
            g = given[b, :, k].nonzero()[:, 0]
            r = (~given[b, :, k]).nonzero()[:, 0]
            c_gg, c_rg = cov[g][:, g], cov[r][:, g]
            gain = torch.linalg.solve(c_gg, c_rg.T).T if len(g) else c_rg
            mean[b, r, k] = gain @ values[b, g, k] if len(g) else 0.0
            var[b, r, k] = torch.diagonal(cov[r][:, r] - gain @ c_rg.T) if len(g) else cov[r, r]
    return mean, var


@pytest.mark.parametrize("phi", [0.8, -0.5])
def test_sample_covariance_matches(phi):
    model = AR1(phi, sigma=1.5, dim=2)
    x = model.sample(40000, 6, torch.Generator().manual_seed(0))
    assert x.shape == (40000, 6, 2) and x.dtype == torch.float64
    paths = x.permute(0, 2, 1).reshape(-1, 6)  # each column a path
    empirical = paths.T @ paths / len(paths)
    cov = model.covariance(6)
    assert cov[0, 3] == pytest.approx(1.5**2 * phi**3)
    # Monte-Carlo error of a second moment ~ sigma^2 sqrt(2 / n), n = 80000 paths: 0.011
    torch.testing.assert_close(empirical, cov, atol=0.05, rtol=0)


def test_long_sample_marginal_variance():
    x = AR1(0.9, sigma=2.0).sample(4, 20000, torch.Generator().manual_seed(1))
    # the sample variance's sd is sigma^2 sqrt(2 (1 + phi^2) / (n (1 - phi^2))) = 0.06 for n = 80000
    assert float(x.var()) == pytest.approx(4.0, abs=0.25)
    assert abs(float(x.mean())) < 0.2


def test_conditional_with_a_forecast_mask_is_the_forecast():
    model = AR1(0.7, sigma=1.3, dim=3)
    context, horizon = 5, 4
    x = model.sample(6, context + horizon, torch.Generator().manual_seed(2))
    given = torch.zeros(x.shape, dtype=torch.bool)
    given[:, :context] = True
    mean, var = model.conditional(x, given)
    f_mean, f_var = model.forecast(x[:, :context], horizon)
    torch.testing.assert_close(mean[:, context:], f_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(var[:, context:], f_var, rtol=1e-12, atol=1e-12)
    h = torch.arange(1, horizon + 1, dtype=torch.float64)[None, :, None]
    torch.testing.assert_close(f_mean, 0.7**h * x[:, context - 1 : context])
    torch.testing.assert_close(f_var, (1.3**2 * (1 - 0.7 ** (2 * h))).expand(6, horizon, 3))
    assert torch.equal(mean[:, :context], x[:, :context]) and bool((var[:, :context] == 0).all())


@pytest.mark.parametrize("phi", [0.95, 0.3, -0.6, 0.0])
def test_conditional_matches_brute_force_gaussian_conditioning(phi):
    model = AR1(phi, sigma=0.8, dim=2)
    g = torch.Generator().manual_seed(3)
    x = model.sample(5, 12, g)
    given = torch.rand(x.shape, generator=g) < 0.35
    given[0, :, 0] = False  # nothing given: the prior
    given[1, :, 1] = True  # everything given
    given[2, :, 0] = False
    given[2, 6, 0] = True  # one entry given: a forecast and a backcast
    mean, var = model.conditional(x, given)
    b_mean, b_var = brute_force(model, x, given)
    torch.testing.assert_close(mean, b_mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(var, b_var, rtol=1e-10, atol=1e-12)
    assert bool((var[0, :, 0] == 0.8**2).all())


def test_gaussian_is_the_flattened_window():
    model = AR1(0.6, sigma=1.2, dim=2)
    mixture = model.gaussian(5)
    assert isinstance(mixture, GaussianMixture) and mixture.dim == 10
    cov = mixture.covariances[0]
    assert float(cov[2 * 1 + 1, 2 * 3 + 1]) == pytest.approx(
        1.2**2 * 0.6**2
    )  # column 1, steps 1, 3
    assert abs(float(cov[0, 1])) < 1e-12  # independent columns
    # its Schur-complement conditional agrees with the closed form
    x = model.sample(1, 5, torch.Generator().manual_seed(4))
    given = torch.zeros(1, 5, 2, dtype=torch.bool)
    given[0, [0, 3], 0] = True
    given[0, 4, 1] = True
    index = given.reshape(-1).nonzero()[:, 0]
    cond = mixture.conditional(index, x.reshape(-1)[index])
    mean, var = model.conditional(x, given)
    rest = ~given.reshape(-1)
    torch.testing.assert_close(cond.means[0], mean.reshape(-1)[rest])
    torch.testing.assert_close(torch.diagonal(cond.covariances[0]), var.reshape(-1)[rest])


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="phi"):
        AR1(1.0)
    with pytest.raises(ValueError, match="sigma"):
        AR1(0.5, sigma=0.0)
    model = AR1(0.5, dim=2)
    with pytest.raises(ValueError, match="one shape"):
        model.conditional(torch.zeros(1, 4, 2), torch.zeros(1, 4, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="context"):
        model.forecast(torch.zeros(1, 4, 3), 2)
