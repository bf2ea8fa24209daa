"""difflab.text: masked diffusion for text, judged against exact models (a joint table over short
sequences, the exact ELBO by enumeration, every float32 uniform enumerated)."""

import json
import math

import pytest
import torch
from scipy import stats

from difflab.cli import main
from difflab.cli.text import escape, unescape
from difflab.sampling.noise import generators
from difflab.text import (
    CharTokenizer,
    JointTable,
    TokenData,
    Transformer,
    categorical,
    exact_nelbo,
    load,
    masking,
    nelbo,
    samplers,
    save_text_model,
    shakespeare,
)
from difflab.text.categorical import GUMBEL_MAX, float32_tail_probability, gumbel_from_uniform
from difflab.text.metrics import bits_per_token, generative_perplexity, unigram_entropy
from difflab.text.train import train

SCHEDULES = ("linear", "cosine", "log_linear")


def tiny_net(vocab=3, context=4, causal=False, seed=0):
    torch.manual_seed(seed)
    net = Transformer(vocab_size=vocab, context=context, dim=16, depth=1, heads=2, causal=causal)
    for (
        p
    ) in net.parameters():  # larger weights than the init, so the conditionals are far from uniform
        p.data.normal_(0, 0.5)
    return net.eval().requires_grad_(False)


# ------------------------------------------------------------------ tokens and data


def test_tokenizer_round_trip_and_errors():
    data, tok = shakespeare("val")
    text = tok.decode(data.tokens)
    assert tok.vocab_size == 65 and torch.equal(tok.encode(text), data.tokens)
    assert tok.decode(tok.encode("To be, or not\nto be")) == "To be, or not\nto be"
    with pytest.raises(ValueError, match="'#' is not in"):
        tok.encode("a#b")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([1, 65])
    with pytest.raises(ValueError, match="distinct"):
        CharTokenizer("aa")


def test_shakespeare_split_is_the_last_tenth():
    train_data, tok = shakespeare("train")
    val_data, _ = shakespeare("val")
    n = len(train_data.tokens) + len(val_data.tokens)
    assert n == 1115394 and len(val_data.tokens) == round(0.1 * n)
    assert val_data.tokens[:8].tolist() == tok.encode("\n\nGREMIO").tolist()
    with pytest.raises(ValueError, match="unknown split"):
        shakespeare("test")


def test_token_data_windows_rows_and_errors(tmp_path):
    stream = TokenData(torch.arange(100) % 7, 7)
    g = torch.Generator().manual_seed(0)
    b = stream.batch(5, 10, g)
    assert b.shape == (5, 10) and bool(((b[:, 1:] - b[:, :-1]) % 7 == 1).all())
    assert stream.windows(30).shape == (3, 30)
    rows = TokenData(torch.randint(0, 5, (20, 8)), 5)
    assert rows.batch(4, 8, g).shape == (4, 8)
    with pytest.raises(ValueError, match="rows of length 8"):
        rows.batch(4, 6)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        TokenData(torch.tensor([0, 9]), 5)
    with pytest.raises(ValueError, match="integers"):
        TokenData(torch.zeros(4), 5)
    with pytest.raises(ValueError, match="window length"):
        stream.batch(2, 101)


# ------------------------------------------------------------------ masking schedules and the ELBO


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_alpha_derivative_and_inverse(name):
    s = masking.get(name)
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    assert float(s.alpha(torch.tensor(0.0, dtype=torch.float64))) == 1.0
    assert float(s.alpha(torch.tensor(1.0, dtype=torch.float64))) == pytest.approx(
        s.eps if name == "log_linear" else 0.0, abs=1e-15
    )
    h = 1e-6
    numeric = (s.alpha(t + h) - s.alpha(t - h)) / (2 * h)
    assert torch.allclose(s.dalpha(t), numeric, atol=1e-8)
    assert torch.allclose(s.t_of(s.alpha(t)), t, atol=1e-12)
    assert bool((s.weight(t) > 0).all())


def test_unknown_schedule_names_the_nearest():
    with pytest.raises(ValueError, match="Did you mean 'cosine'"):
        masking.get("cosin")


def test_exact_nelbo_of_the_exact_model_is_its_negative_log_likelihood():
    """Every unmasking order of exact conditionals is the chain rule of p, so the bound is tight."""
    table = JointTable.random(3, 4, seed=1)
    x = table.sample(20, torch.Generator().manual_seed(0))
    assert torch.allclose(exact_nelbo(table, x), -table.log_prob(x), atol=1e-10)


