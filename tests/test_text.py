"""difflab.text: masked diffusion for text, judged against exact models (a joint table over short
sequences, the exact ELBO by enumeration, every float32 uniform enumerated)."""

import json
import math

import pytest
import torch
from scipy import stats

from difflab.cli import main
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
    uniform,
)
from difflab.text.categorical import GUMBEL_MAX, float32_tail_probability, gumbel_from_uniform
from difflab.text.exact import UniformPosterior
from difflab.text.metrics import bits_per_token, generative_perplexity, unigram_entropy
from difflab.text.sample_files import format_samples, parse_samples, read_samples
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
    samples = read_samples(path)
    assert [s["index"] for s in samples] == list(range(5))
    assert all(s["seed"] == 0 and len(s["text"]) == 16 for s in samples)
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
    printed = capsys.readouterr().out
    assert [(seed, len(text)) for seed, text in parse_samples(printed)] == [(0, 8), (0, 8)]


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
        (
            ["--prompt", "ab" * 9],
            "the prompt has 18 tokens, more than the 16 to generate (the model's",
        ),
        (["--prompt", "a#b"], "character '#' is not in the tokenizer's vocabulary"),
        (["--sampler", "threshold", "--threshold", "1.5"], "threshold must lie in (0, 1]"),
        (["--sampler", "threshold", "--threshold", "0"], "threshold must lie in (0, 1]"),
        (["--threshold", "0.9"], "--threshold does not apply to the first_hitting sampler"),
        (["--sampler", "threshold", "--schedule", "linear"], "--schedule does not apply"),
        (["--sampler", "remdm", "--remasking", "capp"], "Did you mean 'cap'"),
        (["--sampler", "remdm", "--eta", "2"], "eta must be a number in [0, 1]"),
        (["--sampler", "uniform_ancestral"], "samples uniform diffusion models"),
        (["--guidance", "2"], "guidance needs a prompt"),
        (["--out", "x.json"], "--out must end in .txt or .jsonl"),
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
    samples = read_samples(out)
    assert len(samples) == 2 and all(len(s["text"]) == 64 for s in samples)


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


# ------------------------------------------------------------------ dLLM decoders on exact toys


def test_threshold_one_with_random_commits_is_the_exact_sequential_sampler():
    """Threshold 1 commits one token per step; chosen uniformly (remasking "random") that is the
    first-hitting sampler, exact. Committing the most confident candidate instead (Fast-dLLM's
    low_confidence) picks positions by their drawn values, and is rejected: the test has power."""
    table = JointTable.random(3, 3, sharpness=2.0, seed=3)
    exact = sample_counts(table, "threshold", 4000, None, threshold=1.0, remasking="random")
    assert chi2_p(exact, table.probs) > 1e-3
    picky = sample_counts(table, "threshold", 4000, None, threshold=1.0)
    assert chi2_p(picky, table.probs) < 1e-6
    llada = sample_counts(table, "confidence", 4000, 3, remasking="random", seed=1)
    assert chi2_p(llada, table.probs) > 1e-3


def test_threshold_commits_every_confident_token_and_adapts_its_steps():
    """A threshold near 0 commits every candidate in one step; fewer network rows than masks."""
    table = JointTable.random(3, 4, seed=2)
    rows = []

    class Counting:
        vocab_size = 3

        def __call__(self, z):
            rows.append(z.shape[0])
            return table(z)

    x = samplers.threshold(
        Counting(), torch.full((8, 4), 3), threshold=1e-9, generator=generators(0, 8)
    )
    assert bool((x < 3).all()) and rows == [8]
    with pytest.raises(ValueError, match=r"threshold must lie in \(0, 1\]"):
        samplers.threshold(table, torch.full((2, 4), 3), threshold=0.0)
    with pytest.raises(ValueError, match="Did you mean 'random'"):
        samplers.threshold(table, torch.full((2, 4), 3), remasking="randm")


class Oracle:
    """A denoiser that knows x [B, L]: every position predicts x^l with probability 1 (called on
    the whole batch: no cache)."""

    def __init__(self, x, vocab):
        self.x, self.vocab_size = x, vocab

    def __call__(self, z):
        logits = torch.full((*z.shape, self.vocab_size), -torch.inf, dtype=torch.float64)
        return logits.scatter_(-1, self.x[: len(z), : z.shape[1], None], 0.0)


