"""Classifier guidance against exact answers (Dhariwal & Nichol 2021, written for scores).

The oracle is a Gaussian mixture whose components are the classes: its noised marginal
``p_t = sum_k w_k N(m mu_k, m^2 Sigma_k + s^2 I)`` gives the exact noisy-data classifier
``log p_t(y | x)`` (the log responsibility of component ``y``), and by Bayes' rule
``grad log p_t(y | x) = grad log p_t(x | y) - grad log p_t(x)``. So
``score + 1 * grad log p_t(y | x)`` is the exact score of component ``y``'s marginal, and any correct
sampler driven by it must draw ``N(m(eps) mu_y, m^2 Sigma_y + s^2 I)``.

Covered: the exact classifier and its gradient; every sampler family driven to the class; the
``ClassifierGuidedScore`` wrapper (scale 0 and 2, labels, checks); combination with classifier-free
guidance; a learned classifier (``TimeClassifierMLP`` trained by ``classifier_loss`` through the
Trainer) approaching the exact gradient and the Bayes accuracy; shapes and checks of the classifiers.
"""

from __future__ import annotations

import math

import pytest
import torch
from analytic import core_sdes, mixture
from torch import nn

import sde_diffusion as sd

F64 = torch.float64
EPS = 1e-3


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def x_grad(log_prob, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``grad_x sum_b log_prob(x, t, y)_b`` by autograd (the per-sample gradient: rows are independent)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(log_prob(x, t, y).sum(), x)
    return g


def component(dist: sd.GaussianMixture, k: int) -> sd.GaussianMixture:
    """Component ``k`` of ``dist`` alone, as a one-component mixture (its exact marginal score)."""
    return sd.GaussianMixture([1.0], dist.means[k : k + 1], dist.covs[k : k + 1])


def noised_points(dist: sd.GaussianMixture, sde: sd.SDE, t: float, n: int, seed: int) -> torch.Tensor:
    """``n`` draws of ``p_t`` plus ``n`` wider points around them (so posteriors are not all ~0 or ~1)."""
    g = gen(seed)
    x0 = dist.sample(n, generator=g, dtype=F64)
    xt = sde.perturb(x0, torch.full((n,), t, dtype=F64), generator=g)[0]
    wide = xt.mean(0) + 1.5 * xt.std(0) * torch.randn(n, dist.dim, generator=g, dtype=F64)
    return torch.cat([xt, wide])


class LinearSoftmaxClassifier(nn.Module):
    """``logits = x W^T + t c`` (float64): ``grad_x log softmax_y = W_y - sum_k p_k W_k`` in closed form."""

    def __init__(self, dim: int = 2, n_classes: int = 3, seed: int = 0):
        super().__init__()
        g = gen(seed)
        self.n_classes = n_classes
        self.W = nn.Parameter(torch.randn(n_classes, dim, generator=g, dtype=F64))
        self.c = nn.Parameter(torch.randn(n_classes, generator=g, dtype=F64))
        self.calls = 0

    def logits(self, x, t):
        return x @ self.W.T + t[:, None] * self.c

    def forward(self, x, t, y):
        self.calls += 1
        return torch.log_softmax(self.logits(x, t), dim=1).gather(1, y[:, None])[:, 0]

    def exact_gradient(self, x, t, y):
        with torch.no_grad():
            p = torch.softmax(self.logits(x, t), dim=1)
            return self.W[y] - p @ self.W


class RaisingClassifier:
    """A classifier that must never be called."""

    n_classes = 3

    def __call__(self, x, t, y):
        raise AssertionError("the classifier was called")


def affine_score(x, t):
    """A plain score ``-(x - 1) / (1 + t)`` (any deterministic function of ``x`` and ``t`` will do)."""
    t = torch.as_tensor(t, dtype=x.dtype).expand(x.shape[0])
    return -(x - 1.0) / (1.0 + t[:, None])


# ---------------------------------------------------------------------- 1. the exact classifier
@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
def test_exact_classifier_gradient_is_component_score_minus_mixture_score(sde_name):
    """Bayes: ``grad_x log p_t(y | x) = grad log p_t(x | y) - grad log p_t(x)``, the score of component
    ``y``'s noised marginal minus the mixture's, for every class at small, middle and late ``t``."""
    sde = core_sdes()[sde_name]
    dist = mixture(2)
    classifier = dist.classifier(sde)
    checked = 0.0
    for t_val in (0.02, 0.3, 0.8):
        x = noised_points(dist, sde, t_val, 32, seed=int(100 * t_val))
        t = torch.full((x.shape[0],), t_val, dtype=F64)
        mixture_score = dist.score(x, t, sde)
        for k in range(dist.n_components):
            y = torch.full((x.shape[0],), k, dtype=torch.long)
            grad = x_grad(classifier, x, t, y)
            expected = component(dist, k).score(x, t, sde) - mixture_score
            scale = 1.0 + expected.abs().max().item()
            torch.testing.assert_close(grad, expected, rtol=0, atol=1e-10 * scale)
            checked = max(checked, expected.abs().max().item())
    assert checked > 1.0  # the gradients compared are not all ~0


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
def test_exact_classifier_is_the_bayes_posterior(sde_name):
    """``exp log p_t(y | x) = w_y N(x; m mu_y, m^2 Sigma_y + s^2 I) / sum_k (same)``, computed here with
    ``torch.distributions``; the posteriors sum to one over the classes."""
    sde = core_sdes()[sde_name]
    dist = mixture(2)
    t_val = 0.25
    x = noised_points(dist, sde, t_val, 16, seed=3)
    t = torch.full((x.shape[0],), t_val, dtype=F64)
    m, s = sde.kernel(torch.tensor(t_val, dtype=F64))
    log_joint = torch.stack(
        [
            dist.weights[k].log()
            + torch.distributions.MultivariateNormal(m * dist.means[k], m**2 * dist.covs[k] + s**2 * torch.eye(2, dtype=F64)).log_prob(x)
            for k in range(dist.n_components)
        ],
        dim=1,
    )
    expected = log_joint - torch.logsumexp(log_joint, dim=1, keepdim=True)
    got = torch.stack([dist.classifier(sde)(x, t, torch.full((x.shape[0],), k, dtype=torch.long)) for k in range(dist.n_components)], dim=1)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(got.exp().sum(1), torch.ones(x.shape[0], dtype=F64), rtol=0, atol=1e-12)
    assert (got.exp().max(1).values < 0.99).any()  # some points are genuinely ambiguous


# ------------------------------------------------------------ 2. every sampler draws the class
def _pc(sde, score, x, ts, generator):
    return sd.predictor_corrector(
        sde, score, x, ts, predictor=sd.ReverseDiffusionPredictor(),
        corrector=sd.LangevinCorrector(snr=0.16, n_steps=1, norm="batch"), denoise=False, generator=generator,
    )  # fmt: skip


SAMPLERS = {
    # name: (sampler(sde, score, x, ts, generator), grid(sde) ending at EPS)
    "euler_maruyama": (
        lambda *a, generator: sd.euler_maruyama(*a, generator=generator),
        lambda sde: sd.uniform_time_grid(sde, 200, EPS, dtype=F64),
    ),
    "predictor_corrector": (_pc, lambda sde: sd.uniform_time_grid(sde, 100, EPS, dtype=F64)),
    "ddim": (lambda *a, generator: sd.ddim(*a, eta=0.0, generator=generator), lambda sde: sd.uniform_time_grid(sde, 100, EPS, dtype=F64)),
    "dpm_solver_pp": (
        lambda *a, generator: sd.dpm_solver_pp(*a, generator=generator),
        lambda sde: sd.log_snr_time_grid(sde, 30, EPS, dtype=F64),
    ),
    "heun": (lambda *a, generator: sd.heun(*a, generator=generator), lambda sde: sd.edm_time_grid(sde, 30, EPS, dtype=F64)),
    "probability_flow": (
        lambda *a, generator: sd.probability_flow_sampler(*a, generator=generator),
        lambda sde: sd.uniform_time_grid(sde, 1, EPS, dtype=F64),
    ),
}
CASES = [
    ("euler_maruyama", "vp", 0),
    ("euler_maruyama", "vp", 3),
    ("predictor_corrector", "vp", 0),
    ("ddim", "vp", 3),
    ("dpm_solver_pp", "vp", 0),
    ("dpm_solver_pp", "vp", 3),
    ("heun", "vp", 0),
    ("probability_flow", "vp", 3),
    ("dpm_solver_pp", "ve", 3),
    ("ddim", "ve", 0),
]


@pytest.mark.parametrize(("sampler", "sde_name", "label"), CASES, ids=[f"{a}-{b}-y{c}" for a, b, c in CASES])
def test_every_sampler_guided_by_the_exact_classifier_draws_the_class(sampler, sde_name, label):
    """``score + 1 * grad log p_t(y | x)`` is the exact score of component ``y``'s marginal, so 4000
    samples at ``eps`` have its mean ``m(eps) mu_y`` and covariance ``m^2 Sigma_y + s^2 I`` (within
    0.05; the measured errors are ~0.01, Monte Carlo and discretisation together). Component means
    are >= 1.1 apart and the mixture's mean is >= 0.8 from each, so a missing or mis-scaled guidance
    term fails."""
    sde = core_sdes()[sde_name]
    dist = mixture(2)
    run, grid = SAMPLERS[sampler]
    ts = grid(sde)
    assert abs(float(ts[-1]) - EPS) < 1e-12
    g = gen(10 + label)
    x = sde.prior_sample((4000, 2), generator=g, dtype=F64)
    score = sd.ClassifierGuidedScore(dist.score_fn(sde), dist.classifier(sde), label, 1.0)
    samples = run(sde, score, x, ts, generator=g).samples
    assert samples.shape == (4000, 2) and torch.isfinite(samples).all()
    m, s = sde.kernel(torch.tensor(EPS, dtype=F64))
    mean = m * dist.means[label]
    cov = m**2 * dist.covs[label] + s**2 * torch.eye(2, dtype=F64)
    assert (samples.mean(0) - mean).abs().max() < 0.05, (samples.mean(0), mean)
    assert (torch.cov(samples.T) - cov).abs().max() < 0.05, (torch.cov(samples.T), cov)


# --------------------------------------------------------------------- 3. the wrapper itself
def _inputs(n=8, seed=0):
    g = gen(seed)
    return torch.randn(n, 2, generator=g, dtype=F64), 0.05 + 0.9 * torch.rand(n, generator=g, dtype=F64)


def test_scale_zero_is_the_unguided_score_and_never_calls_the_classifier():
    """``w = 0``: the wrapped score itself, bitwise, and the classifier is never called."""
    x, t = _inputs()
    guided = sd.ClassifierGuidedScore(affine_score, RaisingClassifier(), 1, 0.0)
    assert torch.equal(guided(x, t), affine_score(x, t))
    dist, sde = mixture(2), sd.VPSDE()
    exact = sd.ClassifierGuidedScore(dist.score_fn(sde), RaisingClassifier(), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]), 0)
    assert torch.equal(exact(x, t), dist.score(x, t, sde))


