"""The bounds as objects (:mod:`sde_diffusion.likelihood.estimators`): each one's per-batch numbers are
those of the function it wraps (``log_likelihood``, ``discrete_vlb``, ``continuous_elbo``), to the last
digit; each refuses a bad option in one line when built; what each needs is stated on it and is what
``evaluate_nll`` (and ``sde-eval``) go by; the ``bound`` config group builds them, old spellings too."""

from __future__ import annotations

import math

import pytest
import torch
from analytic import gaussian, mixture
from hydra import compose, initialize_config_module

import sde_diffusion as sd
from sde_diffusion.cli.eval import _check_keys
from sde_diffusion.app.config import ConfigError, build_bound
from sde_diffusion.likelihood import ContinuousELBO, DiscreteVLB, LatentBound, NLLBound, ODELikelihood
from sde_diffusion.likelihood.estimators import DiscreteData
from sde_diffusion.likelihood.evaluate import BOUND_MEANINGS, BOUNDS, evaluate_nll, make_bound
from sde_diffusion.sdes.discrete import DiscreteSchedule, linear_betas

SHORT = DiscreteSchedule(linear_betas(10, 0.01, 0.3))
LEVELS, WIDTH = 17, 2.0


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def points(dist, n=12):
    return dist.sample(n, generator=gen(1), dtype=torch.float64)


def levels_data(n=12):
    """``n`` 2-D points on 17 levels of [-1, 1), with -1 among them (the grid's origin)."""
    k = torch.randint(0, LEVELS, (n, 2), generator=gen(2))
    k[0, 0] = 0
    return k.double() * WIDTH / LEVELS - 1


DISCRETE = DiscreteData(LEVELS, -1.0, WIDTH, n_dequant=2)


# ------------------------------------------------------------ each object is the function it wraps
def test_the_ode_likelihood_is_log_likelihood_per_dimension_on_its_dequantized_draws():
    sde, dist = sd.VPSDE(), mixture()
    x = points(dist)
    bound = ODELikelihood(divergence="hutchinson", n_probes=2, rtol=1e-4, atol=1e-4)
    out = bound.batch_nll(sde, dist.score_fn(sde), x, gen(3), None)
    ref = sd.log_likelihood(sde, dist.score_fn(sde), x, divergence="hutchinson", n_probes=2, rtol=1e-4, atol=1e-4, generator=gen(3))
    assert torch.equal(out.nll, -ref.logp / 2) and out.bpd is None and out.nfe == ref.nfe and out.parts is None
    # discrete data: the dequantization draws first, then the probes, from one generator
    x = levels_data()
    out = bound.batch_nll(sde, dist.score_fn(sde), x, gen(3), DISCRETE)
    g = gen(3)
    y = sd.dequantize(x, LEVELS, (-1.0, 1.0), n_dequant=2, generator=g)
    ref = sd.log_likelihood(sde, dist.score_fn(sde), y, divergence="hutchinson", n_probes=2, rtol=1e-4, atol=1e-4, generator=g)
    assert torch.equal(out.nll, (-ref.logp / 2).reshape(2, -1).mean(0))
    assert torch.equal(out.bpd, sd.bits_per_dim(ref.logp, 2, LEVELS, (-1.0, 1.0), n_dequant=2)) and out.nfe == ref.nfe


def test_the_discrete_vlb_is_discrete_vlb_scored_as_the_data_are():
    ddpm, dist = sd.DDPMSDE(SHORT), gaussian()
    x = levels_data()
    out = DiscreteVLB(variance="large", n_terms=4).batch_nll(ddpm, dist.score_fn(ddpm), x, gen(4), DiscreteData(LEVELS, -1.0, WIDTH))
    total = sd.discrete_vlb(dist.score_fn(ddpm), ddpm, x, variance="large", levels=LEVELS, interval=(-1.0, 1.0), n_terms=4, generator=gen(4))
    bpd = total / (2 * math.log(2))
    assert torch.equal(out.bpd, bpd) and out.nfe == 4
    assert torch.equal(out.nll, (bpd - math.log2(LEVELS / WIDTH)) * math.log(2))  # the density on the bins
    # continuous data: the Gaussian decoder's bound, per dimension; all T steps
    x = points(dist)
    out = DiscreteVLB(variance="small").batch_nll(ddpm, dist.score_fn(ddpm), x, gen(4), None)
    assert torch.equal(out.nll, sd.discrete_vlb(dist.score_fn(ddpm), ddpm, x, variance="small", generator=gen(4)) / 2)
    assert out.bpd is None and out.nfe == SHORT.T


