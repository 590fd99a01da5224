"""Class-conditional models: labels through the parameterizations, classifier-free guidance as a plain
score for every sampler, and label dropout in the Trainer (its rate, and exact resume with labels)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from analytic import mixture
from apps import train_config
from test_samplers_sde import assert_gaussian
from test_training import _assert_same_state, _Crash, _crash_at
from test_unet import _switch_on, _tiny
from torch import nn

import sde_diffusion as sd
from sde_diffusion import samplers as S
from sde_diffusion.app.config import ConfigError
from sde_diffusion.app.runs import build_experiment
from sde_diffusion.cli.train import _guidance, _train_labels
from sde_diffusion.tasks.score import grid_labels as _grid_labels
from sde_diffusion.training import load_checkpoint

F64 = torch.float64
PARAMETERIZATIONS = [sd.ScoreParameterization, sd.EpsilonParameterization, sd.DataParameterization]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class LabelMLP(nn.Module):
    """A tiny class-conditional raw network ``net(x, t, y)`` for points ``(B, D)``: labels
    ``0 .. K - 1`` and the null label ``K`` (the default), as :class:`~sde_diffusion.UNet` has them."""

    def __init__(self, dim: int = 2, n_classes: int = 3, hidden: int = 16):
        super().__init__()
        self.n_classes = n_classes
        self.inp, self.time, self.label = nn.Linear(dim, hidden), nn.Linear(1, hidden), nn.Embedding(n_classes + 1, hidden)
        self.out = nn.Linear(hidden, dim)

    def forward(self, x, t, y=None):
        y = torch.full((x.shape[0],), self.n_classes, dtype=torch.long) if y is None else y
        return self.out(torch.nn.functional.silu(self.inp(x) + self.time(t[:, None]) + self.label(y)))


def conditional_net(shape: tuple[int, ...], n_classes: int = 3) -> nn.Module:
    """A raw conditional network whose output depends on every input: LabelMLP for points, a tiny
    U-Net (zero-initialised layers switched on) for images; float64."""
    torch.manual_seed(0)
    net = LabelMLP(shape[0], n_classes) if len(shape) == 1 else _switch_on(_tiny(shape, n_classes=n_classes))
    return net.double()


SHAPES = [(2,), (1, 8, 8)]


def _inputs(shape, n=4):
    g = gen(0)
    return torch.randn(n, *shape, generator=g, dtype=F64), 0.05 + 0.9 * torch.rand(n, generator=g, dtype=F64)


# ----------------------------------------------------------------------------- parameterizations
def score_from(wrapper, sde: sd.SDE, x: torch.Tensor, t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """What each parameterization makes of the raw output ``out``: the score itself, ``-out / s``
    (eps) or ``-(x - m out) / s^2`` (x0)."""
    m, s = (v.reshape(-1, *[1] * (x.dim() - 1)) for v in sde.kernel(t))
    if wrapper is sd.ScoreParameterization:
        return out
    return -out / s if wrapper is sd.EpsilonParameterization else -(x - m * out) / s**2


@pytest.mark.parametrize("shape", SHAPES, ids=["points", "images"])
@pytest.mark.parametrize("wrapper", PARAMETERIZATIONS)
def test_parameterizations_pass_labels_through_and_default_to_the_null_label(wrapper, shape):
    sde = sd.VESDE()
    net = conditional_net(shape).eval()
    model = wrapper(net, sde)
    x, t = _inputs(shape)
    y = torch.tensor([0, 1, 2, 3])  # 3 is the null label
    assert model.n_classes == 3
    with torch.no_grad():
        assert torch.equal(model(x, t, y), score_from(wrapper, sde, x, t, net(x, t, y)))
        assert torch.equal(model(x, t), score_from(wrapper, sde, x, t, net(x, t, torch.full((4,), 3))))  # no labels: null
        zeros, ones = torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long)
        assert not torch.isclose(model(x, t, zeros), model(x, t, ones)).all()


@pytest.mark.parametrize("shape", SHAPES, ids=["points", "images"])
@pytest.mark.parametrize("wrapper", PARAMETERIZATIONS)
def test_unconditional_networks_are_called_without_labels(wrapper, shape):
    sde = sd.VPSDE()
    torch.manual_seed(0)
    net = (sd.TimeMLP(shape, hidden_dim=8, n_layers=1) if len(shape) == 1 else _switch_on(_tiny(shape))).double().eval()
    model = wrapper(net, sde)
    x, t = _inputs(shape)
    assert model.n_classes is None
    with torch.no_grad():
        expected = score_from(wrapper, sde, x, t, net(x, t))
        assert torch.equal(model(x, t), expected) and torch.equal(model(x, t, None), expected)
    if len(shape) == 3:
        with pytest.raises(ValueError, match="n_classes=None"):
            model(x, t, torch.zeros(4, dtype=torch.long))


# -------------------------------------------------------------------------------------- guidance
@pytest.mark.parametrize("shape", SHAPES, ids=["points", "images"])
def test_guidance_zero_is_the_conditional_score_and_w_follows_the_formula(shape):
    model = sd.EpsilonParameterization(conditional_net(shape), sd.VPSDE()).eval()
    x, t = _inputs(shape)
    y = torch.tensor([2, 0, 1, 0])
    null = torch.full((4,), 3)
    with torch.no_grad():
        assert torch.equal(S.GuidedScore(model, y, 0.0)(x, t), model(x, t, y))
        for w in (0.5, 3.0):
            expected = (1 + w) * model(x, t, y) - w * model(x, t, null)
            # one call on the doubled batch: float64 round-off of a different batch layout only
            torch.testing.assert_close(S.GuidedScore(model, y, w)(x, t), expected, rtol=1e-10, atol=1e-10)
        # one int label serves any batch size; a scalar time is broadcast
        assert torch.equal(S.GuidedScore(model, 1, 2.0)(x[:3], 0.5), S.GuidedScore(model, torch.ones(3, dtype=torch.long), 2.0)(x[:3], torch.full((3,), 0.5, dtype=F64)))


@pytest.mark.parametrize(
    "model, labels, w, message",
    [
        ("conditional", torch.tensor([0, 1]), -1.0, "must be a number >= 0"),
        ("conditional", torch.tensor([0, 1]), float("nan"), "must be a number >= 0"),
        ("conditional", torch.tensor([0, 1]), True, "must be a number >= 0"),
        ("conditional", torch.tensor([0, 4]), 1.0, r"0..3 \(3 is the null label\)"),
        ("conditional", torch.tensor([0.0, 1.0]), 1.0, "int64"),
        ("conditional", torch.zeros(2, 2, dtype=torch.long), 1.0, "shape"),
        ("unconditional", 0, 1.0, "class-conditional model with an integer n_classes"),
    ],
)
def test_guidance_rejects_bad_arguments(model, labels, w, message):
    net = conditional_net((2,)) if model == "conditional" else sd.TimeMLP((2,), hidden_dim=4, n_layers=1)
    with pytest.raises(ValueError, match=message):
        S.GuidedScore(sd.ScoreParameterization(net, sd.VPSDE()), labels, w)


def test_guidance_refuses_a_batch_of_another_size():
    guided = S.GuidedScore(sd.ScoreParameterization(conditional_net((2,)), sd.VPSDE()), torch.tensor([0, 1, 2]), 1.0)
    with pytest.raises(ValueError, match="holds 3 labels but got a batch of 4"):
        guided(torch.zeros(4, 2, dtype=F64), torch.ones(4, dtype=F64))


class ClassGaussians(nn.Module):
    """Exact class-conditional scores of a Gaussian mixture: class ``k`` is component ``k``, the null
    label the whole mixture (what a perfectly trained model with label dropout learns)."""

    def __init__(self, dist: sd.GaussianMixture, sde: sd.SDE):
        super().__init__()
        self.n_classes, self.sde = dist.n_components, sde
        self.classes = [sd.GaussianMixture([1.0], dist.means[k : k + 1], dist.covs[k : k + 1], dist.event_shape) for k in range(self.n_classes)]
        self.dist = dist

    def forward(self, x, t, y=None):
        y = torch.full((x.shape[0],), self.n_classes) if y is None else y
        scores = torch.stack([c.score(x, t, self.sde) for c in self.classes] + [self.dist.score(x, t, self.sde)])
        return scores[y, torch.arange(x.shape[0])]


@pytest.mark.parametrize("event_shape", [None, pytest.param((1, 8, 8), marks=pytest.mark.slow)], ids=["points", "images"])
def test_guided_scores_drive_any_sampler_to_the_chosen_classes(event_shape):
    """With exact class scores and w = 0 every class's samples follow that class's Gaussian
    (chi-square at p = 1e-6 on 1000 samples per class for points, 500 for images; DPM-Solver++ at 50
    steps is far more accurate than that resolves, see test_cli_sample). With w = 2 the samples of
    class 0 move away from the other classes: their mean projection on mu_0 - mu_k grows for every k."""
    dim = 2 if event_shape is None else 64
    dist, sde = mixture(dim, n_components=3, seed=2, event_shape=event_shape), sd.VPSDE()
    model, n = ClassGaussians(dist, sde), 3000 if event_shape is None else 1500
    labels = torch.arange(n) % 3
    ts = sd.log_snr_time_grid(sde, 50, 1e-3, dtype=F64)
    x_T = sde.prior_sample((n, *dist.event_shape), generator=gen(0), dtype=F64)
    out = sd.dpm_solver_pp(sde, S.GuidedScore(model, labels, 0.0), x_T, ts)
    m, s = sde.kernel(torch.tensor(1e-3, dtype=F64))
    for k in range(3):  # the law at eps: N(m mu_k, m^2 Sigma_k + s^2 I)
        assert_gaussian(out.samples[labels == k], m * dist.means[k], m**2 * dist.covs[k] + s**2 * torch.eye(dim, dtype=F64))
    guided = sd.dpm_solver_pp(sde, S.GuidedScore(model, labels, 2.0), x_T, ts).samples[labels == 0].reshape(-1, dim)
    plain = out.samples[labels == 0].reshape(-1, dim)
    for k in (1, 2):
        away = dist.means[0] - dist.means[k]
        assert (guided @ away).mean() > (plain @ away).mean()


# ------------------------------------------------------------------------------ label dropout
def _labelled(shape, n=256):
    """Data whose first value is the row's label, so a batch reveals which labels it should carry."""
    labels = torch.arange(n) % 3
    x = torch.randn(n, *shape, generator=gen(0))
    x.reshape(n, -1)[:, 0] = labels.float()
    return x, labels