def test_scale_two_adds_twice_the_classifier_gradient():
    """``w = 2``: ``score + 2 grad_x log p(y | x, t)``, against the closed-form gradient of a linear
    softmax classifier (``W_y - sum_k p_k W_k``) and against the exact mixture's Bayes gradient."""
    x, t = _inputs()
    clf = LinearSoftmaxClassifier()
    y = torch.tensor([0, 1, 2, 2, 1, 0, 1, 2])
    got = sd.ClassifierGuidedScore(affine_score, clf, y, 2.0)(x, t)
    torch.testing.assert_close(got, affine_score(x, t) + 2.0 * clf.exact_gradient(x, t, y), rtol=0, atol=1e-12)
    assert clf.calls == 1  # one classifier forward per evaluation

    dist, sde = mixture(2), sd.VPSDE()
    got = sd.ClassifierGuidedScore(dist.score_fn(sde), dist.classifier(sde), 2, 2.0)(x, t)
    mix = dist.score(x, t, sde)
    torch.testing.assert_close(got, mix + 2.0 * (component(dist, 2).score(x, t, sde) - mix), rtol=0, atol=1e-10)


def test_guidance_works_under_no_grad_and_returns_no_graph():
    """Samplers run without gradients: the wrapper takes its gradient inside anyway, with the same value."""
    x, t = _inputs()
    clf = LinearSoftmaxClassifier()
    guided = sd.ClassifierGuidedScore(affine_score, clf, 1, 1.5)
    with torch.no_grad():
        out = guided(x, t)
    assert not out.requires_grad
    torch.testing.assert_close(
        out, affine_score(x, t) + 1.5 * clf.exact_gradient(x, t, torch.ones(8, dtype=torch.long)), rtol=0, atol=1e-12
    )