def test_the_continuous_elbo_is_continuous_elbo_with_either_decoder():
    sde, dist = sd.VPSDE(), gaussian()
    score = dist.score_fn(sde)
    x = points(dist)
    out = ContinuousELBO(n_time_samples=4, elbo_eps=1e-3).batch_nll(sde, score, x, gen(5), None)
    assert torch.equal(out.nll, -(-sd.continuous_elbo(score, sde, x, eps=1e-3, n_time_samples=4, generator=gen(5))) / 2)
    assert out.bpd is None and out.nfe == 4
    x = levels_data()
    data = DiscreteData(LEVELS, -1.0, WIDTH)
    out = ContinuousELBO(n_time_samples=4, elbo_eps=1e-3).batch_nll(sde, score, x, gen(5), data)
    total = sd.continuous_elbo(score, sde, x, eps=1e-3, n_time_samples=4, levels=LEVELS, interval=(-1.0, 1.0), generator=gen(5))
    assert torch.equal(out.bpd, total / (2 * math.log(2)))
    out = ContinuousELBO(n_time_samples=4, elbo_eps=1e-3, decoder="gaussian").batch_nll(sde, score, x, gen(5), DISCRETE)
    g = gen(5)
    y = sd.dequantize(x, LEVELS, (-1.0, 1.0), n_dequant=2, generator=g)
    logp = -sd.continuous_elbo(score, sde, y, eps=1e-3, n_time_samples=4, generator=g)
    assert torch.equal(out.nll, (-logp / 2).reshape(2, -1).mean(0))
    assert torch.equal(out.bpd, sd.bits_per_dim(logp, 2, LEVELS, (-1.0, 1.0), n_dequant=2))


@pytest.mark.parametrize(
    "name, options, kind",
    [
        ("ode", {"divergence": "hutchinson", "n_probes": 2, "rtol": 1e-4, "atol": 1e-4}, ODELikelihood),
        ("elbo", {"n_time_samples": 4}, ContinuousELBO),
        ("elbo_dequantized", {"n_time_samples": 4, "eps": 1e-3}, ContinuousELBO),
        ("vlb", {"variance": "large", "n_terms": 3}, DiscreteVLB),
    ],
)
def test_evaluate_nll_gives_the_same_numbers_for_a_bound_by_name_and_by_object(name, options, kind):
    """The string form is a mapping onto the objects (make_bound): same seeds, same draws, same result."""
    sde = sd.DDPMSDE(SHORT) if name == "vlb" else sd.VPSDE()
    dist = gaussian()
    common = {"levels": LEVELS, "interval_width": WIDTH, "batch_size": 5, "seed": 7}
    by_name = evaluate_nll(sde, dist.score_fn(sde), levels_data(), bound=name, **options, **common)
    bound = make_bound(name, **options)
    assert type(bound) is kind and bound.name == name
    by_object = evaluate_nll(sde, dist.score_fn(sde), levels_data(), bound=bound, **common)
    assert {k: v for k, v in by_name.items() if k != "seconds"} == {k: v for k, v in by_object.items() if k != "seconds"}
    assert by_name["bound"] == name and by_name["measures"] == BOUND_MEANINGS[name]


# ----------------------------------------------------------------------- options, refused when built
@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: ODELikelihood(divergence="trace"), "divergence must be 'auto' or one of"),
        (lambda: ODELikelihood(divergence="exact", n_probes=2), "n_probes=2 applies to divergence='hutchinson' only"),
        (lambda: ODELikelihood(n_probes=0), "n_probes must be a positive integer, got 0"),
        (lambda: ODELikelihood(rtol=0.0), "rtol must be a positive number, got 0.0"),
        (lambda: ODELikelihood(eps=-1e-5), "eps must be a number >= 0"),
        (lambda: ODELikelihood(method="rk4"), r"needs options=\{'step_size'"),
        (lambda: ODELikelihood(time_variable="lambda"), "time_variable must be one of"),
        (lambda: ODELikelihood(backend="jax"), "backend must be one of"),
        (lambda: DiscreteVLB(variance="tiny"), "variance must be 'auto' or one of"),
        (lambda: DiscreteVLB(n_terms=0), "n_terms must be an integer >= 1 or null, got 0"),
        (lambda: DiscreteVLB(n_terms=2.5), "n_terms must be an integer"),
        (lambda: ContinuousELBO(n_time_samples=0), "n_time_samples must be a positive integer"),
        (lambda: ContinuousELBO(elbo_eps=-0.1), "elbo_eps must be a positive number"),
        (lambda: ContinuousELBO(elbo_eps="soon"), "elbo_eps must be a positive number, got 'soon' \\(a time in \\(0, T\\), or 'auto'\\)"),
        (lambda: ContinuousELBO(decoder="laplace"), "decoder must be one of"),
        (lambda: make_bound("kl"), "bound must be one of"),
        (lambda: make_bound("latent"), "codec go together"),
        (lambda: make_bound("elbo", time_variable="sigma"), "bound=elbo solves no ODE"),
    ],
)
def test_each_bound_refuses_a_bad_option_in_one_line_when_built(build, message):
    with pytest.raises(ValueError, match=message) as err:
        build()
    assert "\n" not in str(err.value)


