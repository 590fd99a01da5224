"""``evaluate_nll`` against closed forms and ``log_likelihood``; ``sde-eval`` and the held-out NLL of
``sde-train`` end to end on a tiny training run.

Oracle for the closed-form checks: a Gaussian-mixture score is exact, and :class:`ExactPriorVP`
replaces the VP prior by the true marginal ``p_T`` of the mixture, so the change of variables is
exact and ``log_likelihood`` returns ``log p_eps(x)`` up to solver error alone (the prior mismatch,
1e-4 to 1e-2 nats/dim, would otherwise dominate; tests/test_likelihood.py explains).
"""

from __future__ import annotations

import json
import re
import math
import multiprocessing
import os
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_module

import sde_diffusion as sd
from sde_diffusion._seeding import derive_seed
from analytic import gaussian, mixture
from apps import run_app
from sde_diffusion.cli.eval import append_record
from sde_diffusion.cli.eval import run as eval_run
from sde_diffusion.app.config import ConfigError
from sde_diffusion.likelihood import dequantize, log_likelihood
from sde_diffusion.likelihood.evaluate import BOUND_MEANINGS, evaluate_nll, resolve_divergence

EPS = 1e-5
IMAGE = (1, 8, 8)
TIGHT = {"rtol": 1e-7, "atol": 1e-7}  # dopri5 error ~1e-7 nats/dim on these mixtures (test_likelihood.py)


class ExactPriorVP(sd.VPSDE):
    """The VP SDE with the true time-``T`` marginal of ``dist`` as its prior density."""

    def __init__(self, dist: sd.GaussianMixture):
        super().__init__()
        self.dist = dist

    def prior_logp(self, z):
        return self.dist.log_prob(z, self.T, self)


def points(dist, n, seed=0):
    return dist.sample(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def exact_nll(dist, sde, x):
    """Per-point ``-log p_eps(x) / D`` in nats, the closed form."""
    return -dist.log_prob(x, EPS, sde) / dist.dim


# ------------------------------------------------------------------ evaluate_nll, closed forms
def test_continuous_nll_and_stderr_match_the_closed_form():
    dist = mixture(dim=2, seed=11)
    sde = ExactPriorVP(dist)
    x = points(dist, 40)
    r = evaluate_nll(sde, dist.score_fn(sde), x, batch_size=16, density=dist, **TIGHT)
    truth = exact_nll(dist, sde, x)
    # only solver error remains: measured 2e-7 nats/dim at rtol = atol = 1e-7
    assert r["nll_nats_per_dim"] == pytest.approx(truth.mean().item(), abs=1e-5)
    # the standard error is std over points / sqrt(n): the per-point values equal the truth to 1e-5,
    # so the std matches to 1e-5 / sqrt(n) relative to a std of ~1 nat
    assert r["nll_stderr"] == pytest.approx((truth.std() / math.sqrt(40)).item(), abs=1e-5)
    assert (r["n_points"], r["dim"], r["divergence"], r["n_solves"]) == (40, 2, "exact", 3)  # 16 + 16 + 8
    assert r["bpd"] is None and r["bpd_stderr"] is None
    # the data's exact NLL is -log p_0 / D; p_eps and p_0 differ by O(s(eps)^2) ~ 1e-5 nats/dim
    assert r["data_nll_nats_per_dim"] == pytest.approx((-dist.log_prob(x) / 2).mean().item(), abs=1e-12)
    assert r["data_nll_nats_per_dim"] == pytest.approx(r["nll_nats_per_dim"], abs=1e-4)
    assert r["nfe_total"] == r["nfe"] * 3 and r["seconds"] > 0


def _batch_generator(seed: int, batch: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, batch))