@pytest.mark.parametrize("rule", ["cap", "rescale", "loop", "conf"])
def test_remdm_keeps_every_token_marginal_except_conf(rule):
    """ReMDM's Thm. 3.1: with x known, P(token l unmasked after the step to s) = alpha_s whatever
    sigma_t <= sigma_max (loop: alpha_on on its constant stretch), though tokens are remasked all
    the time; conf's sigma depends on z, and its unmasked share falls behind."""
    n, length, steps = 256, 64, 20
    x = torch.randint(0, 2, (n, length), generator=torch.Generator().manual_seed(0))
    unmasked, remasked = [], [0]

    def record(info):
        unmasked.append((info["z"] != 2).double().mean().item())
        remasked[0] += int(((info["z"] == 2) & (previous[0] != 2)).sum())
        previous[0] = info["z"].clone()

    previous = [torch.full((n, length), 2)]
    eta = {"cap": 0.3, "rescale": 0.5, "loop": 0.3, "conf": 1.0}[rule]
    out = samplers.remdm(
        Oracle(x, 2),
        torch.full((n, length), 2),
        steps,
        remasking=rule,
        eta=eta,
        cache=False,
        generator=generators(0, n),
        callback=record,
    )
    assert torch.equal(out, x) and remasked[0] > 1000
    times = torch.linspace(1, 0, steps + 1, dtype=torch.float64)[1:]
    target = 1 - times  # linear schedule
    if rule == "loop":  # t_on 0.55, t_off 0.05, alpha_on 0.9: alpha is 0.9 from t_on to t_off
        target = torch.where((times <= 0.55) & (times >= 0.05), 0.9, float("nan"))
    got, target = torch.tensor(unmasked), target.float()
    se = (target * (1 - target) / (n * length)).sqrt()
    checked = ~target.isnan() & (target < 1)
    gap = ((got - target).abs() / se.clamp(min=1e-9))[checked]
    if rule == "conf":
        assert float(gap.max()) > 10
    else:
        assert float(gap.max()) < 5, (got, target)


def test_remdm_with_exact_conditionals_samples_the_exact_distribution():
    """cap at eta 0.05 remasks thousands of decoded tokens and still samples the joint table."""
    table = JointTable.random(3, 3, sharpness=2.0, seed=3)
    counts = sample_counts(table, "remdm", 4000, 1000, remasking="cap", eta=0.05)
    assert chi2_p(counts, table.probs) > 1e-3


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("ancestral", {}),
        ("first_hitting", {}),
        ("confidence", {"remasking": "random"}),
        ("threshold", {"threshold": 0.5}),
        ("remdm", {"remasking": "rescale", "eta": 1.0}),
        ("remdm", {"remasking": "conf"}),
        ("remdm", {"remasking": "loop"}),
        ("semi_ar", {"block": 2, "inner": "remdm", "eta": 1.0, "remasking": "rescale"}),
        ("semi_ar", {"block": 2, "inner": "threshold"}),
    ],
)
def test_prompt_tokens_never_change(name, options):
    table = JointTable.random(3, 5, seed=2)
    z = torch.full((200, 5), 3)
    z[:, :2] = torch.tensor([2, 0])
    z[:, 3] = 1
    seen = []
    x = samplers.get(name)(
        table,
        z,
        8,
        generator=generators(0, 200),
        callback=lambda i: seen.append(i["z"].clone()),
        **options,
    )
    assert bool((x < 3).all()) and seen
    for state in [*seen, x]:
        assert bool((state[:, :2] == torch.tensor([2, 0])).all() and (state[:, 3] == 1).all())


def test_semi_ar_blocks_start_after_the_prompt():
    """With the prompt given, blocks of one token decoded by exact conditionals are the chain rule
    of p(rest | prompt): the exact conditional, from as many steps as generated tokens."""
    table = JointTable.random(3, 4, seed=4)
    z = torch.full((4000, 4), 3)
    z[:, 0] = 1
    x = samplers.semi_ar(
        table, z, 3, block=1, inner="confidence", generator=torch.Generator().manual_seed(0)
    )
    conditional = table.probs.reshape(3, -1)[1]
    counts = table.histogram(x).double().reshape(3, -1)
    assert counts[[0, 2]].sum() == 0
    assert chi2_p(counts[1], conditional / conditional.sum()) > 1e-3


def test_guidance_weight_one_is_plain_sampling_bit_for_bit(tiny_model):
    model = load(str(tiny_model))
    plain = model.generate(4, 12, sampler="confidence", steps=6, seed=3, prompt="ab\n")
    guided = model.generate(
        4, 12, sampler="confidence", steps=6, seed=3, prompt="ab\n", guidance=1.0
    )
    assert torch.equal(plain.tokens, guided.tokens) and plain.network_rows == guided.network_rows
    twice = model.generate(
        4, 12, sampler="confidence", steps=6, seed=3, prompt="ab\n", guidance=2.0
    )
    assert twice.network_rows == 2 * plain.network_rows
    assert bool((twice.tokens[:, :3] == model.tokenizer.encode("ab\n")).all())
    with pytest.raises(ValueError, match="guidance needs a prompt"):
        model.generate(2, 8, guidance=2.0)


