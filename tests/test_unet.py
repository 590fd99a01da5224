"""The U-Net: shapes on 8x8, 28x28 and 32x32 images, zero output at initialisation, conditioning on
time and class, gradient flow, where attention runs, validation, its config, and a short training run
on the digits. Tiny channel counts keep every test fast on a CPU."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

import sde_diffusion as sd
from sde_diffusion.data import digits_dataset
from sde_diffusion.models import UNet
from sde_diffusion.models.blocks import SelfAttention
from sde_diffusion.app.runs import build_experiment
from sde_diffusion.training import evaluate_loss

CONF = Path(__file__).resolve().parents[1] / "conf"

# (data_shape, channel_mult, attention_resolutions): the sizes named in conf/model/unet.yaml
SIZES = [
    ((1, 8, 8), [1, 2, 2], [4]),
    ((3, 8, 8), [1, 2], [8]),
    ((1, 28, 28), [1, 2, 2], [14]),
    ((3, 28, 28), [1, 2, 2], [7]),
    ((1, 32, 32), [1, 2, 2, 2], [16]),
    ((3, 32, 32), [1, 2, 2, 2], [8]),
]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _tiny(data_shape=(1, 8, 8), channel_mult=(1, 2), attention_resolutions=(4,), seed=0, **kwargs) -> UNet:
    torch.manual_seed(seed)
    args = dict(channels=8, channel_mult=channel_mult, n_res_blocks=1, attention_resolutions=attention_resolutions, dropout=0.0)
    return UNet(data_shape, **(args | kwargs))


def _switch_on(net: UNet, seed: int = 1) -> UNet:
    """Give every zero-initialised parameter (output convolution, residual branch ends, attention
    projections) random values, so every path of the network contributes to the output."""
    g = _gen(seed)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return net


def _inputs(data_shape, batch=2, seed=0, dtype=torch.float32):
    g = _gen(seed)
    return torch.randn(batch, *data_shape, generator=g, dtype=dtype), torch.rand(batch, generator=g, dtype=dtype)


# -------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("data_shape, mult, attn", SIZES, ids=["x".join(map(str, shape)) for shape, _, _ in SIZES])
def test_output_has_the_input_shape_and_starts_at_zero(data_shape, mult, attn):
    net = _tiny(data_shape, mult, attn)
    x, t = _inputs(data_shape)
    out = net(x, t)
    # the output convolution starts at zero, so the initial output is exactly 0 whatever x and t
    assert out.shape == x.shape and torch.equal(out, torch.zeros_like(x))
    out = _switch_on(net)(x, t)
    assert out.shape == x.shape and torch.isfinite(out).all() and out.abs().min() > 0


@pytest.mark.parametrize("data_shape, mult, attn", [SIZES[0], SIZES[3]], ids=["1x8x8", "3x28x28"])
def test_class_conditional_output_has_the_input_shape(data_shape, mult, attn):
    net = _switch_on(_tiny(data_shape, mult, attn, n_classes=10))
    x, t = _inputs(data_shape, batch=3)
    out = net(x, t, torch.tensor([0, 9, 10]))  # 10 is the null label
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_float64_and_scalar_time():
    net = _tiny().double()
    x, t = _inputs((1, 8, 8), dtype=torch.float64)
    assert net(x, t).dtype == torch.float64
    _switch_on(net)
    torch.testing.assert_close(net(x, 0.3), net(x, torch.full((2,), 0.3, dtype=torch.float64)), rtol=0, atol=0)


# -------------------------------------------------------------------------------- conditioning
def test_output_depends_on_time_and_each_sample_only_on_itself():
    net = _switch_on(_tiny())
    x, _ = _inputs((1, 8, 8), batch=3)
    a = net(x, torch.tensor([0.1, 0.5, 0.9]))
    b = net(x, torch.tensor([0.1, 0.5, 0.2]))
    # only sample 2's time changed: samples 0 and 1 are untouched (nothing mixes the batch), 2 moves
    torch.testing.assert_close(a[:2], b[:2], rtol=1e-6, atol=1e-6)
    assert (a[2] - b[2]).abs().max() > 1e-3


def test_class_labels_change_the_output_and_none_is_the_null_label():
    net = _switch_on(_tiny(n_classes=3))
    x, t = _inputs((1, 8, 8))
    null = torch.full((2,), 3)
    torch.testing.assert_close(net(x, t), net(x, t, null), rtol=0, atol=0)
    outs = [net(x, t, torch.full((2,), k)) for k in range(4)]
    for i in range(4):
        for j in range(i):
            assert (outs[i] - outs[j]).abs().max() > 1e-3, (i, j)


def test_unconditional_network_refuses_labels():
    net = _tiny()
    x, t = _inputs((1, 8, 8))
    with pytest.raises(ValueError, match="n_classes=None"):
        net(x, t, torch.zeros(2, dtype=torch.long))
    assert net.class_embedding is None


@pytest.mark.parametrize(
    "y, message",
    [
        (torch.tensor([0, 4]), r"0\.\.3 \(3 is the null label\)"),
        (torch.tensor([-1, 0]), r"0\.\.3"),
        (torch.tensor([0, 1], dtype=torch.int32), "int64 of shape"),
        (torch.tensor([0]), r"shape \(B,\) = \(2,\)"),
    ],
)
def test_bad_labels_are_named(y, message):
    net = _tiny(n_classes=3)
    x, t = _inputs((1, 8, 8))
    with pytest.raises(ValueError, match=message):
        net(x, t, y)


# ------------------------------------------------------------------------------------ gradients
def test_gradient_reaches_the_output_layer_at_initialisation():
    """Zero initialisation must not stall training: the output convolution gets a gradient at once."""
    net = _tiny()
    x, t = _inputs((1, 8, 8))
    ((net(x, t) - x) ** 2).sum().backward()
    assert net.out[-1].weight.grad.abs().sum() > 0 and net.out[-1].bias.grad.abs().sum() > 0


@pytest.mark.parametrize("n_classes", [None, 4])
def test_gradient_flows_to_every_parameter(n_classes):
    net = _switch_on(_tiny(n_classes=n_classes, n_res_blocks=2, dropout=0.1))
    x, t = _inputs((1, 8, 8), batch=4)
    y = None if n_classes is None else torch.tensor([0, 1, 2, 4])
    (net(x, t, y) ** 2).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"no gradient reaches {name}"


# ------------------------------------------------------------------------------------ attention
def _attention_sizes(net: UNet, x: torch.Tensor, t: torch.Tensor) -> Counter:
    """How many attention blocks ran at each feature-map height, recorded by forward hooks."""
    seen = Counter()
    hooks = [m.register_forward_hook(lambda m, inp, out: seen.update([inp[0].shape[-2]])) for m in net.modules() if isinstance(m, SelfAttention)]
    net(x, t)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize(
    "attn, expected",
    # 8x8 with channel_mult [1, 2, 2] and 2 blocks per level: an attended level runs attention after
    # its 2 encoder and 3 decoder blocks; the middle always attends once at the lowest size (2)
    [([], {2: 1}), ([4], {4: 5, 2: 1}), ([8, 2], {8: 5, 2: 6})],
)
def test_attention_runs_exactly_at_the_chosen_resolutions(attn, expected):
    net = _tiny(channel_mult=[1, 2, 2], attention_resolutions=attn, n_res_blocks=2)
    assert _attention_sizes(net, *_inputs((1, 8, 8))) == Counter(expected)


# ----------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"data_shape": (2,)}, r"data_shape \(C, H, W\).*use TimeMLP"),
        ({"data_shape": (1, 0, 8)}, "positive sizes"),
        ({"data_shape": (1, 28, 28), "channel_mult": [1, 2, 2, 2]}, "divisible by 8; use at most 3 levels for 28x28"),
        ({"data_shape": (1, 12, 8), "channel_mult": [1, 2, 2, 2]}, "divisible by 8; use at most 3 levels for 12x8"),
        ({"attention_resolutions": [16]}, r"\[16\] are not resolutions .* \[8, 4\]"),
        ({"channel_mult": []}, "at least one level"),
        ({"channel_mult": [1, 0]}, "channel_mult entries must be an integer >= 1"),
        ({"channels": 0}, "channels must be an integer >= 1"),
        ({"n_res_blocks": 0}, "n_res_blocks must be an integer >= 1"),
        ({"dropout": 1.0}, r"dropout must lie in \[0, 1\)"),
        ({"n_classes": 0}, "n_classes must be an integer >= 1"),
        ({"time_embedding": torch.nn.Identity()}, "time_embedding must be a module .* integer dim"),
    ],
)
def test_construction_errors_name_the_fix(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _tiny(**kwargs)


def test_wrong_input_shape_is_named():
    with pytest.raises(ValueError, match=r"built for images of shape \(1, 8, 8\), got input of shape \(2, 3, 8, 8\)"):
        _tiny()(*_inputs((3, 8, 8)))


def test_non_square_images_work():
    net = _switch_on(_tiny((2, 8, 16), attention_resolutions=[4]))
    x, t = _inputs((2, 8, 16))
    assert net(x, t).shape == x.shape


# -------------------------------------------------------------------------------------- configs
def test_model_config_builds_a_unet_for_the_digits():
    cfg = OmegaConf.load(CONF / "model" / "unet.yaml")
    net = instantiate(cfg.net, data_shape=[1, 8, 8])
    assert isinstance(net, UNet) and net.data_shape == (1, 8, 8)
    model = instantiate(cfg.parameterization)(net=net, sde=sd.VPSDE())
    x, t = _inputs((1, 8, 8))
    assert torch.equal(model(x, t), torch.zeros_like(x))


def test_app_config_composes_unet_with_digits():
    with initialize_config_dir(str(CONF), version_base=None):
        cfg = compose("config", overrides=["model=unet", "data=digits", "model.net.n_classes=10"])
    exp = build_experiment(cfg)
    assert exp.data.data_shape == (1, 8, 8) and exp.score_model.net.n_classes == 10
    assert exp.score_model(exp.data.train[:2], torch.rand(2)).shape == (2, 1, 8, 8)


# ------------------------------------------------------------------------------------- training
def test_thirty_training_steps_on_the_digits_reduce_the_loss():
    """30 Adam steps of the eps loss with the Trainer. The held-out loss is evaluated with the same
    seed (same t and noise) before and after, so the comparison is paired. At initialisation the
    network outputs 0, so the eps loss is E|z|^2 = D = 64 (up to the draw: 297 images give a
    standard error of about sqrt(2 * 64 / 297) = 0.66). Training reaches about 12; halving the
    loss is far beyond the noise and leaves room for other platforms' arithmetic."""
    ds = digits_dataset()
    torch.manual_seed(0)
    sde = sd.VPSDE()
    model = sd.EpsilonParameterization(_tiny(channels=16, attention_resolutions=[4]), sde)
    before = evaluate_loss(model, sde, ds.test, seed=0)
    assert abs(before - 64.0) < 5 * 0.66
    options = sd.TrainOptions(steps=30, batch_size=64, lr=3e-3, warmup_steps=5, progress=False, log_every=10)
    sd.Trainer(model, sde, ds.train, options, seed=0).fit()
    after = evaluate_loss(model, sde, ds.test, seed=0)
    assert after < 0.5 * before, (before, after)