def test_options_checked_against_the_sde_are_refused_at_the_first_batch():
    ddpm, dist = sd.DDPMSDE(SHORT), gaussian()
    with pytest.raises(ValueError, match=r"n_terms must be an integer in \[1, 10\], got 11"):
        evaluate_nll(ddpm, dist.score_fn(ddpm), points(dist), bound=DiscreteVLB(n_terms=11))
    with pytest.raises(ValueError, match=r"eps must lie in \(0, 1\), got 2.0"):
        evaluate_nll(sd.VPSDE(), dist.score_fn(sd.VPSDE()), points(dist), bound=ContinuousELBO(elbo_eps=2.0))


# --------------------------------------------------------------------------------- what each needs
def test_each_bound_states_what_it_needs():
    codec = object()
    kinds = {
        "ode": ODELikelihood(),
        "vlb": DiscreteVLB(),
        "elbo": ContinuousELBO(),
        "elbo_dequantized": ContinuousELBO(decoder="gaussian"),
        "latent": LatentBound(codec=codec),
    }
    assert tuple(kinds) == BOUNDS and all(isinstance(b, NLLBound) and b.name == name for name, b in kinds.items())
    needs = {name: (b.needs_fp32, b.needs_eager, b.needs_discrete_chain, b.needs_codec, b.dequantizes, b.nfe_per) for name, b in kinds.items()}
    assert needs == {
        "ode": (True, True, False, False, True, "solve"),
        "vlb": (False, False, True, False, False, "point"),
        "elbo": (False, False, False, False, False, "point"),
        "elbo_dequantized": (False, False, False, False, True, "point"),
        "latent": (True, True, False, True, False, "solve"),
    }
    # a latent run turns the ODE likelihood into LSGM's bound around it; the pixel bounds refuse one
    wrapped = kinds["ode"].with_codec(codec)
    assert wrapped == LatentBound(ODELikelihood(), codec) and kinds["latent"].with_codec(codec) == kinds["latent"]
    with pytest.raises(ValueError, match="bound=vlb is for models on pixels"):
        kinds["vlb"].with_codec(codec)


def test_evaluate_nll_goes_by_what_the_bound_states():
    vp, dist = sd.VPSDE(), gaussian()
    with pytest.raises(ValueError, match="the VLB \\(bound=vlb\\) needs a discrete-time SDE \\(sde=ddpm"):
        evaluate_nll(vp, dist.score_fn(vp), points(dist), bound=DiscreteVLB())  # needs_discrete_chain
    for bound in (ContinuousELBO(), DiscreteVLB()):  # they score discrete data as they are
        sde = sd.DDPMSDE(SHORT)
        with pytest.raises(ValueError, match=f"bound={bound.name} scores the discrete data as they are.*leave n_dequant=1"):
            evaluate_nll(sde, dist.score_fn(sde), levels_data(), bound=bound, levels=LEVELS, interval_width=WIDTH, n_dequant=2)
    with pytest.raises(ValueError, match="codec go together"):
        evaluate_nll(vp, dist.score_fn(vp), points(dist), bound=LatentBound())
    # an object holds its own options: the string form's keywords beside it are refused, not ignored
    with pytest.raises(ValueError, match="rtol, n_probes: options of the bound by name; a bound object \\(ODELikelihood\\) holds its own"):
        evaluate_nll(vp, dist.score_fn(vp), points(dist), bound=ODELikelihood(), rtol=1e-3, n_probes=2)