def _conditional_trainer(tmp_path, shape, *, steps=30, resume=False, label_dropout=0.1):
    sde = sd.VPSDE()
    torch.manual_seed(123)
    net = LabelMLP(shape[0]) if len(shape) == 1 else _tiny(shape, n_classes=3)
    options = sd.TrainOptions(steps=steps, batch_size=32, lr=1e-2, warmup_steps=5, checkpoint_every=10, log_every=5,
                              progress=False, resume=resume, label_dropout=label_dropout)  # fmt: skip
    data, labels = _labelled(shape)
    return sd.Trainer(sd.EpsilonParameterization(net, sde), sde, data, options, run_dir=tmp_path, labels=labels)


class RecordingMLP(LabelMLP):
    """LabelMLP that keeps every label batch it is called with."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[torch.Tensor] = []

    def forward(self, x, t, y=None):
        self.seen.append(y)
        return super().forward(x, t, y)


@pytest.mark.parametrize("p", [0.0, 0.25])
def test_label_dropout_replaces_labels_by_the_null_label_at_rate_p(tmp_path, p):
    """6400 labels (200 steps of 32): the null count is binomial, standard error
    sqrt(p (1 - p) / 6400) = 0.0054 at p = 0.25; 5 of those. Every label that is kept is its row's."""
    rows = []

    def recording_loss(score_fn, sde, x0, generator=None):
        rows.append(x0[:, 0].long())  # the row's label (see _labelled)
        return sd.denoising_score_matching(score_fn, sde, x0, generator=generator)

    sde = sd.VPSDE()
    net = RecordingMLP()
    options = sd.TrainOptions(steps=200, batch_size=32, warmup_steps=0, progress=False, label_dropout=p)
    data, labels = _labelled((2,))
    sd.Trainer(sd.EpsilonParameterization(net, sde), sde, data, options, loss_fn=recording_loss, labels=labels).fit()
    y, rows = torch.cat(net.seen), torch.cat(rows)
    assert y.shape == rows.shape == (6400,) and y.dtype == torch.long
    dropped = y == 3
    assert abs(dropped.double().mean().item() - p) < 5 * (p * (1 - p) / 6400) ** 0.5 + 1e-12
    assert torch.equal(y[~dropped], rows[~dropped])