def test_discrete_bpd_matches_the_closed_form_of_the_dequantized_density():
    # 8-bit-like data: K = 256 levels on [-4, 4), the left bin edges of a Gaussian mixture's samples,
    # held in a Dataset as sde-eval reads it
    levels, low, width = 256, -4.0, 8.0
    dist = mixture(dim=2, seed=12, spread=1.0)
    k = torch.floor((points(dist, 24).clamp(low, -low - 1e-6) - low) * levels / width)
    grid = (low + k * width / levels).float()
    data = sd.Dataset(train=grid, test=grid, name="grid", levels=levels, interval_width=width)
    sde = ExactPriorVP(dist)
    x = data.test.double()
    r = evaluate_nll(
        sde,
        dist.score_fn(sde),
        x,
        levels=data.levels,
        interval_width=data.interval_width,
        n_dequant=3,
        batch_size=10,
        seed=5,
        **TIGHT,
    )
    # replay the draws: batch b's generator is seeded derive_seed(5, b); grid origin at the smallest value
    interval = (x.min().item(), x.min().item() + width)
    per_point = torch.cat(
        [
            exact_nll(dist, sde, dequantize(xb, levels, interval, n_dequant=3, generator=_batch_generator(5, b))).reshape(3, -1).mean(0)
            for b, xb in enumerate(x.split(10))
        ]
    )
    offset = math.log2(levels / width)  # 5 bits
    # only solver error remains (measured 2e-7 nats/dim); the identity bpd = nll / ln 2 + log2(K / w)
    # holds per point, so the means and standard errors obey it to rounding
    assert r["nll_nats_per_dim"] == pytest.approx(per_point.mean().item(), abs=1e-5)
    assert r["bpd"] == pytest.approx(per_point.mean().item() / math.log(2) + offset, abs=2e-5)
    assert r["bpd"] == pytest.approx(r["nll_nats_per_dim"] / math.log(2) + offset, abs=1e-12)
    assert r["bpd_stderr"] == pytest.approx(r["nll_stderr"] / math.log(2), rel=1e-12)
    assert r["nll_stderr"] == pytest.approx((per_point.std() / math.sqrt(24)).item(), abs=1e-5)


def test_stderr_combines_probes_and_dequantization_draws_per_point():
    # Hutchinson probes and dequantization draws from each batch's generator: replaying log_likelihood
    # batch by batch gives the same per-point averages, so evaluate_nll's mean and stderr follow exactly
    levels, width = 32, 2.0
    dist = gaussian(dim=2, seed=13)
    x = torch.floor((points(dist, 12).clamp(-1, 0.99) + 1) * levels / width) * width / levels - 1
    sde = sd.VPSDE()
    opts = {"divergence": "hutchinson", "n_probes": 3}
    r = evaluate_nll(sde, dist.score_fn(sde), x, levels=levels, interval_width=width, n_dequant=2, batch_size=5, seed=1, **opts)
    interval = (x.min().item(), x.min().item() + width)
    per_point, nfe = [], []
    for b, xb in enumerate(x.split(5)):
        g = _batch_generator(1, b)
        y = dequantize(xb, levels, interval, n_dequant=2, generator=g)
        out = log_likelihood(sde, dist.score_fn(sde), y, generator=g, **opts)
        per_point.append((-out.logp_probes / 2).mean(0).reshape(2, -1).mean(0))  # probes, then draws
        nfe.append(out.nfe)
    per_point = torch.cat(per_point)
    assert r["nll_nats_per_dim"] == pytest.approx(per_point.mean().item(), rel=1e-12)
    assert r["nll_stderr"] == pytest.approx((per_point.std() / math.sqrt(12)).item(), rel=1e-10)
    assert r["nfe"] == pytest.approx(sum(nfe) / 3) and r["divergence"] == "hutchinson"


def test_images_equal_their_flattened_points():
    dist = mixture(dim=64, n_components=2, seed=14, event_shape=IMAGE)
    sde = ExactPriorVP(dist)
    x = points(dist, 4)
    assert x.shape == (4, *IMAGE)
    image = evaluate_nll(sde, dist.score_fn(sde), x, divergence="exact")
    flat_dist = mixture(dim=64, n_components=2, seed=14)
    flat_sde = ExactPriorVP(flat_dist)
    flat = evaluate_nll(flat_sde, flat_dist.score_fn(flat_sde), x.flatten(1), divergence="exact")
    assert image["dim"] == flat["dim"] == 64
    assert image["nll_nats_per_dim"] == pytest.approx(flat["nll_nats_per_dim"], rel=1e-9)
    # default tolerance 1e-5: measured 7e-5 nats/dim in 64 dimensions (test_likelihood.py)
    assert image["nll_nats_per_dim"] == pytest.approx(exact_nll(dist, sde, x).mean().item(), abs=5e-4)


