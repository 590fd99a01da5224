"""Latent diffusion (Rombach et al. 2022; LSGM, Vahdat et al. 2021): the autoencoder's ELBO terms by
hand (reparameterised draw, closed-form KL, discretized decoder that sums to one); LSGM's bound in
closed form for a linear Gaussian autoencoder on Gaussian data with the exact latent score, the same
for every scale factor, above the data's entropy by exactly the two KL gaps; LDM's scale factor and
the codec's densities of scaled latents; class subsets and latent data sets; the apps end to end
(task=autoencoder, experiment=latent_digits, exact resume, sde-sample decoding, sde-eval's bound)."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from apps import run_app
from torch import nn
from torch.distributions import Normal

import sde_diffusion as sd
from sde_diffusion.app.config import build_sampler
from sde_diffusion.data.dataset import Dataset
from sde_diffusion.latents import LatentCodec, LatentScale, latent_dataset, latent_scale, load_codec
from sde_diffusion.likelihood.evaluate import evaluate_nll
from sde_diffusion.likelihood.latent import latent_bound
from sde_diffusion.losses.autoencoder import AutoencoderLoss, autoencoder_terms, decoder_log_prob
from sde_diffusion.models.autoencoder import Autoencoder
from sde_diffusion.samplers import draw_samples
from sde_diffusion.training import load_checkpoint

F64 = torch.float64
LOG2PI = math.log(2 * math.pi)


def _tiny_ae(data_shape=(1, 4, 4), channel_mult=(1, 2), seed=0, latent_channels=2, init_log_var=-1.0) -> Autoencoder:
    torch.manual_seed(seed)
    ae = Autoencoder(data_shape, channels=4, channel_mult=channel_mult, n_res_blocks=1, latent_channels=latent_channels,
                     init_log_var=init_log_var).double()  # fmt: skip
    with torch.no_grad():  # the residual branches' last convolutions start at zero: give them weights
        g = torch.Generator().manual_seed(seed + 100)
        for p in ae.parameters():
            if p.dim() > 1 and not p.any():
                p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=F64))
    return ae.eval()


# ------------------------------------------------------------------------- the autoencoder's ELBO
def test_autoencoder_terms_are_the_reparameterised_elbo_by_hand():
    ae = _tiny_ae()
    x = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=F64) * 2 - 1
    assert ae.latent_shape == (2, 2, 2) and ae.is_autoencoder
    terms = autoencoder_terms(ae, x, levels=None, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        mu, log_var = ae.encode(x)
        std = (0.5 * log_var).exp()
        eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(7), dtype=F64)  # the same draw
        z = mu + std * eps
        q = Normal(mu, std)
        kl = torch.distributions.kl_divergence(q, Normal(torch.zeros_like(mu), torch.ones_like(std))).flatten(1).sum(1)
        log_q = q.log_prob(z).flatten(1).sum(1)
        mean, dec_log_var = ae.decode(z)
        rec = -Normal(mean, (0.5 * dec_log_var).exp()).log_prob(x).flatten(1).sum(1)
    assert mu.shape == log_var.shape == (5, 2, 2, 2) and float(log_var.std()) > 1e-3  # a non-trivial posterior
    assert mean.shape == x.shape and torch.equal(dec_log_var, torch.full_like(x, -1.0))
    for key, want in (("z", z), ("kl", kl), ("log_q", log_q), ("reconstruction", rec)):
        assert terms[key].shape == want.shape, key
        torch.testing.assert_close(terms[key], want, rtol=1e-12, atol=1e-12, msg=key)
    # another generator state: another draw, the same closed-form KL
    other = autoencoder_terms(ae, x, levels=None, generator=torch.Generator().manual_seed(8))
    assert not torch.allclose(other["z"], terms["z"])
    torch.testing.assert_close(other["kl"], kl, rtol=1e-12, atol=1e-12)


def test_closed_form_kl_is_the_monte_carlo_average_of_log_q_minus_log_prior():
    """KL(q || N(0, I)) = E_q[log q(z|x) - log N(z; 0, I)]: the library's own log_q and z over many
    draws (one x repeated) average to its closed-form KL within the Monte-Carlo standard error."""
    ae = _tiny_ae()
    x = (torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(2), dtype=F64) * 2 - 1).expand(20000, 1, 4, 4)
    with torch.no_grad():
        terms = autoencoder_terms(ae, x, levels=None, generator=torch.Generator().manual_seed(0))
    log_prior = Normal(0.0, 1.0).log_prob(terms["z"]).flatten(1).sum(1)
    sample = terms["log_q"] - log_prior
    se = float(sample.std()) / math.sqrt(sample.numel())
    kl = float(terms["kl"][0])
    assert torch.equal(terms["kl"], terms["kl"][:1].expand(20000))
    assert kl > 0.05 and se < 0.05 * kl
    assert abs(float(sample.mean()) - kl) < 4.5 * se, (float(sample.mean()), kl, se)


@pytest.mark.parametrize("levels", [2, 5])
def test_discretized_decoder_probabilities_sum_to_one_over_all_images(levels):
    """Images of 2 pixels on K levels: the K^2 decoder probabilities P(x | z) sum to 1 for each z,
    so the reconstruction term is -log P of discrete data; with levels=None it is the density."""
    ae = _tiny_ae(data_shape=(1, 1, 2), channel_mult=(1,), latent_channels=1, init_log_var=-0.5)
    grid = torch.tensor([-1 + 2 * k / levels for k in range(levels)], dtype=F64)  # the data's levels on [-1, 1)
    images = torch.tensor(list(itertools.product(grid.tolist(), repeat=2)), dtype=F64).reshape(-1, 1, 1, 2)
    with torch.no_grad():
        for seed in range(3):
            z = 2 * torch.randn(1, 1, 1, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)
            logp = decoder_log_prob(ae, images, z.expand(images.shape[0], 1, 1, 2), levels)
            assert logp.shape == (levels**2,) and bool((logp < 0).all())
            torch.testing.assert_close(logp.exp().sum(), torch.tensor(1.0, dtype=F64), rtol=0, atol=1e-12)
            # per pixel: the marginal of the first pixel sums to one too (sum over the second)
            first = logp.exp().reshape(levels, levels).sum(1)
            torch.testing.assert_close(first.sum(), torch.tensor(1.0, dtype=F64), rtol=0, atol=1e-12)
        # autoencoder_terms' reconstruction is minus the decoder's log-probability at its own draw
        terms = autoencoder_terms(ae, images, levels=levels, generator=torch.Generator().manual_seed(4))
        torch.testing.assert_close(terms["reconstruction"], -decoder_log_prob(ae, images, terms["z"], levels), rtol=0, atol=0)
        assert bool((terms["reconstruction"] > 0).all())
        dens = autoencoder_terms(ae, images, levels=None, generator=torch.Generator().manual_seed(4))
        assert torch.equal(dens["z"], terms["z"])
        mean, log_var = ae.decode(terms["z"])
        want = -Normal(mean, (0.5 * log_var).exp()).log_prob(images).flatten(1).sum(1)
        torch.testing.assert_close(dens["reconstruction"], want, rtol=1e-12, atol=1e-12)


def test_autoencoder_loss_is_reconstruction_plus_weighted_kl_per_dimension():
    ae = _tiny_ae()
    x = torch.tensor([-1 + 2 * k / 17 for k in range(17)], dtype=F64)[
        torch.randint(17, (6, 16), generator=torch.Generator().manual_seed(0))
    ]
    x = x.reshape(6, 1, 4, 4)
    for w, levels in ((0.01, 17), (1.0, None), (0.0, 17)):
        loss = AutoencoderLoss(kl_weight=w, levels=levels)
        got = loss(ae, sd.VPSDE(), x, generator=torch.Generator().manual_seed(3))
        terms = autoencoder_terms(ae, x, levels=levels, generator=torch.Generator().manual_seed(3))
        assert got.shape == (6,)
        torch.testing.assert_close(got, (terms["reconstruction"] + w * terms["kl"]) / 16, rtol=1e-14, atol=0)
    assert repr(AutoencoderLoss(0.01, 17)) == "AutoencoderLoss(kl_weight=0.01, levels=17)"
    with pytest.raises(ValueError, match="kl_weight"):
        AutoencoderLoss(kl_weight=-1.0)
    with pytest.raises(ValueError, match="levels"):
        AutoencoderLoss(levels=1)


def test_autoencoder_shapes_and_refusals():
    ae = _tiny_ae()
    with pytest.raises(ValueError, match="built for images"):
        ae.encode(torch.zeros(2, 1, 8, 8, dtype=F64))
    with pytest.raises(ValueError, match="decodes latents"):
        ae.decode(torch.zeros(2, 2, 4, 4, dtype=F64))
    with pytest.raises(ValueError, match="divisible by 2"):
        Autoencoder((1, 5, 4), channels=4)
    with pytest.raises(ValueError, match="latent_channels"):
        Autoencoder((1, 4, 4), channels=4, latent_channels=0)
    x = torch.zeros(3, 1, 4, 4, dtype=F64)
    with torch.no_grad():
        torch.testing.assert_close(ae(x), ae.decode(ae.encode(x)[0])[0])
    big = Autoencoder((3, 8, 8), channels=4, channel_mult=(1, 2, 2))
    assert big.latent_shape == (2, 2, 2)
    with torch.no_grad():
        mu, log_var = big.encode(torch.zeros(2, 3, 8, 8))
        assert mu.shape == log_var.shape == (2, 2, 2, 2) and big.decode(mu)[0].shape == (2, 3, 8, 8)


# ---------------------------------------------------------- LSGM's bound in closed form (Gaussian)
DX, DZ = 4, 3  # data (1, 2, 2) and latents (3,)
LATENT_SHAPE = (DZ,)


def _linear_gaussian_setup():
    g = torch.Generator().manual_seed(11)
    b = torch.randn(DX, DX, generator=g, dtype=F64) / 2
    sigma_x = 0.4 * (b @ b.T) + 0.1 * torch.eye(DX, dtype=F64)  # the data's covariance
    E = torch.randn(DZ, DX, generator=g, dtype=F64) / 2  # encoder mean E x
    s_q = torch.tensor([0.3, 0.5, 0.4], dtype=F64)  # encoder std
    Dm = torch.randn(DX, DZ, generator=g, dtype=F64) / 2  # decoder mean D z
    return sigma_x, E, s_q, Dm, 0.6  # decoder std


SIGMA_X, E_ENC, S_Q, D_DEC, SIG_DEC = _linear_gaussian_setup()
SIGMA_Z = E_ENC @ SIGMA_X @ E_ENC.T + torch.diag(S_Q**2)  # the aggregate posterior of z


class LinearGaussianAE(nn.Module):
    """q(z | x) = N(E x, diag s_q^2), p(x | z) = N(D z, sigma^2 I), on (1, 2, 2) images and (3,) latents."""

    def __init__(self):
        super().__init__()
        self.latent_shape = LATENT_SHAPE

    def encode(self, x):
        mu = x.flatten(1) @ E_ENC.T
        return mu, (2 * S_Q.log()).expand_as(mu)

    def decode(self, z):
        mean = (z.flatten(1) @ D_DEC.T).reshape(-1, 1, 2, 2)
        return mean, torch.full_like(mean, 2 * math.log(SIG_DEC))


def _logdet(a):
    return float(torch.linalg.slogdet(a)[1])


def _closed_form(c: float, sde, eps: float) -> dict:
    """E_x E_q of each term of the bound (nats) for x ~ N(0, Sigma_x), z_s = c z, and the prior the
    exact score transports: the marginal p_eps = N(0, m^2 c^2 Sigma_z + s^2 I) of the VP SDE."""
    eye_x, eye_z = torch.eye(DX, dtype=F64), torch.eye(DZ, dtype=F64)
    S = torch.diag(S_Q**2)
    resid = eye_x - D_DEC @ E_ENC
    sq = float(torch.trace(resid @ SIGMA_X @ resid.T) + torch.trace(D_DEC @ S @ D_DEC.T))
    rec = 0.5 * sq / SIG_DEC**2 + 0.5 * DX * (LOG2PI + 2 * math.log(SIG_DEC))
    log_q = -0.5 * DZ * (1 + LOG2PI) - float(S_Q.log().sum()) - DZ * math.log(c)
    m, s = (float(v) for v in sde.kernel(torch.tensor(eps, dtype=F64)))
    A = m**2 * c**2 * SIGMA_Z + s**2 * eye_z
    prior = 0.5 * float(torch.trace(torch.linalg.solve(A, c**2 * SIGMA_Z))) + 0.5 * (DZ * LOG2PI + _logdet(A))
    return {"reconstruction": rec, "log_q": log_q, "prior_nll": prior, "nll": rec + log_q + prior}


def _codec(c: float) -> LatentCodec:
    return LatentCodec(LinearGaussianAE(), LatentScale(c, LATENT_SHAPE), levels=None)


def _prior(c: float) -> sd.GaussianMixture:
    """The exact distribution of z_s = c z: N(0, c^2 Sigma_z) (a full covariance)."""
    return sd.GaussianMixture([1.0], torch.zeros(1, DZ, dtype=F64), (c**2 * SIGMA_Z)[None])


def _gaussian_data(n: int, seed: int) -> torch.Tensor:
    return sd.GaussianMixture([1.0], torch.zeros(1, DX, dtype=F64), SIGMA_X[None], event_shape=(1, 2, 2)).sample(
        n, generator=torch.Generator().manual_seed(seed), dtype=F64
    )


def test_the_closed_form_is_the_entropy_plus_both_kl_gaps():
    """The oracle itself (eps -> 0, z units): E[bound] = H(x) + KL(p_data || p_model)
    + E_x KL(q(z|x) || p_model(z|x)) for the linear Gaussian model p(z) = N(0, Sigma_z),
    p(x|z) = N(D z, sigma^2 I); and both gaps are clearly positive here."""
    sde = sd.VPSDE()
    bound = _closed_form(1.0, sde, 0.0)["nll"]
    entropy = 0.5 * DX * (1 + LOG2PI) + 0.5 * _logdet(SIGMA_X)
    model_cov = D_DEC @ SIGMA_Z @ D_DEC.T + SIG_DEC**2 * torch.eye(DX, dtype=F64)
    kl_marginal = 0.5 * (float(torch.trace(torch.linalg.solve(model_cov, SIGMA_X))) - DX + _logdet(model_cov) - _logdet(SIGMA_X))
    P = torch.linalg.inv(SIGMA_Z) + D_DEC.T @ D_DEC / SIG_DEC**2  # posterior precision of p_model(z | x)
    M = torch.linalg.solve(P, D_DEC.T) / SIG_DEC**2  # posterior mean M x
    diff = E_ENC - M
    kl_post = 0.5 * (
        float(torch.trace(P @ torch.diag(S_Q**2)) + torch.trace(P @ diff @ SIGMA_X @ diff.T))
        - DZ
        - _logdet(P)
        - float((S_Q**2).log().sum())
    )
    assert kl_marginal > 0.3 and kl_post > 0.3, (kl_marginal, kl_post)
    assert bound == pytest.approx(entropy + kl_marginal + kl_post, rel=1e-12)
    # the scale factor cancels in the oracle too (up to the s(eps)^2 floor of p_eps)
    for c in (0.4, 2.5):
        assert _closed_form(c, sde, 0.0)["nll"] == pytest.approx(bound, rel=1e-12)
        assert _closed_form(c, sde, 1e-5)["nll"] == pytest.approx(bound, abs=1e-4)


def test_latent_bound_terms_per_point_are_the_gaussian_densities():
    """latent_bound's terms at each point, for the draw z_s its generator makes: -log N(x; D z, s^2 I),
    log N(z_s; c E x, c^2 S) and, with the true marginal at T as the ODE's prior, -log p_eps(z_s)
    of the exact score's Gaussian, to solver tolerance."""
    sde, eps, c = sd.VPSDE(), 1e-5, 2.5
    x = _gaussian_data(64, 5)
    codec, prior = _codec(c), _prior(c)
    terms, nfe = latent_bound(codec, sde, prior.score_fn(sde), x, generator=torch.Generator().manual_seed(3),
                              eps=eps, rtol=1e-8, atol=1e-8, divergence="exact",
                              prior_logp=lambda z: prior.log_prob(z, sde.T, sde))  # fmt: skip
    assert nfe > 10 and set(terms) == {"reconstruction", "log_q", "prior_nll", "nll"}
    z_s, _ = codec.encode(x, torch.Generator().manual_seed(3))  # the bound's draw: the generator's first
    z = z_s / c
    mu = x.flatten(1) @ E_ENC.T
    want_q = Normal(c * mu, c * S_Q).log_prob(z_s).sum(1)
    want_rec = -Normal(z @ D_DEC.T, SIG_DEC).log_prob(x.flatten(1)).sum(1)
    want_prior = -prior.log_prob(z_s, eps, sde)
    torch.testing.assert_close(terms["log_q"], want_q, rtol=0, atol=1e-12)
    torch.testing.assert_close(terms["reconstruction"], want_rec, rtol=0, atol=1e-12)
    torch.testing.assert_close(terms["prior_nll"], want_prior, rtol=0, atol=2e-6)
    torch.testing.assert_close(terms["nll"], terms["reconstruction"] + terms["log_q"] + terms["prior_nll"], rtol=0, atol=1e-13)