def test_guidance_weight_zero_samples_without_the_prompt():
    """w = 0 leaves the unconditional branch, the prompt masked: the rest follows its marginal
    p(x_2, x_3), not p(x_2, x_3 | x_1); w = 1 the conditional. Exact with first-hitting."""
    from difflab.text.guidance import PromptGuidance

    table = JointTable.random(3, 3, seed=6)
    prompt = torch.tensor([True, False, False])
    z = torch.full((4000, 3), 3)
    z[:, 0] = 2
    probs = table.probs.reshape(3, 9)
    for weight, target in ((0.0, probs.sum(0)), (1.0, probs[2] / probs[2].sum())):
        x = samplers.first_hitting(
            PromptGuidance(table, prompt, weight), z, generator=torch.Generator().manual_seed(1)
        )
        counts = table.histogram(x).double().reshape(3, 9)
        assert counts[:2].sum() == 0 and chi2_p(counts[2], target) > 1e-3, weight
    assert PromptGuidance(table, prompt, 1.0)(z[:2]).equal(table(z[:2]))


# ------------------------------------------------------------------ uniform-state diffusion


def tiny_level_net(vocab=3, context=3, seed=0):
    torch.manual_seed(seed)
    net = Transformer(vocab_size=vocab, context=context, dim=16, depth=1, heads=2, level=True)
    for p in net.parameters():
        p.data.normal_(0, 0.5)
    return net.eval().requires_grad_(False)


def test_uniform_corruption_keeps_alpha_and_redraws_uniformly():
    x = torch.zeros(4000, 50, dtype=torch.long)
    z = uniform.corrupt(x, 0.3, 4, torch.Generator().manual_seed(0))
    share = torch.bincount(z.reshape(-1), minlength=4).double() / z.numel()
    assert share.tolist() == pytest.approx([0.3 + 0.7 / 4] + [0.7 / 4] * 3, abs=3e-3)
    rows = uniform.corrupt(x[:3], torch.tensor([0.0, 1.0, 0.5]), 4, generators(0, 3))
    assert bool((rows[1] == 0).all()) and torch.equal(
        rows[2:], uniform.corrupt(x[2:3], 0.5, 4, generators(0, 3)[2:])
    )


@pytest.mark.parametrize("name", SCHEDULES)
def test_uniform_elbo_of_the_exact_denoiser_is_the_negative_log_likelihood(name):
    """The continuous-time bound is tight for exact x0-predictions when alpha_1 = 0 (the true
    reverse CTMC); log_linear's alpha_1 = eps leaves a small prior term, so it stays above."""
    table = JointTable.random(3, 3, seed=1)
    x = table.sample(6, torch.Generator().manual_seed(0))
    bound = uniform.exact_uniform_nelbo(UniformPosterior(table), x, name)
    nll = -table.log_prob(x)
    if name == "log_linear":
        assert bool((bound > nll).all()) and float((bound - nll).max()) < 1e-4
    else:
        assert torch.allclose(bound, nll, atol=1e-8)


def test_uniform_elbo_bounds_the_entropy_for_any_other_denoiser():
    """E_p[NELBO_theta(x)] >= E_p[-log p_theta(x)] >= H(p) (Gibbs) for a network that is not
    exact, and the Monte-Carlo estimator's mean is the enumerated bound."""
    table = JointTable.random(3, 3, seed=1)
    net = tiny_level_net()
    x = table.sequences
    with torch.no_grad():
        bound = uniform.exact_uniform_nelbo(net, x, "cosine")
        entropy = -(table.probs * table.probs.log()).sum()
        assert float((table.probs * bound).sum()) > float(entropy) + 0.05
        one = x[5:6].expand(20000, -1)
        mc = uniform.uniform_nelbo(net, one, "cosine", generator=torch.Generator().manual_seed(0))
    se = float(mc.std()) / math.sqrt(len(mc))
    assert abs(float(mc.mean()) - float(bound[5])) < 4 * se, (float(mc.mean()), float(bound[5]), se)