@pytest.mark.parametrize("shape", [SHAPES[0], pytest.param(SHAPES[1], marks=pytest.mark.slow)], ids=["points", "images"])
def test_resume_with_labels_equals_an_uninterrupted_run(tmp_path, shape):
    full = _conditional_trainer(tmp_path / "full", shape)
    full.fit()
    crashed = _conditional_trainer(tmp_path / "crash", shape)
    crashed.on_step.append(_crash_at(25))
    with pytest.raises(_Crash):
        crashed.fit()
    assert load_checkpoint(tmp_path / "crash" / "checkpoints" / "last.pt")["step"] == 20
    resumed = _conditional_trainer(tmp_path / "crash", shape, resume=True)
    resumed.fit()
    _assert_same_state(full.state(), resumed.state())
    # the labels reach the network: another dropout rate trains other weights
    other = _conditional_trainer(tmp_path / "other", shape, label_dropout=0.5)
    other.fit()
    assert any(not torch.equal(a, b) for a, b in zip(other.model.parameters(), full.model.parameters()))


def test_labels_are_validated_against_the_data_and_the_model(tmp_path):
    sde, data = sd.VPSDE(), torch.randn(10, 2)
    options = sd.TrainOptions(progress=False)
    conditional = sd.EpsilonParameterization(LabelMLP(2, n_classes=3), sde)
    cases = [
        (sd.EpsilonParameterization(sd.TimeMLP((2,), hidden_dim=4, n_layers=1), sde), torch.zeros(10, dtype=torch.long), "not class-conditional"),
        (conditional, torch.zeros(9, dtype=torch.long), r"shape \(10,\), one per training sample"),
        (conditional, torch.zeros(10), "int64"),
        (conditional, torch.full((10,), 3), r"0..2 for a model with n_classes=3 \(label 3 is its null label\)"),
    ]
    for model, labels, message in cases:
        with pytest.raises(ValueError, match=message):
            sd.Trainer(model, sde, data, options, labels=labels)