def test_one_label_equals_the_same_label_per_sample_and_rows_are_independent():
    """An int label gives what a ``(B,)`` tensor of that label gives; with mixed labels each row is
    the row of the single-label result for its own label."""
    x, t = _inputs()
    clf = LinearSoftmaxClassifier()
    for k in range(3):
        single = sd.ClassifierGuidedScore(affine_score, clf, k, 1.0)(x, t)
        per_sample = sd.ClassifierGuidedScore(affine_score, clf, torch.full((8,), k, dtype=torch.long), 1.0)(x, t)
        torch.testing.assert_close(single, per_sample, rtol=0, atol=0)
        assert sd.ClassifierGuidedScore(affine_score, clf, torch.tensor(k), 1.0)(x, t).equal(single)
    y = torch.tensor([2, 0, 1, 1, 0, 2, 2, 0])
    mixed = sd.ClassifierGuidedScore(affine_score, clf, y, 1.0)(x, t)
    for k in range(3):
        single = sd.ClassifierGuidedScore(affine_score, clf, k, 1.0)(x, t)
        torch.testing.assert_close(mixed[y == k], single[y == k], rtol=0, atol=1e-14)
    # a scalar t is broadcast to the batch (for the classifier; affine_score broadcasts its own)
    torch.testing.assert_close(
        sd.ClassifierGuidedScore(affine_score, clf, 1, 1.0)(x, torch.tensor(0.4, dtype=F64)),
        sd.ClassifierGuidedScore(affine_score, clf, 1, 1.0)(x, torch.full((8,), 0.4, dtype=F64)),
        rtol=0, atol=0,
    )  # fmt: skip