@pytest.mark.parametrize("name", SCHEDULES)
def test_monte_carlo_elbo_matches_the_exact_elbo(name):
    """The MC estimator (random t, random masks, weight -alpha'/(1-alpha)) of a network that is not
    exact equals its enumerated ELBO; linear and cosine share one value (schedule invariance)."""
    net = tiny_net()
    x = torch.tensor([[0, 2, 1, 1]])
    with torch.no_grad():
        exact = float(exact_nelbo(net, x, name)[0])
        mc = nelbo(net, x.expand(20000, -1), name, generator=torch.Generator().manual_seed(0))
    se = float(mc.std()) / math.sqrt(len(mc))
    assert abs(float(mc.mean()) - exact) < 4 * se, (float(mc.mean()), exact, se)
    assert exact > 0
    if name == "cosine":
        assert exact == pytest.approx(float(exact_nelbo(net, x, "linear")[0]), rel=1e-12)
    if name == "log_linear":  # it leaves out mask rates above 1 - eps: a slightly smaller value
        assert 0 < float(exact_nelbo(net, x, "linear")[0]) - exact < 0.05


def test_nelbo_errors():
    net = tiny_net()
    with pytest.raises(ValueError, match=r"outside 0..2"):
        nelbo(net, torch.tensor([[0, 3, 1, 1]]))
    with pytest.raises(ValueError, match="token ids"):
        nelbo(net, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        nelbo(net, torch.tensor([[0, 1, 1, 1]]), t=0.0)
    with pytest.raises(ValueError, match="too long"):
        exact_nelbo(tiny_net(context=20), torch.zeros(1, 17, dtype=torch.long))


# ------------------------------------------------------------------ categorical sampling


def test_float64_categorical_matches_the_target_temperature():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, -3.0], dtype=torch.float64)
    draws = categorical(logits.expand(40000, -1), torch.Generator().manual_seed(0), temperature=0.5)
    counts = torch.bincount(draws, minlength=5).double()
    for temperature, accept in ((0.5, True), (0.6, False)):
        expected = (logits / temperature).softmax(0) * len(draws)
        p = stats.chisquare(counts.numpy(), expected.numpy()).pvalue
        assert (p > 1e-3) if accept else (p < 1e-6), (temperature, p)


def test_float32_gumbel_truncation_lowers_the_temperature():
    """Every uniform torch.rand can give in float32 (k 2^-24) goes through the sampler's Gumbel map
    (float32_tail_probability), so the float32 sampler's probability of drawing any of N = 2^20
    tail categories, each e^-17 times as likely as the head (a masked-diffusion step's "stay
    masked"), is exact: less than half the target, an effective temperature < 0.96. float64 noise
    reaches 36.7, so the same computation has nothing to truncate there."""
    top32 = gumbel_from_uniform(torch.tensor(1 - 2.0**-24, dtype=torch.float32))
    top64 = gumbel_from_uniform(torch.tensor(1 - 2.0**-53, dtype=torch.float64))
    assert float(top32) == pytest.approx(GUMBEL_MAX[torch.float32], abs=1e-4)
    assert float(top64) == pytest.approx(GUMBEL_MAX[torch.float64], abs=1e-4)
    assert (
        float(torch.rand(10**6, generator=torch.Generator().manual_seed(0)).max()) <= 1 - 2.0**-24
    )
    n, a = 2**20, 17.0
    p32 = float32_tail_probability(n, a)
    target = n * math.exp(-a) / (1 + n * math.exp(-a))
    t_eff = a / math.log(n * (1 - p32) / p32)
    assert p32 < 0.5 * target and t_eff < 0.96, (p32, target, t_eff)
    # farther from the truncation (a gap of 12) float32 is within 1 % of the target
    assert float32_tail_probability(2**10, 12.0) == pytest.approx(
        2**10 * math.exp(-12) / (1 + 2**10 * math.exp(-12)), rel=1e-2
    )