@pytest.mark.parametrize("value", [-0.1, 1.0, True, "0.1"])
def test_bad_label_dropout_is_rejected(value):
    with pytest.raises(ValueError, match=r"train.label_dropout must lie in \[0, 1\)"):
        sd.TrainOptions(label_dropout=value)


# ------------------------------------------------------------------------ end-of-run class grid
def test_the_class_grid_puts_one_class_on_each_row():
    # image_grid tiles N images ceil(sqrt(N)) to a row; the grid shows min(n, K^2) of them
    assert torch.equal(_grid_labels(100, 10).reshape(10, 10), torch.arange(10)[:, None].expand(10, 10))
    assert torch.equal(_grid_labels(250, 10)[:100].reshape(10, 10), torch.arange(10)[:, None].expand(10, 10))
    assert torch.equal(_grid_labels(20, 10), torch.arange(20) // 5)  # 4 rows of 5: classes 0..3
    assert torch.equal(_grid_labels(16, 2)[:4], torch.tensor([0, 0, 1, 1]))  # 2 x 2 grid, then cycling


# ---------------------------------------------------------------------------------- configs
def _compose(*overrides):
    return train_config("device=cpu", *overrides)


def test_the_digits_experiment_builds_a_class_conditional_run():
    cfg = _compose("experiment=digits")
    exp = build_experiment(cfg)
    assert exp.score_model.n_classes == exp.data.n_classes == 10 and exp.options.label_dropout == 0.1
    assert exp.data.data_shape == (1, 8, 8) and cfg.guidance == 1.0 and cfg.n_samples == 100
    assert torch.equal(_train_labels(exp), exp.data.train_labels)
    score = S.GuidedScore(exp.score_model, 3, _guidance(cfg, exp.score_model))
    assert score(exp.data.test[:2], torch.rand(2)).shape == (2, 1, 8, 8)
    # a group given on the command line wins over the experiment's choice
    assert _compose("experiment=digits", "sampler=ddim").sampler.fn._target_.endswith("DDIMStep")


def test_conditional_training_needs_labelled_data_and_enough_classes(tmp_path):
    with pytest.raises(ConfigError, match="has 10 classes but model.net.n_classes=5; set model.net.n_classes=10"):
        _train_labels(build_experiment(_compose("experiment=digits", "model.net.n_classes=5")))
    images = torch.randint(0, 256, (20, 8, 8), generator=gen(0)).to(torch.uint8).numpy()
    np.savez(tmp_path / "x.npz", x=images)
    exp = build_experiment(_compose("experiment=digits", "data=npz_images", f"data.path={tmp_path / 'x.npz'}"))
    with pytest.raises(ConfigError, match="class-conditional network but data .* has no labels"):
        _train_labels(exp)
    unconditional = build_experiment(_compose("model=unet", "data=digits"))
    assert _train_labels(unconditional) is None  # labelled data, unconditional network: labels unused
    with pytest.raises(ConfigError, match="guidance=1.0 needs a class-conditional model"):
        _guidance(_compose("model=unet", "data=digits", "guidance=1"), unconditional.score_model)
    with pytest.raises(ConfigError, match="guidance: guidance weight w must be a number >= 0"):
        _guidance(_compose("experiment=digits", "guidance=-2"), exp.score_model)