def test_evaluate_nll_latent_matches_the_closed_form_bound_for_any_scale_factor():
    """E_x[bound] by evaluate_nll(bound="latent") over 16000 Gaussian points agrees with the closed
    form within its standard error; c = 0.4 and c = 2.5 give the same mean; per point the two give
    the same bound to solver tolerance (the same draws, z_s = c z), while log q_s and -log p(z_s)
    each move by d log c; and the bound lies far above the data's exact NLL."""
    sde, eps = sd.VPSDE(), 1e-5
    x = _gaussian_data(16000, 6)

    def evaluate(c, n_points=None):
        return evaluate_nll(sde, _prior(c).score_fn(sde), x, bound="latent", codec=_codec(c), batch_size=4000, n_points=n_points,
                            rtol=1e-6, atol=1e-6, eps=eps, seed=0)  # fmt: skip

    out = evaluate(2.5)
    assert (out["bound"], out["dim"], out["n_points"], out["divergence"], out["bpd"]) == ("latent", DX, 16000, "exact", None)
    mean, se = out["nll_nats_per_dim"] * DX, out["nll_stderr"] * DX
    want = _closed_form(2.5, sde, eps)["nll"]
    assert 0 < se < 0.03, se  # 0.4 % of the bound
    assert abs(mean - want) < 4 * se + 1e-3, (mean, want, se)
    entropy = 0.5 * DX * (1 + LOG2PI) + 0.5 * _logdet(SIGMA_X)
    assert mean - entropy > 10 * se  # an upper bound on -log p(x), not the NLL itself
    # another scale factor, the same seed: the same mean bound (the same draws, scaled)
    small, large = evaluate(0.4, 4000), evaluate(2.5, 4000)
    assert small["nll_nats_per_dim"] * DX == pytest.approx(large["nll_nats_per_dim"] * DX, abs=2e-4)
    assert abs(small["nll_nats_per_dim"] * DX - _closed_form(0.4, sde, eps)["nll"]) < 4 * small["nll_stderr"] * DX + 1e-3

    # per point: the same bound for both scale factors, term by term shifted by d log c (with the
    # true marginal at T as the ODE's prior: N(0, I) misses it by ~1e-3 nats, differently for each c)
    small = x[:200]
    per = {
        c: latent_bound(_codec(c), sde, _prior(c).score_fn(sde), small, generator=torch.Generator().manual_seed(9),
                        eps=eps, rtol=1e-7, atol=1e-7, divergence="exact",
                        prior_logp=lambda z, c=c: _prior(c).log_prob(z, sde.T, sde))[0]
        for c in (0.4, 2.5)
    }  # fmt: skip
    shift = DZ * math.log(2.5 / 0.4)
    torch.testing.assert_close(per[0.4]["log_q"] - shift, per[2.5]["log_q"], rtol=0, atol=1e-10)
    torch.testing.assert_close(per[0.4]["reconstruction"], per[2.5]["reconstruction"], rtol=0, atol=1e-10)
    # p_eps adds s(eps)^2 = 1e-6 to the variances, relatively more for the smaller scale: up to ~2e-4 nats
    torch.testing.assert_close(per[0.4]["prior_nll"] + shift, per[2.5]["prior_nll"], rtol=0, atol=5e-4)
    torch.testing.assert_close(per[0.4]["nll"], per[2.5]["nll"], rtol=0, atol=5e-4)
    assert float((per[0.4]["nll"] - per[2.5]["nll"]).abs().mean()) < 1e-4