def test_density_may_be_a_plain_callable_or_an_object_with_log_prob():
    # a user's exact log-density as a lambda gives the data-NLL line of the object itself
    dist = mixture(dim=2, seed=3)
    sde = sd.VPSDE()
    x = points(dist, 12)
    common = {"bound": "elbo", "n_time_samples": 2}  # the data NLL does not depend on the bound; no solve
    by_object = evaluate_nll(sde, dist.score_fn(sde), x, density=dist, **common)
    by_lambda = evaluate_nll(sde, dist.score_fn(sde), x, density=lambda y: dist.log_prob(y), **common)
    assert by_lambda["data_nll_nats_per_dim"] == by_object["data_nll_nats_per_dim"]
    assert by_lambda["data_nll_stderr"] == by_object["data_nll_stderr"]
    assert by_object["data_nll_nats_per_dim"] == pytest.approx((-dist.log_prob(x) / 2).mean().item(), abs=1e-12)


@pytest.mark.parametrize(
    "density, message",
    [
        (lambda y: -0.5 * y**2, r"must have shape \(8,\), one value in nats per point of x \(8, 2\), got \(8, 2\)"),
        (lambda y: -0.5 * (y**2).sum(), r"must have shape \(8,\).*got \(\)"),
        (3.0, "density must have log_prob\\(x\\) or be a callable"),
    ],
)
def test_a_density_of_the_wrong_shape_is_refused_in_one_line(density, message):
    dist, sde = gaussian(), sd.VPSDE()
    with pytest.raises(ValueError, match=message) as err:
        evaluate_nll(sde, dist.score_fn(sde), points(dist, 8), density=density, bound="elbo", n_time_samples=2)
    assert "\n" not in str(err.value)


def test_auto_divergence_is_exact_up_to_16_dimensions():
    assert [resolve_divergence("auto", d) for d in (2, 16, 17, 64)] == ["exact", "exact", "hutchinson", "hutchinson"]
    assert resolve_divergence("exact", 3072) == "exact"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"divergence": "trace"}, "divergence must be 'auto' or one of"),
        ({"n_points": 0}, "n_points must be an integer >= 1 or null"),
        ({"n_points": 9}, "n_points=9 but the data hold 8 points"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"batch_size": "8"}, "batch_size must be an integer >= 1"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"n_dequant": 2}, "n_dequant=2 applies to discrete data only"),
        ({"levels": 256}, "give both or neither"),
        ({"divergence": "exact", "n_probes": 2}, "applies to divergence='hutchinson' only"),
        ({"levels": 4, "interval_width": 2.0}, "left bin edges"),  # Gaussian samples are not on a grid
    ],
)
def test_invalid_settings_are_named(kwargs, message):
    dist, sde = gaussian(), sd.VPSDE()
    with pytest.raises(ValueError, match=message):
        evaluate_nll(sde, dist.score_fn(sde), points(dist, 8), **kwargs)