def test_label_and_scale_checks():
    """Per-sample labels for a batch of another size, labels outside ``0 .. n_classes - 1`` of a
    classifier with ``n_classes``, float or 2-D labels and a negative scale raise ValueError."""
    x, t = _inputs()
    clf = LinearSoftmaxClassifier()  # n_classes = 3
    guided = sd.ClassifierGuidedScore(affine_score, clf, torch.zeros(5, dtype=torch.long), 1.0)
    with pytest.raises(ValueError, match="5 labels"):
        guided(x, t)
    for bad in (3, -1, torch.tensor([0, 3]), torch.tensor([-1, 0])):
        with pytest.raises(ValueError, match="labels"):
            sd.ClassifierGuidedScore(affine_score, clf, bad, 1.0)
    mlp = sd.TimeClassifierMLP([2], n_classes=4)
    sd.ClassifierGuidedScore(affine_score, mlp, 3, 1.0)  # the last class is fine
    with pytest.raises(ValueError, match="labels"):
        sd.ClassifierGuidedScore(affine_score, mlp, 4, 1.0)  # 4 would be a null label; a classifier has none
    for bad in (torch.tensor([0.0, 1.0]), torch.zeros(2, 2, dtype=torch.long), torch.tensor([0, 1], dtype=torch.int32)):
        with pytest.raises(ValueError, match="labels"):
            sd.ClassifierGuidedScore(affine_score, clf, bad, 1.0)
    for bad_scale in (-0.5, math.nan, math.inf):
        with pytest.raises(ValueError):
            sd.ClassifierGuidedScore(affine_score, clf, 0, bad_scale)