def test_auto_options_are_resolved_for_the_model_and_data_and_reported():
    vp, dist = sd.VPSDE(), gaussian()
    assert ODELikelihood().resolve(vp, None, 2, None).divergence == "exact"
    assert ODELikelihood().resolve(vp, None, 17, None).divergence == "hutchinson"
    learned = sd.LearnedVarianceParameterization(sd.TimeMLP([2], hidden_dim=8, n_layers=1, learn_variance=True), sd.DDPMSDE(SHORT))
    assert DiscreteVLB().resolve(None, learned, 2, None).variance == "learned"
    assert DiscreteVLB().resolve(None, dist.score_fn(vp), 2, None).variance == "small"
    # the ELBO's decoder a third of a bin wide on discrete data, else at eps
    elbo = ContinuousELBO(eps=1e-4)
    m, s = vp.kernel(torch.tensor(elbo.resolve(vp, None, 2, DiscreteData(LEVELS, -1.0, WIDTH)).elbo_eps, dtype=torch.float64))
    assert float(s / m) == pytest.approx(WIDTH / (3 * LEVELS), rel=1e-6)
    assert elbo.resolve(vp, None, 2, None).elbo_eps == 1e-4
    assert ContinuousELBO(eps=1e-4, decoder="gaussian").resolve(vp, None, 2, DISCRETE).elbo_eps == 1e-4
    r = evaluate_nll(vp, dist.score_fn(vp), points(dist), bound=ContinuousELBO(n_time_samples=2))
    assert (r["bound"], r["n_time_samples"], r["elbo_eps"], r["divergence"]) == ("elbo", 2, 1e-5, None)
    r = evaluate_nll(vp, dist.score_fn(vp), points(dist), bound=ODELikelihood(rtol=1e-3, atol=1e-3))
    assert (r["bound"], r["divergence"], r["rtol"], r["time_variable"]) == ("ode", "exact", 1e-3, "t")


# ------------------------------------------------------------------------ the bound config group
def _compose(*overrides):
    with initialize_config_module("sde_diffusion.conf", version_base=None):
        return compose(config_name="eval", overrides=["run_dir=x", *overrides])


@pytest.mark.parametrize(
    "overrides, want",
    [
        ([], ODELikelihood()),
        (["bound=ode", "divergence=hutchinson", "n_probes=2", "time_variable=sigma", "rtol=1e-3"],
         ODELikelihood(divergence="hutchinson", n_probes=2, time_variable="sigma", rtol=1e-3)),
        (["bound.rtol=1e-3"], ODELikelihood(rtol=1e-3)),
        (["bound=vlb", "n_terms=50"], DiscreteVLB(n_terms=50)),  # the old spelling
        (["bound=vlb", "bound.n_terms=50", "variance=small"], DiscreteVLB(variance="small", n_terms=50)),
        (["bound=elbo", "n_time_samples=8", "elbo_eps=0.01"], ContinuousELBO(n_time_samples=8, elbo_eps=0.01)),
        (["bound=elbo_dequantized", "bound.n_time_samples=8", "eps=1e-3"], ContinuousELBO(n_time_samples=8, eps=1e-3, decoder="gaussian")),
        (["bound=latent", "rtol=1e-3", "bound.ode.atol=1e-2"], LatentBound(ODELikelihood(rtol=1e-3, atol=1e-2))),
    ],
)  # fmt: skip
def test_the_bound_group_builds_each_bound_with_old_and_new_spellings(overrides, want):
    assert build_bound(_compose(*overrides)) == want


def test_every_bound_option_builds_its_kind():
    from sde_diffusion.cli._common import group_options

    assert group_options()["bound"] == sorted(BOUNDS)
    for name in BOUNDS:
        assert build_bound(_compose(f"bound={name}")).name == name


def test_the_bound_group_refuses_a_bad_option_in_one_line():
    with pytest.raises(ConfigError, match="bound: variance must be 'auto' or one of") as err:
        build_bound(_compose("bound=vlb", "bound.variance=tiny"))
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="bound: n_time_samples must be a positive integer"):
        build_bound(_compose("bound=elbo", "n_time_samples=0"))


def test_sde_eval_takes_the_bound_group_and_its_keys_on_the_command_line():
    _check_keys(["run_dir=x", "bound=vlb", "n_terms=50", "bound.n_terms=50", "variance=small"])  # no refusal
    with pytest.raises(SystemExit):
        _check_keys(["run_dir=x", "sampler=ddim"])