# ------------------------------------------------------------------------ the apps, end to end
def _cli(module: str, *args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread, as the in-process references
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A 30-step sde-train run whose summary holds the held-out NLL of 64 points. A high learning rate
    and a short EMA move the network away from its initial zero output (whose NLL is the same at
    every point), so per-point NLLs, and their standard error, are not trivial."""
    run_dir = tmp_path_factory.mktemp("train")
    proc = _cli(
        "sde_diffusion.cli.train",
        "train.steps=30",
        "train.progress=false",
        "n_samples=50",
        "sampler.grid.n_steps=20",
        "eval_points=64",
        "train.lr=1e-2",
        "train.warmup_steps=5",
        "train.ema_decay=0.5",
        f"hydra.run.dir={run_dir}",
        cwd=run_dir,
    )
    assert proc.returncode == 0, proc.stderr
    return run_dir


def _reference(run_dir, n, batch_size):
    """NLL per point of the first ``n`` held-out points, straight from ``log_likelihood`` with the
    loaded EMA model (the defaults of sde-eval: exact divergence at D = 2, dopri5, 1e-5)."""
    trained = sd.load_run(run_dir, "cpu")
    outs = [log_likelihood(trained.sde, trained.score_model, xb) for xb in trained.data.test[:n].split(batch_size)]
    return torch.cat([-o.logp / 2 for o in outs]).double(), [o.nfe for o in outs], trained


@pytest.mark.slow
def test_train_summary_holds_the_held_out_nll_of_the_ema_model(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    nll, nfe, trained = _reference(run_dir, 64, 1000)
    # the same float32 computation, on one thread, with the EMA weights saved in the checkpoint
    assert summary["held_out_nll_nats_per_dim"] == pytest.approx(nll.mean().item(), rel=1e-6)
    assert summary["held_out_nll_stderr"] == pytest.approx((nll.std() / 8).item(), rel=1e-5)
    assert summary["held_out_nll_stderr"] > 1e-3  # per-point NLLs differ: the model is not trivial
    assert summary["held_out_nll_points"] == 64 and summary["held_out_nll_nfe"] == nfe[0]
    entropy = (-trained.data.distribution.log_prob(trained.data.test[:64].double()) / 2).mean().item()
    assert summary["held_out_data_nll_nats_per_dim"] == pytest.approx(entropy)  # ln(32) / 2 for the checkerboard
    assert "held_out_bpd" not in summary  # continuous data


@pytest.mark.slow
def test_sde_eval_writes_records_equal_to_log_likelihood(run_dir, tmp_path):
    out_dir = tmp_path / "eval"
    before = json.loads((run_dir / "eval.json").read_text()) if (run_dir / "eval.json").exists() else []
    proc = _cli(
        "sde_diffusion.cli.eval",
        f"run_dir={run_dir}",
        "n_points=48",
        "batch_size=32",
        "progress=false",
        f"hydra.run.dir={out_dir}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    first, result = proc.stdout.splitlines()  # the start line (device, threads), then the result
    assert re.fullmatch(r"sde-eval: test split of step 30 of .* on cpu, \d+ threads?", first) and result.startswith("sde-eval: NLL ")
    records = json.loads((run_dir / "eval.json").read_text())
    assert records[: len(before)] == before and len(records) == len(before) + 1
    record = records[-1]
    assert json.loads((out_dir / "eval.json").read_text()) == [record]
    assert (out_dir / ".hydra" / "config.yaml").is_file()
    nll, nfe, trained = _reference(run_dir, 48, 32)
    assert record["nll_nats_per_dim"] == pytest.approx(nll.mean().item(), rel=1e-6)
    assert record["nll_stderr"] == pytest.approx((nll.std() / math.sqrt(48)).item(), rel=1e-5)
    assert (record["nfe"], record["nfe_total"], record["n_solves"]) == (sum(nfe) / 2, sum(nfe), 2)
    assert record["bpd"] is None and record["seconds"] > 0
    assert (record["split"], record["n_points"], record["divergence"], record["checkpoint_step"]) == ("test", 48, "exact", 30)
    assert record["run_dir"] == str(trained.run_dir) and record["out_dir"] == str(out_dir)


@pytest.mark.slow
@pytest.mark.parametrize(
    "bound, statement",
    [
        ("ode", "bound=ode: the exact NLL of the probability-flow ODE's model, which is not the reverse-SDE model"),
        ("elbo", "bound=elbo: an upper bound on the NLL of the reverse-SDE (diffusion) model, not a bound on the ODE's NLL"),
    ],
)
def test_sde_eval_says_which_model_its_number_is_of(run_dir, tmp_path, bound, statement):
    # the ELBO bounds the reverse SDE's NLL, the ODE gives the flow's exactly: the ELBO can come out
    # below the ODE's NLL, and the line and the record must not read as if one bounded the other
    out_dir = tmp_path / "eval"
    code, out, err = run_app(
        "eval", f"run_dir={run_dir}", f"bound={bound}", "n_points=8", "progress=false", f"hydra.run.dir={out_dir}", cwd=tmp_path
    )
    assert code == 0, err
    line = out.splitlines()[-1]
    assert statement in line and line.count("\n") == 0
    (record,) = json.loads((out_dir / "eval.json").read_text())
    assert record["bound"] == bound and statement.removeprefix(f"bound={bound}: ") in record["measures"]
    assert record["measures"] == BOUND_MEANINGS[bound]


class ELBOInFP32(sd.ContinuousELBO):
    """A user's bound that declares it needs fp32: sde-eval goes by the declaration, not by the name."""

    needs_fp32 = True


@pytest.mark.slow
def test_sde_eval_refuses_bf16_for_the_bounds_that_need_fp32(run_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"precision=bf16: the ODE likelihood \(bound=ode\) runs the network in fp32") as err:
        eval_run(_eval_config(run_dir, "precision=bf16", "n_points=8"), tmp_path / "ode")
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"precision=bf16: .*\(bound=elbo\) runs the network in fp32"):
        eval_run(_eval_config(run_dir, "precision=bf16", "n_points=8", "bound=elbo", f"bound._target_={__name__}.ELBOInFP32"), tmp_path / "own")
    record = eval_run(_eval_config(run_dir, "precision=bf16", "n_points=8", "bound=elbo", "n_time_samples=2"), tmp_path / "elbo")
    assert record["bound"] == "elbo" and math.isfinite(record["nll_nats_per_dim"])