# ---------------------------------------------------- 4. combined with classifier-free guidance
class FakeConditional(nn.Module):
    """``model(x, t, y) = A_y x + c_y t`` with label ``3`` the null label (``n_classes = 3``)."""

    def __init__(self):
        super().__init__()
        g = gen(5)
        self.n_classes = 3
        self.A = nn.Parameter(torch.randn(4, 2, 2, generator=g, dtype=F64))
        self.c = nn.Parameter(torch.randn(4, 2, generator=g, dtype=F64))

    def forward(self, x, t, y):
        return torch.einsum("bij,bj->bi", self.A[y], x) + self.c[y] * t[:, None]


@pytest.mark.parametrize("w", [0.0, 1.5])
@pytest.mark.parametrize("per_sample", [False, True])
def test_classifier_guidance_on_top_of_classifier_free_guidance(w, per_sample):
    """``ClassifierGuidedScore(GuidedScore(model, y, w), classifier, y, s)`` is
    ``(1 + w) s(x, t, y) - w s(x, t, null) + s grad_x log p(y | x, t)``."""
    x, t = _inputs()
    model, clf, s = FakeConditional(), LinearSoftmaxClassifier(), 2.0
    y = torch.tensor([0, 1, 2, 2, 1, 0, 1, 2]) if per_sample else 1
    yy = y if per_sample else torch.full((8,), 1, dtype=torch.long)
    null = torch.full((8,), 3, dtype=torch.long)
    assert not torch.allclose(model(x, t, yy), model(x, t, null))  # the labels matter
    with torch.no_grad():
        expected = (1 + w) * model(x, t, yy) - w * model(x, t, null) + s * clf.exact_gradient(x, t, yy)
    got = sd.ClassifierGuidedScore(sd.GuidedScore(model, y, w), clf, y, s)(x, t)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


# ------------------------------------------------------------- 5. a learned classifier
def _separated_mixture() -> sd.GaussianMixture:
    return sd.GaussianMixture([0.3, 0.3, 0.4], torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]]), 0.4)