@pytest.mark.slow
def test_float32_bias_measured_by_sampling():
    """The same head + 2^16 tail categories at gap 17, drawn 24000 times in each precision (about 3
    minutes): float64 hits the target tail probability, float32 draws the tail less than half as
    often (its exact probability, computed as above, is 0.44 of the target)."""
    n, a, draws = 2**16, 17.0, 24000
    target = n * math.exp(-a) / (1 + n * math.exp(-a))
    logits = torch.cat([torch.zeros(1), torch.full((n,), -a)])
    hits = {}
    for dtype in (torch.float64, torch.float32):
        g = torch.Generator().manual_seed(0)
        picks = [categorical(logits.expand(500, -1), g, dtype=dtype) for _ in range(draws // 500)]
        hits[dtype] = int((torch.cat(picks) > 0).sum())
    expected, sd = draws * target, math.sqrt(draws * target)
    assert abs(hits[torch.float64] - expected) < 3 * sd, hits
    assert hits[torch.float32] < expected - 3 * sd, hits


# ------------------------------------------------------------------ samplers


def sample_counts(table, name, n, steps, seed=0, **options):
    z = torch.full((n, table.length), table.vocab_size)
    x = samplers.get(name)(
        table, z, steps, generator=torch.Generator().manual_seed(seed), **options
    )
    return table.histogram(x).double()


def chi2_p(counts, probs):
    return stats.chisquare(counts.numpy(), (probs * counts.sum()).numpy()).pvalue


def test_first_hitting_and_ancestral_sample_the_exact_distribution():
    """With exact conditionals, first-hitting at L steps is exact and ancestral at many steps is
    exact up to O(L^2/steps) simultaneous unmaskings; one ancestral step (all tokens independent
    at once) is rejected, so the test has power."""
    table = JointTable.random(3, 3, sharpness=2.0, seed=3)
    n = 4000
    fhs = sample_counts(table, "first_hitting", n, None)
    anc = sample_counts(table, "ancestral", n, 1000, seed=1)
    assert chi2_p(fhs, table.probs) > 1e-3
    assert chi2_p(anc, table.probs) > 1e-3
    both = torch.stack([fhs, anc])
    both = both[:, both.sum(0) > 0]
    assert stats.chi2_contingency(both.numpy()).pvalue > 1e-3
    one_step = sample_counts(table, "ancestral", n, 1, seed=2)
    assert chi2_p(one_step, table.probs) < 1e-6


@pytest.mark.parametrize("name", ["confidence", "semi_ar"])
def test_other_samplers_fill_every_mask_and_keep_given_tokens(name):
    table = JointTable.random(3, 4, seed=2)
    z = torch.full((50, 4), 3)
    z[:, 1] = 2
    x = samplers.get(name)(
        table,
        z,
        4,
        generator=torch.Generator().manual_seed(0),
        **({"block": 2} if name == "semi_ar" else {}),
    )
    assert x.shape == z.shape and bool((x < 3).all()) and bool((x[:, 1] == 2).all())


def test_semi_ar_with_exact_blocks_is_exact():
    """Blocks of one token decoded left to right with exact conditionals are ancestral sampling of
    the chain rule: the exact distribution."""
    table = JointTable.random(3, 3, seed=4)
    counts = sample_counts(table, "semi_ar", 4000, 3, block=1, inner="confidence")
    assert chi2_p(counts, table.probs) > 1e-3


def test_ancestral_cache_gives_the_same_output_and_fewer_evaluations():
    net = tiny_net(vocab=5, context=12)
    rows = {}

    class Counting:
        vocab_size = 5

        def __init__(self, cache):
            self.cache = cache

        def __call__(self, z):
            rows[self.cache] = rows.get(self.cache, 0) + z.shape[0]
            return net(z)

    z = torch.full((6, 12), 5)
    out = {}
    for cache in (True, False):
        with torch.no_grad():
            out[cache] = samplers.ancestral(
                Counting(cache), z, 100, cache=cache, generator=generators(0, 6)
            )
    assert torch.equal(out[True], out[False]) and bool((out[True] < 5).all())
    assert rows[False] == 6 * 100 and rows[True] < 6 * 60


def test_samples_do_not_depend_on_their_batch():
    table = JointTable.random(3, 4, seed=5)
    z = torch.full((5, 4), 3)
    for name in ("ancestral", "first_hitting", "confidence"):
        run = samplers.get(name)
        whole = run(table, z, 4, generator=generators(7, 5))
        alone = run(table, z[3:4], 4, generator=generators(7, 5)[3:4])
        assert torch.equal(whole[3:4], alone), name


def test_first_hitting_time_is_the_largest_of_n_uniform_unmasking_times():
    """Linear schedule from t = 1 with n masks: the first unmasking time is the max of n uniforms,
    mean n/(n+1); the last is the min, mean 1/(n+1)."""
    table = JointTable.random(2, 4, seed=0)
    times = []
    samplers.first_hitting(
        table,
        torch.full((4000, 4), 2),
        schedule="linear",
        generator=torch.Generator().manual_seed(0),
        callback=lambda info: times.append(info["t"]),
    )
    assert len(times) == 4
    assert float(times[0].mean()) == pytest.approx(4 / 5, abs=0.01)
    assert float(times[-1].mean()) == pytest.approx(1 / 5, abs=0.01)
    assert bool((torch.stack(times).diff(dim=0) < 0).all())


def test_sampler_errors_name_the_problem():
    table = JointTable.random(3, 3)
    z = torch.full((2, 3), 3)
    with pytest.raises(ValueError, match="Did you mean 'first_hitting'"):
        samplers.get("first_hiting")
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        samplers.ancestral(table, z, 0)
    with pytest.raises(ValueError, match=r"outside 0..3"):
        samplers.ancestral(table, z + 1, 5)
    with pytest.raises(ValueError, match="temperature"):
        samplers.first_hitting(table, z, temperature=-1)
    with pytest.raises(ValueError, match="at least one per block"):
        samplers.semi_ar(table, z, 1, block=1)


# ------------------------------------------------------------------ networks, models, training, CLI


def test_causal_flag_shares_one_transformer():
    tokens = torch.randint(0, 3, (2, 4))
    changed = tokens.clone()
    changed[:, 3] = (changed[:, 3] + 1) % 3
    for causal in (True, False):
        net = tiny_net(causal=causal)
        same = torch.allclose(net(tokens)[:, :3], net(changed)[:, :3])
        assert same == causal
    with pytest.raises(ValueError, match="exceeds the transformer's context"):
        tiny_net()(torch.zeros(1, 5, dtype=torch.long))


@pytest.fixture
def tiny_model(tmp_path):
    tok = CharTokenizer("ab\n\\")
    net = Transformer(vocab_size=4, context=16, dim=16, depth=1, heads=2)
    return save_text_model(tmp_path / "tiny", net, kind="masked", tokenizer=tok)


def test_model_generate_and_cli_sample(tiny_model, tmp_path, capsys):
    model = load(str(tiny_model))
    out = model.generate(3, 10, sampler="ancestral", steps=20, seed=1, batch_size=2)
    assert out.tokens.shape == (3, 10) and len(out.texts) == 3
    again = model.generate(3, 10, sampler="ancestral", steps=20, seed=1, batch_size=3)
    assert torch.equal(out.tokens, again.tokens)
    assert unescape(escape("a\\n\nb\\")) == "a\\n\nb\\"
    path = tmp_path / "s.txt"
    assert (
        main(
            [
                "text",
                "sample",
                "--model",
                str(tiny_model),
                "--sampler",
                "first_hitting",
                "--steps",
                "4",
                "--n",
                "5",
                "--length",
                "16",
                "--seed",
                "0",
                "--out",
                str(path),
            ]
        )
        == 0
    )
    lines = path.read_text().splitlines()
    assert len(lines) == 5 and all(len(unescape(line)) == 16 for line in lines)
    capsys.readouterr()
    assert (
        main(
            [
                "text",
                "sample",
                "--model",
                str(tiny_model),
                "--n",
                "2",
                "--length",
                "8",
                "--sampler",
                "semi_ar",
                "--block",
                "4",
                "--steps",
                "8",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sampler", "ancestrl"], "Did you mean 'ancestral'"),
        (["--length", "17"], "length must be an integer in 1..16"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--out", "x.png"], "--out must end in .txt"),
        (["--block", "4"], "--block and --inner apply to --sampler semi_ar"),
        (["--dtype", "float16"], "--dtype must be float64 or float32"),
        (["--schedule", "cosin"], "Did you mean 'cosine'"),
    ],
)
def test_cli_sample_errors_are_one_line(tiny_model, capsys, args, message):
    assert main(["text", "sample", "--model", str(tiny_model), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_training_resumes_exactly_and_exports_a_model(tmp_path):
    config = {
        "run": {
            "steps": 4,
            "checkpoint_every": 2,
            "log_every": 1,
            "eval_every": 2,
            "eval_batches": 1,
        },
        "data": {"path": str(tmp_path / "tokens.npy"), "vocab_size": 5},
        "model": {"context": 8, "dim": 16, "depth": 1, "heads": 2, "dropout": 0.1},
        "optim": {"batch_size": 4, "warmup": 2},
    }
    import numpy as np

    np.save(tmp_path / "tokens.npy", np.random.default_rng(0).integers(0, 5, 400))
    whole = train(config, run_dir=tmp_path / "a", progress=False)
    train(config, ["run.steps=2"], run_dir=tmp_path / "b", progress=False)
    resumed = train(config, run_dir=tmp_path / "b", progress=False)
    for p, q in zip(whole.net.parameters(), resumed.net.parameters()):
        assert torch.equal(p, q)
    model = load(str(tmp_path / "a"))
    assert model.kind == "masked" and model.context == 8
    saved = json.loads((tmp_path / "a" / "model" / "config.json").read_text())
    assert saved["training"]["steps"] == 4 and saved["training"]["command"].startswith(
        "difflab text train"
    )
    metrics = [
        json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    ]
    assert any("val_bits_per_token" in r for r in metrics)


def test_cli_train_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nkind = 'masekd'\n")
    assert main(["text", "train", "--config", str(bad), "--run-dir", str(tmp_path / "r")]) == 2
    assert "Did you mean 'masked'" in capsys.readouterr().err


def test_metrics_bits_and_generative_perplexity(tmp_path):
    tok = CharTokenizer("abc")
    ar = load(
        str(
            save_text_model(
                tmp_path / "ar",
                Transformer(vocab_size=3, context=8, dim=16, depth=1, heads=2, causal=True),
                kind="autoregressive",
                tokenizer=tok,
            )
        )
    )
    masked = load(
        str(
            save_text_model(
                tmp_path / "m",
                Transformer(vocab_size=3, context=8, dim=16, depth=1, heads=2),
                kind="masked",
                tokenizer=tok,
            )
        )
    )
    x = torch.randint(0, 3, (10, 8), generator=torch.Generator().manual_seed(0))
    bits, _ = bits_per_token(ar, x)
    assert bits == pytest.approx(float(ar.nll(x).sum()) / (x.numel() * math.log(2)), rel=1e-9)
    assert generative_perplexity(ar, x) == pytest.approx(2**bits, rel=1e-9)
    assert unigram_entropy(torch.tensor([0, 1, 2, 2]), 3) == pytest.approx(1.5)
    with pytest.raises(ValueError, match="judge must be an autoregressive"):
        generative_perplexity(masked, x)
    with pytest.raises(ValueError, match="autoregressive model; sampling needs"):
        ar.generate(2)


@pytest.mark.parametrize(
    ("name", "kind", "bound"),
    [("shakespeare", "masked", 4.4), ("shakespeare_ar", "autoregressive", 3.0)],
)
def test_shipped_models_load_small_and_say_how_they_were_trained(name, kind, bound):
    model = load(name)
    folder = model.folder
    assert model.kind == kind and model.context == 256 and model.vocab_size == 65
    assert sum(f.stat().st_size for f in folder.iterdir()) <= 10 * 2**20
    assert model.config["training"]["command"].startswith(
        "difflab text train --config configs/text_shakespeare"
    )
    val, _ = shakespeare("val")
    bits, _ = bits_per_token(model, val.windows(256)[:4])
    assert bits < bound  # the characters' unigram entropy is 4.77 bits, uniform 6.02


def test_cli_samples_the_shipped_model(tmp_path):
    out = tmp_path / "samples.txt"
    args = ["--model", "shakespeare", "--sampler", "first_hitting", "--steps", "16", "--n", "2"]
    assert main(["text", "sample", *args, "--length", "64", "--seed", "0", "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 2 and all(len(unescape(line)) == 64 for line in lines)


def test_rotary_attention_scores_depend_only_on_the_offset():
    from difflab.models.attention import rotate

    g = torch.Generator().manual_seed(0)
    q, k = (
        torch.randn(1, 8, generator=g, dtype=torch.float64),
        torch.randn(1, 8, generator=g, dtype=torch.float64),
    )
    rq, rk = rotate(q.expand(20, -1)), rotate(k.expand(20, -1))
    scores = rq @ rk.T  # scores[i, j] = <R_i q, R_j k>
    for offset in (0, 3, -5):
        diagonal = torch.diagonal(scores, offset)
        assert torch.allclose(diagonal, diagonal[0].expand_as(diagonal), atol=1e-12)
    assert not torch.allclose(torch.diagonal(scores, 1)[0], torch.diagonal(scores, 2)[0])