def test_evaluate_nll_latent_checks_its_arguments():
    sde, x = sd.VPSDE(), _gaussian_data(8, 0)
    score = _prior(1.0).score_fn(sde)
    with pytest.raises(ValueError, match="codec go together"):
        evaluate_nll(sde, score, x, bound="latent")
    with pytest.raises(ValueError, match="codec go together"):
        evaluate_nll(sde, score, x, bound="ode", codec=_codec(1.0))
    # the divergence is resolved for the latents' dimension (3 here, exact), not the images'
    out = evaluate_nll(sde, score, x, bound="latent", codec=_codec(1.0), rtol=1e-3, atol=1e-3)
    assert out["divergence"] == "exact"


# ------------------------------------------------------------------ scale factor and the codec
def test_latent_scale_is_one_over_the_std_of_one_seeded_draw_per_image():
    ae = _tiny_ae()
    train = torch.rand(40, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=F64) * 2 - 1
    scale = latent_scale(ae, train, seed=3, batch_size=16)
    assert isinstance(scale, LatentScale) and scale.latent_shape == (2, 2, 2)
    gen = torch.Generator().manual_seed(3)
    zs = []
    with torch.no_grad():
        for xb in train.split(16):
            mu, log_var = ae.encode(xb)
            zs.append(mu + (0.5 * log_var).exp() * torch.randn(mu.shape, generator=gen, dtype=F64))
    z = torch.cat(zs)
    assert scale.scale_factor == pytest.approx(1.0 / float(z.std()), rel=1e-12)
    assert float((scale.scale_factor * z).std()) == pytest.approx(1.0, rel=1e-12)
    assert latent_scale(ae, train, seed=4, batch_size=16).scale_factor != scale.scale_factor
    assert latent_scale(ae, train, seed=3, batch_size=16) == scale