def test_learned_classifier_gradient_approaches_the_exact_one():
    """``TimeClassifierMLP`` trained by ``classifier_loss`` through the Trainer (labels = components,
    VP, 500 steps): on fresh noised points at ``t ~ U(0.05, 0.3)`` the normalised squared error of
    ``grad_x log p(y | x_t)`` for the true label, ``E||g_learned - g_exact||^2 / E||g_exact||^2``
    (a per-point relative error is ill-posed: the exact gradient vanishes where the posterior is ~1),
    drops from ~1 untrained to < 0.3, and the held-out accuracy at ``t = 0.05`` is > 0.97 and within
    0.02 of the Bayes accuracy of the exact posterior."""
    dist, sde = _separated_mixture(), sd.VPSDE()
    g = gen(0)
    x_train, y_train = dist.sample_with_components(4096, generator=g)
    x0, y = dist.sample_with_components(4000, generator=g, dtype=F64)
    t = 0.05 + 0.25 * torch.rand(4000, generator=g, dtype=F64)
    xt = sde.perturb(x0, t, generator=g)[0]
    exact = x_grad(dist.classifier(sde), xt, t, y)
    t_small = torch.full((4000,), 0.05, dtype=F64)
    x_small = sde.perturb(x0, t_small, generator=g)[0]
    bayes = torch.stack([dist.classifier(sde)(x_small, t_small, torch.full_like(y, k)) for k in range(3)], 1).argmax(1) == y
    bayes = bayes.double().mean().item()

    def nmse(model) -> float:
        learned = x_grad(lambda a, b, c: model(a.float(), b.float(), c), xt, t, y).double()
        return (((learned - exact) ** 2).sum(1).mean() / (exact**2).sum(1).mean()).item()

    def accuracy(model) -> float:
        with torch.no_grad():
            return (model(x_small.float(), t_small.float()).argmax(1) == y).double().mean().item()

    torch.manual_seed(0)
    clf = sd.TimeClassifierMLP([2], n_classes=3, hidden_dim=64)
    before = nmse(clf)
    options = sd.TrainOptions(steps=500, batch_size=256, lr=3e-3, warmup_steps=20, label_dropout=0.0, progress=False)
    trainer = sd.Trainer(clf, sde, x_train, options, loss_fn=sd.classifier_loss, labels=y_train, seed=0)
    trainer.fit()
    after = nmse(trainer.ema_model)
    acc = accuracy(trainer.ema_model)
    assert before > 0.9, before
    assert after < 0.3 and after < 0.3 * before, (before, after)
    assert bayes > 0.99, bayes
    assert acc > 0.97 and abs(acc - bayes) < 0.02, (acc, bayes)


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "mlp"])
def test_classifier_loss_is_minus_log_posterior_at_the_drawn_noise(exact):
    """``classifier_loss`` draws ``t = eps + (T - eps) u`` then ``x_t = m(t) x0 + s(t) z`` from its
    generator; redrawing both by hand from the same seed, the per-sample loss is ``-log p(y | x_t, t)``."""
    dist, sde, eps = mixture(2), sd.VPSDE(), 1e-5
    dtype = F64 if exact else torch.float32
    x0, y = dist.sample_with_components(64, generator=gen(1), dtype=dtype)
    if exact:
        log_p = dist.classifier(sde)
    else:
        torch.manual_seed(0)
        log_p = sd.TimeClassifierMLP([2], n_classes=4)
    loss = sd.classifier_loss(lambda x, t: log_p(x, t, y), sde, x0, eps=eps, generator=gen(7))
    g = gen(7)
    t = eps + (sde.T - eps) * torch.rand(64, generator=g, dtype=dtype)
    z = torch.randn(64, 2, generator=g, dtype=dtype)
    m, s = sde.kernel(t)
    xt = m[:, None] * x0 + s[:, None] * z
    with torch.no_grad():
        expected = -log_p(xt, t, y)
    assert loss.shape == (64,)
    tol = 1e-12 if exact else 1e-5
    torch.testing.assert_close(loss.detach(), expected, rtol=tol, atol=tol)
    assert (loss > 0).all() and loss.requires_grad == (not exact)
    with pytest.raises(ValueError, match="eps"):
        sd.classifier_loss(lambda x, t: log_p(x, t, y), sde, x0, eps=0.0)


def test_trainer_refuses_label_dropout_for_a_classifier():
    """A classifier has no null label: training it with label dropout > 0 raises ValueError naming label_dropout."""
    dist = _separated_mixture()
    x, y = dist.sample_with_components(64, generator=gen(0))
    options = sd.TrainOptions(steps=2, batch_size=32, warmup_steps=0, label_dropout=0.5, progress=False)
    trainer = sd.Trainer(sd.TimeClassifierMLP([2], n_classes=3), sd.VPSDE(), x, options, loss_fn=sd.classifier_loss, labels=y)
    with pytest.raises(ValueError, match="label_dropout"):
        trainer.fit()