def test_uniform_ancestral_samples_the_exact_distribution():
    """Exact x0-predictions and many steps: the joint table; one step draws every token from its
    marginal at once, and is rejected. Given tokens are kept."""
    table = JointTable.random(3, 3, sharpness=2.0, seed=3)
    exact = UniformPosterior(table)
    z = torch.full((4000, 3), 3)
    many = samplers.uniform_ancestral(exact, z, 200, generator=torch.Generator().manual_seed(0))
    assert chi2_p(table.histogram(many).double(), table.probs) > 1e-3
    one = samplers.uniform_ancestral(exact, z, 1, generator=torch.Generator().manual_seed(0))
    assert chi2_p(table.histogram(one).double(), table.probs) < 1e-6
    z[:, 1] = 0
    kept = samplers.uniform_ancestral(exact, z[:50], 20, generator=generators(0, 50))
    assert bool((kept[:, 1] == 0).all()) and bool((kept < 3).all())


def test_uniform_model_trains_saves_and_samples(tmp_path):
    import numpy as np

    np.save(tmp_path / "tokens.npy", np.random.default_rng(0).integers(0, 5, 400))
    config = {
        "run": {
            "steps": 3,
            "checkpoint_every": 3,
            "log_every": 1,
            "eval_every": 3,
            "eval_batches": 1,
        },
        "data": {"path": str(tmp_path / "tokens.npy"), "vocab_size": 5},
        "model": {"kind": "uniform", "context": 8, "dim": 16, "depth": 1, "heads": 2},
        "objective": {"schedule": "cosine"},
        "optim": {"batch_size": 4, "warmup": 1},
        "sample": {"sampler": "uniform_ancestral", "steps": 8, "length": 8},
    }
    train(config, run_dir=tmp_path / "u", progress=False)
    model = load(str(tmp_path / "u"))
    assert model.kind == "uniform" and model.network.config["level"]
    out = model.generate(3, 8, steps=5, seed=0)
    assert out.tokens.shape == (3, 8) and out.network_rows == 3 * 5
    assert torch.equal(out.tokens[:2], model.generate(2, 8, steps=5, seed=0, batch_size=1).tokens)
    assert bool(torch.isfinite(model.nll(out.tokens)).all())
    with pytest.raises(ValueError, match="samples masked diffusion models"):
        model.generate(2, 8, sampler="first_hitting")
    with pytest.raises(ValueError, match="takes a noise level"):
        save_text_model(tmp_path / "bad", tiny_net(), kind="uniform")


# ------------------------------------------------------------------ output files and the CLI


def test_sample_files_round_trip(tmp_path):
    from difflab.text.sample_files import write_samples

    texts = ["To be,\nor not", "", "\n\n", "=== sample 7 (seed 0) ===\nx", "tab\tcr\r\nend\\n"]
    for suffix in (".txt", ".jsonl"):
        path = write_samples(
            tmp_path / f"s{suffix}",
            texts,
            seed=4,
            sampler="threshold",
            steps=9,
            tokens=13,
            prompt="To",
        )
        back = read_samples(path)
        assert [r["text"] for r in back] == texts and [r["index"] for r in back] == list(range(5))
        assert all(r["seed"] == 4 for r in back)
    assert read_samples(tmp_path / "s.jsonl")[1] == {
        "index": 1,
        "seed": 4,
        "sampler": "threshold",
        "steps": 9,
        "tokens": 13,
        "prompt": "To",
        "text": "",
    }
    text = (tmp_path / "s.txt").read_bytes().decode("utf-8")
    assert text.startswith("=== sample 0 (seed 4) ===\nTo be,\nor not\n=== sample 1 (seed 4) ===\n")
    assert format_samples(texts, 4) == text


def test_cli_writes_jsonl_with_prompt_and_guidance(tiny_model, tmp_path):
    out = tmp_path / "s.jsonl"
    args = [
        "--model",
        str(tiny_model),
        "--n",
        "3",
        "--length",
        "10",
        "--prompt",
        "ab",
        "--seed",
        "2",
    ]
    args += ["--sampler", "threshold", "--threshold", "0.8", "--guidance", "2", "--out", str(out)]
    assert main(["text", "sample", *args]) == 0
    records = read_samples(out)
    assert [r["index"] for r in records] == [0, 1, 2]
    assert all(r["text"].startswith("ab") and len(r["text"]) == 10 for r in records)
    assert records[0]["sampler"] == "threshold" and records[0]["tokens"] == 10
    model = load(str(tiny_model))
    again = model.generate(
        3, 10, sampler="threshold", threshold=0.8, prompt="ab", seed=2, guidance=2.0
    )
    assert [r["text"] for r in records] == again.texts