def test_latent_scale_saves_and_loads(tmp_path):
    scale = LatentScale(0.8125, (2, 4, 4))
    path = scale.save(tmp_path)
    assert path.name == "latents.json" and json.loads(path.read_text()) == {"scale_factor": 0.8125, "latent_shape": [2, 4, 4]}
    assert LatentScale.load(tmp_path) == scale
    with pytest.raises(FileNotFoundError, match="task=autoencoder"):
        LatentScale.load(tmp_path / "nowhere")


def test_codec_encodes_scaled_latents_with_their_density_and_decodes():
    ae = _tiny_ae()
    c = 1.7
    codec = LatentCodec(ae, LatentScale(c, ae.latent_shape), levels=None)
    assert codec.dims == 8 and codec.latent_shape == (2, 2, 2)
    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=F64) * 2 - 1
    with torch.no_grad():
        z_s, log_q_s = codec.encode(x, torch.Generator().manual_seed(5))
        mu, log_var = ae.encode(x)
        std = (0.5 * log_var).exp()
        z = mu + std * torch.randn(mu.shape, generator=torch.Generator().manual_seed(5), dtype=F64)
        assert z_s.shape == (6, 2, 2, 2) and log_q_s.shape == (6,)
        torch.testing.assert_close(z_s, c * z, rtol=1e-14, atol=1e-14)
        # the density of the scaled latent: N(c mu, c^2 sigma^2) = log q(z) - d log c
        torch.testing.assert_close(log_q_s, Normal(c * mu, c * std).log_prob(z_s).flatten(1).sum(1), rtol=0, atol=1e-11)
        torch.testing.assert_close(log_q_s, Normal(mu, std).log_prob(z).flatten(1).sum(1) - 8 * math.log(c), rtol=0, atol=1e-11)
        # the same draw as autoencoder_terms makes from the same generator state
        terms = autoencoder_terms(ae, x, levels=None, generator=torch.Generator().manual_seed(5))
        torch.testing.assert_close(z_s / c, terms["z"], rtol=1e-14, atol=1e-14)
        torch.testing.assert_close(log_q_s, terms["log_q"] - 8 * math.log(c), rtol=0, atol=1e-11)
        # decode: the decoder's mean at z = z_s / c, an image
        img = codec.decode(z_s)
        assert img.shape == (6, 1, 4, 4)
        torch.testing.assert_close(img, ae.decode(z)[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(codec.log_p_x(x, z_s), decoder_log_prob(ae, x, z, None), rtol=1e-12, atol=1e-12)
    discrete = LatentCodec(ae, LatentScale(c, ae.latent_shape), levels=17)
    xd = (torch.randint(17, (6, 1, 4, 4), generator=torch.Generator().manual_seed(1)) * 2 / 17 - 1).to(F64)
    with torch.no_grad():
        torch.testing.assert_close(discrete.log_p_x(xd, z_s), decoder_log_prob(ae, xd, z, 17), rtol=1e-12, atol=1e-12)
        assert bool((discrete.log_p_x(xd, z_s) < 0).all())  # log-probabilities of discrete data


# ----------------------------------------------------------------------------- data sets
def test_class_subset_keeps_labels_and_draws_seeded_rows():
    digits = sd.data.digits_dataset(n_test=297, seed=0)
    few = sd.data.class_subset(digits, [9], per_class=5, seed=0)
    assert few.train.shape == (5, 1, 8, 8) and bool((few.train_labels == 9).all()) and few.n_classes == 10
    assert (few.levels, few.interval_width) == (digits.levels, digits.interval_width)
    nines = digits.train[digits.train_labels == 9]
    for row in few.train:  # each row is one of the nines, no repeats
        assert int((nines == row).flatten(1).all(1).sum()) >= 1
    assert len({tuple(r.flatten().tolist()) for r in few.train}) == 5
    assert torch.equal(few.test, digits.test[digits.test_labels == 9]) and bool((few.test_labels == 9).all())
    again, other = sd.data.class_subset(digits, [9], 5, seed=0), sd.data.class_subset(digits, [9], 5, seed=1)
    assert torch.equal(again.train, few.train) and not torch.equal(other.train, few.train)

    base = sd.data.class_subset(digits, list(range(9)), per_class=None)
    assert base.n_classes == 9 and not bool((base.train_labels == 9).any())
    assert base.train.shape[0] == int((digits.train_labels != 9).sum())
    assert torch.equal(base.train, digits.train[digits.train_labels != 9])  # all rows, in order
    assert torch.equal(base.train_labels, digits.train_labels[digits.train_labels != 9])
    two = sd.data.class_subset(digits, [3, 7], per_class=4)
    assert two.n_classes == 8 and sorted(two.train_labels.tolist()) == [3] * 4 + [7] * 4
    with pytest.raises(ValueError, match="labelled"):
        sd.data.class_subset(Dataset(torch.zeros(4, 2), torch.zeros(2, 2), "toy"), [0])
    with pytest.raises(ValueError, match="classes must be labels in 0..9"):
        sd.data.class_subset(digits, [10])
    with pytest.raises(ValueError, match="classes must be labels"):
        sd.data.class_subset(digits, [])
    with pytest.raises(ValueError, match="per_class"):
        sd.data.class_subset(digits, [1], per_class=0)


# ------------------------------------------------------------------------------------ the apps
TINY = ["train.batch_size=16", "progress=false", "threads=1", "device=cpu", "model.net.channels=8"]
TINY_AE = ["task=autoencoder", "data=digits", "train.steps=20", *TINY]
TINY_LATENT = ["experiment=latent_digits", "train.warmup_steps=2", "train.checkpoint_every=3", "n_samples=10",
               "sampler.grid.n_steps=4", "data.draws=1", *TINY]  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny autoencoder run, a 6-step latent run on it, and a latent run of 3 steps resumed to 6."""
    root = tmp_path_factory.mktemp("latent_apps")
    code, _, err = run_app("train", *TINY_AE, f"hydra.run.dir={root / 'ae'}", cwd=root)
    assert code == 0, err
    code, _, err = run_app(
        "train", *TINY_LATENT, f"autoencoder_dir={root / 'ae'}", "train.steps=6", f"hydra.run.dir={root / 'latent'}", cwd=root
    )
    assert code == 0, err
    code, _, err = run_app(
        "train", *TINY_LATENT, f"autoencoder_dir={root / 'ae'}", "train.steps=3", f"hydra.run.dir={root / 'resumed'}", cwd=root
    )
    assert code == 0, err
    code, out, err = run_app("train", f"hydra.run.dir={root / 'resumed'}", "train.resume=true", "train.steps=6", cwd=root)
    assert code == 0, err
    assert "resumed from step 3" in out, out
    return root


def test_autoencoder_run_reports_its_bound_and_scale_factor(runs):
    run = runs / "ae"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["task"] == "autoencoder" and summary["steps"] == 20 and summary["latent_shape"] == [2, 4, 4]
    assert (run / "recon.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    trained = sd.load_run(run, "cpu")
    ae, data = trained.score_model, trained.data
    assert getattr(ae, "is_autoencoder", False) and data.levels == 17
    # latents.json: latent_scale recomputed on the training images with the run's seed
    scale = LatentScale.load(run)
    with torch.no_grad():
        again = latent_scale(ae, data.train, seed=0)
    assert scale == again and summary["scale_factor"] == scale.scale_factor
    # the held-out VAE bound: (reconstruction + KL) / D over the test images, in bits/dim
    with torch.no_grad():
        terms = autoencoder_terms(ae, data.test, levels=17, generator=torch.Generator().manual_seed(0))
    per_dim = (terms["reconstruction"] + terms["kl"]).double() / 64
    assert summary["held_out_vae_bound_bpd"] == pytest.approx(float(per_dim.mean()) / math.log(2), rel=1e-6)
    assert summary["held_out_vae_bound_bpd_stderr"] == pytest.approx(float(per_dim.std()) / math.sqrt(297) / math.log(2), rel=1e-5)
    assert summary["held_out_kl_nats_per_dim"] == pytest.approx(float(terms["kl"].double().mean()) / 64, rel=1e-6)
    # a bound on -log P of 17-level data: more than 0 bits and (after 20 steps) less than the 64-bit
    # a decoder of log-variance -4 would pay for pixels far outside its bins
    assert 0 < summary["held_out_vae_bound_bpd"] < 64


@pytest.mark.slow
def test_latent_run_decodes_its_samples(runs):
    run = runs / "latent"
    saved = np.load(run / "samples.npz")
    assert saved["samples"].shape == (10, 1, 8, 8) and saved["samples_latent"].shape == (10, 2, 4, 4)
    codec, images = load_codec(runs / "ae", "cpu")
    with torch.no_grad():
        decoded = codec.decode(torch.from_numpy(saved["samples_latent"]))
    torch.testing.assert_close(torch.from_numpy(saved["samples_unclipped"]), decoded, rtol=1e-5, atol=1e-5)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["autoencoder_dir"] == str(runs / "ae") and summary["n_samples"] == 10
    assert "latent_sliced_w2_vs_held_out" in summary
    # the range check is of the latents against the held-out latents, which the decoder's clipping would hide
    trained_latents = sd.load_run(run, "cpu").data.test
    expected = sd.sample_range(torch.from_numpy(saved["samples_latent"]), trained_latents)
    assert summary["sample_range"]["of"] == "latents" and summary["samples_outside_range"] == pytest.approx(expected.fraction_outside)
    assert " NLL of the latents " in (run / "train.log").read_text() or "held_out_nll_nats_per_dim" not in summary
    # the latents are draw_samples of the run's EMA model with its sampler, seed 0 (class grid labels)
    trained = sd.load_run(run, "cpu")
    assert trained.data.data_shape == (2, 4, 4) and trained.data.levels is None
    from sde_diffusion.tasks.score import grid_labels as _grid_labels

    sampler, grid = build_sampler(trained.config)
    score = sd.GuidedScore(trained.score_model, _grid_labels(10, 10), float(trained.config.guidance))
    with torch.no_grad():
        direct = draw_samples(trained.sde, score, sampler, grid, (2, 4, 4), 10, batch_size=10, seed=0)
    torch.testing.assert_close(torch.from_numpy(saved["samples_latent"]), direct.samples.float(), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_latent_dataset_draws_seeded_scaled_latents_with_labels(runs):
    codec, images = load_codec(runs / "ae", "cpu")
    one, two = latent_dataset(str(runs / "ae"), draws=1, seed=0), latent_dataset(str(runs / "ae"), draws=2, seed=0)
    n = images.train.shape[0]
    assert one.train.shape == (n, 2, 4, 4) and two.train.shape == (2 * n, 2, 4, 4) and one.test.shape == (297, 2, 4, 4)
    assert torch.equal(two.train_labels, images.train_labels.repeat(2)) and torch.equal(one.test_labels, images.test_labels)
    assert one.levels is None and one.n_classes == 10
    assert torch.equal(latent_dataset(str(runs / "ae"), draws=2, seed=0).train, two.train)  # seeded
    assert not torch.equal(latent_dataset(str(runs / "ae"), draws=1, seed=1).train, one.train)
    assert not torch.equal(two.train[:n], two.train[n:])  # another draw per copy
    # by hand: the codec's draws from one generator, the training images in batches of 1000, then the test images
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        train = torch.cat([codec.encode(xb, gen)[0] for xb in images.train.split(1000)])
        test = torch.cat([codec.encode(xb, gen)[0] for xb in images.test.split(1000)])
    torch.testing.assert_close(one.train, train.float(), rtol=0, atol=0)
    torch.testing.assert_close(one.test, test.float(), rtol=0, atol=0)
    torch.testing.assert_close(two.train[:n], train.float(), rtol=0, atol=0)
    # scaled to unit std (the scale factor was measured on one draw of the same images)
    assert float(two.train.std()) == pytest.approx(1.0, abs=0.05)
    with pytest.raises(ValueError, match="draws"):
        latent_dataset(str(runs / "ae"), draws=0)


@pytest.mark.slow
def test_a_latent_run_resumes_exactly(runs):
    """6 steps in one go equal 3 steps and a resumed run to 6, bit for bit (model, EMA, optimizer
    state), and so do the decoded end-of-run samples."""
    a = load_checkpoint(runs / "latent" / "checkpoints" / "last.pt")
    b = load_checkpoint(runs / "resumed" / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 6
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    sa, sb = np.load(runs / "latent" / "samples.npz"), np.load(runs / "resumed" / "samples.npz")
    assert np.array_equal(sa["samples_latent"], sb["samples_latent"]) and np.array_equal(sa["samples"], sb["samples"])
    summary = json.loads((runs / "resumed" / "summary.json").read_text())
    assert (summary["steps"], summary["steps_run"], summary["resumed_from_step"]) == (6, 3, 3)


@pytest.mark.slow
def test_sde_sample_decodes_a_latent_run(runs, tmp_path):
    args = ["n_samples=6", "batch_size=6", "sampler=dpm_solver", "sampler.grid.n_steps=4", "progress=false", "device=cpu"]
    code, _, err = run_app("sample", f"run_dir={runs / 'latent'}", *args, f"hydra.run.dir={tmp_path / 'out'}", cwd=tmp_path)
    assert code == 0, err
    saved = np.load(tmp_path / "out" / "samples.npz")
    assert saved["samples"].shape == (6, 1, 8, 8) and saved["samples_latent"].shape == (6, 2, 4, 4)
    codec, _ = load_codec(runs / "ae", "cpu")
    with torch.no_grad():
        decoded = codec.decode(torch.from_numpy(saved["samples_latent"]))
    torch.testing.assert_close(torch.from_numpy(saved["samples_unclipped"]), decoded, rtol=1e-5, atol=1e-5)
    code, _, err = run_app(
        "sample", f"run_dir={runs / 'latent'}", *args, "task=inpaint", f"hydra.run.dir={tmp_path / 'inpaint'}", cwd=tmp_path
    )
    assert code != 0 and "latents" in err, (code, err)


@pytest.mark.slow
def test_sde_eval_gives_the_lsgm_bound_of_a_latent_run(runs, tmp_path):
    args = ["n_points=8", "rtol=1e-2", "atol=1e-2", "progress=false", "device=cpu", "seed=2"]
    code, out, err = run_app("eval", f"run_dir={runs / 'latent'}", *args, f"hydra.run.dir={tmp_path / 'ev'}", cwd=tmp_path)
    assert code == 0, err
    assert "LSGM bound" in out and "bits/dim" in out
    (record,) = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert (record["bound"], record["dim"], record["n_points"], record["divergence"]) == ("latent", 64, 8, "hutchinson")
    assert record["bpd"] is not None and record["bpd"] > 0 and record["data"] == "digits"
    # the same number as evaluate_nll(bound="latent") called directly with the same seed
    trained = sd.load_run(runs / "latent", "cpu")
    codec, images = load_codec(runs / "ae", "cpu")
    direct = evaluate_nll(trained.sde, trained.score_model, images.test, codec=codec, bound="latent", levels=images.levels,
                          interval_width=images.interval_width, n_points=8, rtol=1e-2, atol=1e-2, seed=2)  # fmt: skip
    assert record["bpd"] == pytest.approx(direct["bpd"], rel=1e-6)
    assert record["nll_nats_per_dim"] == pytest.approx(direct["nll_nats_per_dim"], rel=1e-6)
    # bpd and nats/dim are the same bound: nats/dim = bpd ln 2 - log(K / w)
    assert record["nll_nats_per_dim"] == pytest.approx(record["bpd"] * math.log(2) - math.log(17 / 2), rel=1e-5)
    # another bound of a pixel model is refused for a latent run
    code, _, err = run_app("eval", f"run_dir={runs / 'latent'}", *args, "bound=elbo", f"hydra.run.dir={tmp_path / 'bad'}", cwd=tmp_path)
    assert code == 2 and "bound=latent" in err, err


@pytest.mark.slow
def test_sample_and_eval_refuse_an_autoencoder_run(runs, tmp_path):
    for module, extra in (("sample", ["n_samples=2"]), ("eval", ["n_points=2"])):
        code, _, err = run_app(
            module, f"run_dir={runs / 'ae'}", *extra, "progress=false", f"hydra.run.dir={tmp_path / module}", cwd=tmp_path
        )
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1, err
        assert "autoencoder" in lines[0] and "experiment=latent_digits" in lines[0], err


@pytest.mark.slow
def test_latent_digits_needs_an_autoencoder_run(runs, tmp_path):
    code, _, err = run_app("train", *TINY_LATENT, "train.steps=2", f"hydra.run.dir={tmp_path / 'none'}", cwd=tmp_path)
    assert code != 0 and "autoencoder_dir" in err, (code, err)
    code, _, err = run_app("train", *TINY_LATENT, "train.steps=2", f"autoencoder_dir={runs / 'latent'}", f"hydra.run.dir={tmp_path / 'bad'}",
                        cwd=tmp_path)  # fmt: skip
    assert code == 2 and "not an autoencoder run" in err, (code, err)
    assert not (tmp_path / "bad" / "checkpoints").exists()