# ----------------------------------------------------------------- 6. shapes and checks
def _classifiers():
    torch.manual_seed(0)
    return [
        (sd.UNetClassifier([1, 8, 8], n_classes=10, channels=8, channel_mult=[1, 2]), (1, 8, 8)),
        (sd.TimeClassifierMLP([2], n_classes=10), (2,)),
    ]


@pytest.mark.parametrize("index", [0, 1], ids=["unet", "mlp"])
def test_classifier_shapes_and_log_probs(index):
    """``forward(x, t)`` gives logits ``(B, 10)``; ``forward(x, t, y)`` gives ``(B,)``, the log-softmax of
    the logits at the labels; gradients reach ``x``. Labels out of range, the null label 10, wrong
    dtype or shape raise ValueError naming label_dropout; so does a wrong input shape (its own message)."""
    clf, shape = _classifiers()[index]
    g = gen(0)
    x = torch.randn(6, *shape, generator=g)
    t = torch.rand(6, generator=g)
    y = torch.tensor([0, 9, 3, 5, 1, 9])
    logits = clf(x, t)
    assert logits.shape == (6, 10) and torch.isfinite(logits).all()
    assert logits.std() > 0  # not a constant output
    log_p = clf(x, t, y)
    assert log_p.shape == (6,)
    torch.testing.assert_close(log_p, torch.log_softmax(logits, 1)[torch.arange(6), y], rtol=0, atol=1e-6)
    assert (log_p <= 0).all()
    assert clf.n_classes == 10 and isinstance(clf.n_classes, int)
    assert x_grad(clf, x, t, y).abs().sum() > 0
    torch.testing.assert_close(clf(x, torch.tensor(0.3)), clf(x, torch.full((6,), 0.3)), rtol=0, atol=1e-6)
    for bad in (
        torch.tensor([0, 1, 2, 3, 4, 10]),
        torch.tensor([0, 1, 2, 3, 4, -1]),
        torch.zeros(6, dtype=torch.int32),
        torch.zeros(5, dtype=torch.long),
    ):
        with pytest.raises(ValueError, match="label_dropout"):
            clf(x, t, bad)
    with pytest.raises(ValueError, match="shape"):
        clf(torch.randn(6, 3), t)


def test_classifier_loss_rejects_an_unlabelled_classifier():
    """``classifier_loss`` needs one log-probability per sample: a classifier called without labels
    returns ``(B, K)`` logits and the loss raises ValueError."""
    clf = sd.TimeClassifierMLP([2], n_classes=4)
    x0 = torch.randn(8, 2, generator=gen(0))
    with pytest.raises(ValueError, match="one log-probability per sample"):
        sd.classifier_loss(clf, sd.VPSDE(), x0, generator=gen(1))


def test_guidance_keeps_a_learned_variance_for_the_ddpm_sampler():
    """With variance=True the guided call returns the guided score and the model's own variance
    interpolation, so sampler=ddpm with learned variances takes classifier guidance; a DDPM chain with
    the exact classifier (scale 1) on the exact score lands on the class."""
    dist, sde = mixture(2), sd.DDPMSDE()
    exact = dist.score_fn(sde)

    def model(x, t, variance=False):
        return (exact(x, t), torch.full_like(x, 0.25)) if variance else exact(x, t)

    guided = sd.ClassifierGuidedScore(model, dist.classifier(sde), 2, 1.0)
    x = torch.randn(5, 2, dtype=torch.float64)
    t = torch.full((5,), 0.4, dtype=torch.float64)
    score, v = guided(x, t, variance=True)
    torch.testing.assert_close(score, guided(x, t), rtol=0, atol=0)
    assert torch.equal(v, torch.full_like(x, 0.25))
    x_T = sde.prior_sample((3000, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = sd.ddpm(sde, guided, x_T, sd.discrete_time_grid(sde, 200, dtype=torch.float64), variance="learned", generator=torch.Generator().manual_seed(1))
    assert (out.samples.mean(0) - dist.means[2]).abs().max() < 0.05