@pytest.mark.slow
def test_sde_eval_bound_keys_old_and_new_spellings_give_the_same_record(run_dir, tmp_path):
    """``bound=vlb n_terms=50`` style (the top-level keys, which conf/bound/ reads) and
    ``bound.<key>=`` (the chosen bound alone) evaluate and record the same; both equal the library's
    evaluate_nll with the bound by name."""
    common = ["n_points=16", "batch_size=8", "bound=elbo"]
    old = eval_run(_eval_config(run_dir, *common, "n_time_samples=4", "elbo_eps=0.01"), tmp_path / "old")
    new = eval_run(_eval_config(run_dir, *common, "bound.n_time_samples=4", "bound.elbo_eps=0.01"), tmp_path / "new")
    numbers = ("bound", "n_time_samples", "elbo_eps", "nll_nats_per_dim", "nll_stderr", "nfe", "divergence")
    assert [old[k] for k in numbers] == [new[k] for k in numbers] == [
        "elbo", 4, 0.01, old["nll_nats_per_dim"], old["nll_stderr"], 4, None
    ]
    trained = sd.load_run(run_dir, "cpu")
    direct = evaluate_nll(trained.sde, trained.score_model, trained.data.test, n_points=16, batch_size=8, bound="elbo", n_time_samples=4,
                          elbo_eps=0.01, density=trained.data.distribution)  # fmt: skip
    assert new["nll_nats_per_dim"] == direct["nll_nats_per_dim"] and new["nll_stderr"] == direct["nll_stderr"]


def _eval_config(run_dir, *overrides):
    """sde-eval's config as the app composes it (the bound group included), with ``overrides``."""
    with initialize_config_module("sde_diffusion.conf", version_base=None):
        return compose(config_name="eval", overrides=[f"run_dir={run_dir}", "progress=false", *overrides])


@pytest.mark.slow
def test_records_accumulate(run_dir, tmp_path):
    path = run_dir / "eval.json"
    first = eval_run(_eval_config(run_dir, "n_points=16"), tmp_path / "a")
    before = json.loads(path.read_text())
    second = eval_run(_eval_config(run_dir, "n_points=16", "divergence=hutchinson", "n_probes=2", "split=train"), tmp_path / "b")
    after = json.loads(path.read_text())
    assert after == [*before, second] and first in before
    assert (second["divergence"], second["n_probes"], second["split"]) == ("hutchinson", 2, "train")


@pytest.mark.slow
def test_sde_eval_time_variable_is_recorded_and_gives_the_same_nll(run_dir, tmp_path):
    records = {
        v: eval_run(_eval_config(run_dir, "n_points=16", f"time_variable={v}", "rtol=1e-7", "atol=1e-7"), tmp_path / v)
        for v in ("t", "sigma")
    }
    assert (records["t"]["time_variable"], records["sigma"]["time_variable"]) == ("t", "sigma")
    # the trained network, not an exact score: the two solves agree to their tolerance, not to the last digit
    assert records["sigma"]["nll_nats_per_dim"] == pytest.approx(records["t"]["nll_nats_per_dim"], abs=1e-4)
    assert records["sigma"]["nfe"] != records["t"]["nfe"]  # another solve, not the same one relabelled


def test_append_refuses_a_file_that_is_not_a_list(tmp_path):
    path = tmp_path / "eval.json"
    assert append_record(path, {"a": 1}) == 1 and append_record(path, {"a": 2}) == 2
    assert json.loads(path.read_text()) == [{"a": 1}, {"a": 2}]
    path.write_text('{"a": 1}')
    with pytest.raises(ConfigError, match="not a list"):
        append_record(path, {"a": 3})
    path.write_text("[{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        append_record(path, {"a": 3})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json"]  # no temporary files left


def _append_many(path, worker):
    for i in range(25):
        append_record(path, {"worker": worker, "i": i})


def test_concurrent_appends_keep_every_record(tmp_path):
    # a parallel sweep (hydra/launcher=joblib) appends to one run's eval.json from several processes
    path = tmp_path / "eval.json"
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_append_many, args=(path, w)) for w in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    records = json.loads(path.read_text())
    assert sorted((r["worker"], r["i"]) for r in records) == [(w, i) for w in range(4) for i in range(25)]


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides, message",
    [
        (["split=valid"], "split must be one of test, train"),
        (["n_points=100000"], "n_points=100000 but the data hold 5000 points"),
        (["n_dequant=2"], "applies to discrete data only"),
        (["method=rk4"], "needs options"),
        (["time_variable=lambda"], "time_variable must be one of"),
    ],
)
def test_bad_settings_raise_one_line_config_errors(run_dir, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        eval_run(_eval_config(run_dir, *overrides), tmp_path)
    assert "\n" not in str(err.value)


def test_a_run_dir_that_is_not_a_directory_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="is not a directory") as err:
        eval_run(_eval_config(tmp_path / "nonexistent"), tmp_path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "run_dir is required"),
        (["sde=ve"], "sde is not an sde-eval option"),
    ],
)
def test_cli_errors_exit_non_zero_with_one_line(tmp_path, args, message):
    proc = _cli("sde_diffusion.cli.eval", *args, f"hydra.run.dir={tmp_path / 'out'}", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("sde-eval: error: ") and message in proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr


@pytest.mark.slow
def test_sde_eval_weights_raw_evaluates_the_last_steps_weights(run_dir, tmp_path):
    """weights=raw: the NLL of the raw weights, equal to the library's evaluation of load_run(weights='raw'),
    and recorded; the EMA's differs."""
    raw = eval_run(_eval_config(run_dir, "n_points=16", "weights=raw"), tmp_path / "raw")
    ema = eval_run(_eval_config(run_dir, "n_points=16"), tmp_path / "ema")
    assert (raw["weights"], ema["weights"]) == ("raw", "ema") and raw["nll_nats_per_dim"] != ema["nll_nats_per_dim"]
    trained = sd.load_run(run_dir, "cpu", weights="raw")
    direct = sd.evaluate_nll(trained.sde, trained.score_model, trained.data.test, n_points=16, seed=0, density=trained.data.distribution)
    assert raw["nll_nats_per_dim"] == pytest.approx(direct["nll_nats_per_dim"], rel=1e-6)
