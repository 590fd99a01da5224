"""Fine-tuning a trained score model (sde-train init_from=<run> finetune=lora|embedding|full): LoRA
adapters are exact no-ops when fresh, merge to W + (alpha / r) B A of rank r, and train alone; new
classes get new embedding rows while the trained rows and the null label's stay; each mode changes
exactly the parameters it should; prior preservation's row weights give E_new[L] + lambda E_prior[L]
and the Trainer's step uses them; the apps end to end (adapters.pt, sampling a new class, refusals)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from apps import run_app
from torch import nn

import sde_diffusion as sd
from sde_diffusion._seeding import derive_seed
from sde_diffusion.finetune import (
    EmbeddingFinetune,
    FullFinetune,
    GrownEmbedding,
    LoRAFinetune,
    grow_class_embedding,
    prior_weights,
    trainable_parameters,
)
from sde_diffusion.models import TimeMLP, UNet
from sde_diffusion.models.lora import LoRALayer, add_lora, lora_state_dict, merge_lora
from sde_diffusion.app.runs import build_model
from sde_diffusion.training import load_checkpoint

F64 = torch.float64


def _randomize_zeros(net: nn.Module, seed: int, scale: float = 0.2) -> nn.Module:
    """Give the zero-initialised layers (output convolution, residual branches' last layers) random
    weights, so that every layer reaches the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() > 1 and not p.any():
                p.copy_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return net


def _unet(n_classes=None, seed=0, dtype=torch.float32) -> UNet:
    torch.manual_seed(seed)
    net = UNet((1, 8, 8), channels=8, channel_mult=[1, 2], n_res_blocks=1, attention_resolutions=[4], dropout=0.0, n_classes=n_classes)
    return _randomize_zeros(net.to(dtype), seed + 100)


def _mlp(seed=0, dtype=torch.float32) -> TimeMLP:
    torch.manual_seed(seed)
    return _randomize_zeros(TimeMLP((2, 3), hidden_dim=16, n_layers=2).to(dtype), seed + 100)


def _randomize_lora_b(model: nn.Module, seed: int, scale: float = 0.1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, LoRALayer):
                layer.lora_B.copy_(scale * torch.randn(layer.lora_B.shape, generator=g, dtype=layer.lora_B.dtype))


def _inputs(shape, n=5, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g, dtype=dtype), torch.rand(n, generator=g, dtype=dtype) * 0.9 + 0.05


# ---------------------------------------------------------------------------------------- LoRA
@pytest.mark.parametrize("kind", ["unet", "mlp"])
def test_a_fresh_adapter_changes_nothing_bit_for_bit(kind):
    net = (_unet(n_classes=3) if kind == "unet" else _mlp()).eval()
    x, t = _inputs((1, 8, 8) if kind == "unet" else (2, 3))
    args = (x, t, torch.tensor([0, 1, 2, 3, 1])) if kind == "unet" else (x, t)
    with torch.no_grad():
        before = net(*args)
        assert float(before.abs().mean()) > 1e-3  # a non-trivial output
        names = add_lora(net, rank=2)
        after = net(*args)
    assert torch.equal(before, after)
    assert names and all(isinstance(net.get_submodule(n), LoRALayer) for n in names)
    linear = [n for n, m in net.named_modules() if isinstance(m, LoRALayer) and isinstance(m.base, nn.Linear)]
    conv = [n for n, m in net.named_modules() if isinstance(m, LoRALayer) and isinstance(m.base, nn.Conv2d)]
    assert linear and (conv if kind == "unet" else not conv)
    # only the adapters train
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith((".lora_A", ".lora_B")) for n in trainable)
    assert trainable == {f"{n}.lora_A" for n in names} | {f"{n}.lora_B" for n in names}
    assert all(torch.equal(net.get_submodule(n).lora_B, torch.zeros_like(net.get_submodule(n).lora_B)) for n in names)


@pytest.mark.parametrize("kind", ["unet", "mlp"])
def test_merged_equals_unmerged_and_the_update_has_rank_r(kind):
    rank, alpha = 2, 3.0
    net = (_unet(n_classes=3, dtype=F64) if kind == "unet" else _mlp(dtype=F64)).eval()
    original = copy.deepcopy(net)
    add_lora(net, rank=rank, alpha=alpha)
    _randomize_lora_b(net, 5)
    x, t = _inputs((1, 8, 8) if kind == "unet" else (2, 3), dtype=F64)
    args = (x, t, torch.tensor([0, 1, 2, 3, 1])) if kind == "unet" else (x, t)
    with torch.no_grad():
        adapted = net(*args)
        assert (adapted - original(*args)).abs().max() > 1e-3  # the adapters do something now
        layers = {n: m for n, m in net.named_modules() if isinstance(m, LoRALayer)}
        for name, layer in layers.items():
            w = layer.base.weight
            delta = layer.merged_weight() - w
            assert delta.shape == w.shape
            # (alpha / r) B A, flattened to (out, fan_in), of rank min(r, out, fan_in)
            want = alpha / rank * (layer.lora_B.flatten(1) @ layer.lora_A.flatten(1))
            torch.testing.assert_close(delta.flatten(1), want, rtol=1e-12, atol=1e-14)
            expected_rank = min(rank, w.shape[0], w[0].numel())
            assert int(torch.linalg.matrix_rank(delta.flatten(1))) == expected_rank, name
            assert torch.equal(w, original.get_submodule(name).weight)  # the base weight itself is untouched
            # the layer's output is the merged layer's, and base + delta by hand
            probe = torch.randn(3, w.shape[1], generator=torch.Generator().manual_seed(0), dtype=F64)
            if isinstance(layer.base, nn.Conv2d):
                probe = torch.randn(3, w.shape[1], 4, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
            torch.testing.assert_close(layer(probe), layer.merged()(probe), rtol=1e-10, atol=1e-12)
        assert any(isinstance(m.base, nn.Conv2d) and m.base.kernel_size == (3, 3) and min(m.base.weight.shape[:2]) >= rank
                   for m in layers.values()) == (kind == "unet")  # fmt: skip
        merged = merge_lora(copy.deepcopy(net))
        assert not any(isinstance(m, LoRALayer) for m in merged.modules())
        assert set(merged.state_dict()) == set(original.state_dict())
        torch.testing.assert_close(merged(*args), adapted, rtol=1e-10, atol=1e-10)
        assert not any(p.requires_grad for p in merged.parameters())
    # the adapters' state: exactly the A and B of every layer, copies of them
    state = lora_state_dict(net)
    assert set(state) == {f"{n}.{ab}" for n in layers for ab in ("lora_A", "lora_B")}
    first = next(iter(state))
    state[first].zero_()
    assert net.state_dict()[first].abs().sum() > 0


def test_add_lora_targets_skip_and_refusals():
    net = _unet(n_classes=3)
    names = add_lora(net, rank=1, targets="linear", skip=("time_mlp",))
    assert all(isinstance(net.get_submodule(n).base, nn.Linear) for n in names)
    assert not any(n.startswith("time_mlp") for n in names) and any(n.endswith("emb") for n in names)
    assert not any(p.requires_grad for n, p in net.named_parameters() if "lora" not in n)
    conv = _unet()
    assert all(isinstance(conv.get_submodule(n).base, nn.Conv2d) for n in add_lora(conv, rank=1, targets="conv"))
    with pytest.raises(ValueError, match="rank"):
        add_lora(_mlp(), rank=0)
    with pytest.raises(ValueError, match="targets"):
        add_lora(_mlp(), rank=1, targets="attention")
    with pytest.raises(ValueError, match="no conv layers"):
        add_lora(_mlp(), rank=1, targets="conv")
    with pytest.raises(ValueError, match="grouped"):
        LoRALayer(nn.Conv2d(4, 4, 3, groups=2), 1, 1.0)


def test_lora_finetune_skips_the_embeddings_and_trains_adapters_and_new_rows():
    model = sd.EpsilonParameterization(_unet(n_classes=3), sd.VPSDE())
    LoRAFinetune(rank=2).apply(model, n_classes=4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "net.class_embedding.new" in trainable
    assert all(n.endswith((".lora_A", ".lora_B")) for n in trainable - {"net.class_embedding.new"})
    assert not any(isinstance(m, LoRALayer) for n, m in model.named_modules() if "time_mlp" in n or "class_embedding" in n)
    assert trainable_parameters(model) == sum(p.numel() for n, p in model.named_parameters() if n in trainable)
    assert trainable_parameters(model) == 32 + sum(p.numel() for p in lora_state_dict(model).values())


# ------------------------------------------------------------------------ growing the embedding
def test_growing_keeps_the_trained_rows_and_moves_the_null_label_to_the_end():
    net = _unet(n_classes=3).eval()
    x, t = _inputs((1, 8, 8), n=4)
    old = torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        out_old, out_null = net(x, t, old), net(x, t)
        assert torch.equal(out_null, net(x, t, torch.full((4,), 3)))  # the null label is row 3 before
    table = net.class_embedding.weight.detach().clone()
    assert grow_class_embedding(net, 5) == 2
    assert isinstance(net.class_embedding, GrownEmbedding) and net.n_classes == 5
    grown = net.class_embedding.weight
    assert grown.shape == (6, table.shape[1])
    assert torch.equal(grown[:3], table[:3]) and torch.equal(grown[5], table[3])  # classes, then null last
    assert torch.equal(grown[3:5], table[:3].mean(0, keepdim=True).expand(2, -1))  # new rows: the classes' mean
    assert [n for n, _ in net.class_embedding.named_parameters()] == ["new"]
    assert torch.equal(net.class_embedding.trained, table)
    with torch.no_grad():
        assert torch.equal(net(x, t, old), out_old)
        assert torch.equal(net(x, t), out_null) and torch.equal(net(x, t, torch.full((4,), 5)), out_null)
        new = net(x, t, torch.full((4,), 3))
        assert not torch.equal(new, out_null) and torch.equal(new, net(x, t, torch.full((4,), 4)))
    with pytest.raises(ValueError, match="class-conditional"):
        grow_class_embedding(_unet(), 4)
    plain = _unet(n_classes=3)
    assert grow_class_embedding(plain, 3) == 0 and isinstance(plain.class_embedding, nn.Embedding)  # enough rows already


def test_a_grown_network_can_be_fine_tuned_again():
    """A fine-tuned run's network (a GrownEmbedding) is a class-conditional network too: growing it
    to no more classes adds nothing (0, as documented), so init_from=<a fine-tuned run> works."""
    net = _unet(n_classes=3)
    assert grow_class_embedding(net, 4) == 1
    assert grow_class_embedding(net, 4) == 0 and net.n_classes == 4
    model = sd.EpsilonParameterization(net, sd.VPSDE())
    FullFinetune().apply(model, 2)  # data of known classes only
    assert net.n_classes == 4


def test_embedding_finetune_needs_a_new_class():
    model = sd.EpsilonParameterization(_unet(n_classes=3), sd.VPSDE())
    for n_classes in (None, 2, 3):
        with pytest.raises(ValueError, match="finetune=embedding"):
            EmbeddingFinetune().apply(copy.deepcopy(model), n_classes)
    ft = EmbeddingFinetune()
    ft.apply(model, 4)
    assert ft.known_classes == 3 and {n for n, p in model.named_parameters() if p.requires_grad} == {"net.class_embedding.new"}
    assert trainable_parameters(model) == 32  # one row of the 4 x 8 embedding
    with pytest.raises(ValueError, match="prior_preservation"):
        FullFinetune(prior_preservation=-1.0)
    with pytest.raises(ValueError, match="prior_samples"):
        FullFinetune(prior_samples=0)


# ------------------------------------------------------------ what each mode changes in training
def _finetuned(mode, steps=3):
    """A class-conditional model on classes 0..2 fine-tuned for a few Trainer steps on rows of
    the new class 3 (and some of class 0); returns the model before training (grown) and after."""
    sde = sd.VPSDE()
    base = sd.EpsilonParameterization(_unet(n_classes=3), sde)
    ft = {"lora": LoRAFinetune(rank=2), "embedding": EmbeddingFinetune(), "full": FullFinetune()}[mode]
    model = copy.deepcopy(base)
    ft.apply(model, 4)
    before = copy.deepcopy(model)
    g = torch.Generator().manual_seed(2)
    data = torch.rand(16, 1, 8, 8, generator=g) * 2 - 1
    labels = torch.tensor([3] * 12 + [0] * 4)
    options = sd.TrainOptions(steps=steps, batch_size=8, lr=1e-2, warmup_steps=1, label_dropout=0.0, progress=False)
    trainer = sd.Trainer(model, sde, data, options, labels=labels, seed=0)
    for _ in range(steps):
        trainer.train_step()
    return base, before, trainer.model


def _base_key(key: str) -> str:
    """A key of the fine-tuned model's state as the base model named it."""
    return key.replace(".base.", ".").replace("class_embedding.trained", "class_embedding.weight")


def test_embedding_finetuning_changes_only_the_new_row():
    base, before, after = _finetuned("embedding")
    b, a, orig = before.state_dict(), after.state_dict(), base.state_dict()
    assert set(a) == set(b)
    for key in a:
        if key == "net.class_embedding.new":
            assert not torch.equal(a[key], b[key])
        else:
            assert torch.equal(a[key], b[key]), key
            assert torch.equal(a[key], orig[_base_key(key)]), key
    # the model's output for a known class and the null label is the base model's, bit for bit
    x, t = _inputs((1, 8, 8), n=4)
    with torch.no_grad():
        base.eval(), after.eval()
        for y in (torch.tensor([0, 1, 2, 0]), None):
            assert torch.equal(after(x, t, y), base(x, t, y))
        assert not torch.equal(after(x, t, torch.full((4,), 3)), before.eval()(x, t, torch.full((4,), 3)))


def test_lora_finetuning_keeps_every_base_weight():
    base, before, after = _finetuned("lora")
    a, b, orig = after.state_dict(), before.state_dict(), base.state_dict()
    changed = {k for k in a if not torch.equal(a[k], b[k])}
    assert "net.class_embedding.new" in changed and any(k.endswith(".lora_B") for k in changed)
    assert all(k.endswith((".lora_A", ".lora_B")) or k == "net.class_embedding.new" for k in changed), changed
    # every tensor of the base model is in the fine-tuned one, unchanged
    mapped = {_base_key(k): k for k in a if not k.endswith((".lora_A", ".lora_B", "class_embedding.new"))}
    assert set(mapped) == set(orig)
    for key, new_key in mapped.items():
        assert torch.equal(a[new_key], orig[key]), key


def test_full_finetuning_trains_the_network_but_not_the_trained_class_rows():
    base, before, after = _finetuned("full")
    a, b = after.state_dict(), before.state_dict()
    params = dict(after.named_parameters())
    changed = {k for k in params if not torch.equal(a[k], b[k])}
    assert "net.class_embedding.new" in changed and len(changed) > 0.8 * len(params)
    assert torch.equal(a["net.class_embedding.trained"], base.state_dict()["net.class_embedding.weight"])
    # without a new class nothing is grown: the whole table trains
    model = sd.EpsilonParameterization(_unet(n_classes=3), sd.VPSDE())
    FullFinetune().apply(model, 3)
    assert isinstance(model.net.class_embedding, nn.Embedding) and model.net.class_embedding.weight.requires_grad


# ----------------------------------------------------------------------- prior preservation
def test_prior_weights_give_new_plus_lambda_prior_under_uniform_rows():
    n_new, n_prior, lam = 5, 20, 0.7
    w = prior_weights(n_new, n_prior, lam)
    assert w.shape == (25,) and torch.equal(w[:5], torch.ones(5)) and torch.allclose(w[5:], torch.full((20,), lam * 5 / 20))
    losses = torch.rand(25, generator=torch.Generator().manual_seed(0), dtype=F64) * 3
    # a uniformly drawn row's weighted loss has mean (1 / N) sum w_i L_i = n_new / N (E_new[L] + lambda E_prior[L])
    expectation = float((w.double() * losses).mean())
    want = n_new / 25 * (float(losses[:5].mean()) + lam * float(losses[5:].mean()))
    assert expectation == pytest.approx(want, rel=1e-7)  # the weights are float32
    # and so does the mean over many uniform draws (within its standard error)
    idx = torch.randint(25, (200_000,), generator=torch.Generator().manual_seed(1))
    draws = w.double()[idx] * losses[idx]
    assert abs(float(draws.mean()) - want) < 5 * float(draws.std()) / 200_000**0.5
    # lambda = 0: the prior rows weigh nothing
    assert torch.equal(prior_weights(3, 4, 0.0), torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]))


def _weighted_trainer(row_weights, seed=3):
    torch.manual_seed(0)
    sde = sd.VPSDE()
    model = TimeMLP((2,), hidden_dim=16, n_layers=2)
    _randomize_zeros(model, 5)
    data = torch.randn(12, 2, generator=torch.Generator().manual_seed(4))
    options = sd.TrainOptions(steps=2, batch_size=6, lr=1e-3, warmup_steps=1, grad_clip=None, progress=False)
    return sd.Trainer(model, sde, data, options, seed=seed, row_weights=row_weights)


def test_trainer_first_step_is_the_weighted_mean_by_hand():
    w = prior_weights(4, 8, 0.5)
    trainer = _weighted_trainer(w)
    model = copy.deepcopy(trainer.model)
    idx = torch.randint(12, (6,), generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(derive_seed(3, 0, 0))
    per_row = sd.denoising_score_matching(model, trainer.sde, trainer.data[idx], generator=gen)
    by_hand = (per_row * w[idx]).mean()
    assert not torch.allclose(by_hand, per_row.mean())  # the weights matter for this batch
    by_hand.backward()
    loss, _ = trainer.train_step()
    torch.testing.assert_close(loss.detach(), by_hand.detach(), rtol=1e-6, atol=0)
    for (name, p), q in zip(trainer.model.named_parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=name)  # the step's gradient
    # weights of one: the unweighted trainer, bit for bit
    ones, plain = _weighted_trainer(torch.ones(12)), _weighted_trainer(None)
    assert torch.equal(ones.train_step()[0], plain.train_step()[0])
    for bad in (torch.ones(11), torch.ones(12, 1), torch.cat([torch.ones(11), -torch.ones(1)])):
        with pytest.raises(ValueError, match="row_weights"):
            _weighted_trainer(bad)


# ------------------------------------------------------------------------------------ the apps
TINY = ["train.batch_size=16", "progress=false", "threads=1", "device=cpu", "n_samples=6", "sampler.grid.n_steps=4", "eval_points=0"]
NINES = ["data=digits_few", "data.classes=[9]", "data.per_class=5", "train.steps=4", *TINY]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny class-conditional U-Net on the digits without nines, and its LoRA, embedding and full
    (prior-preserving) fine-tunings on five nines."""
    root = tmp_path_factory.mktemp("finetune_apps")
    base = ["model=unet", "data=digits_few", "data.classes=[0,1,2,3,4,5,6,7,8]", "data.per_class=null", "model.net.n_classes=auto",
            "model.net.channels=8", "model.net.channel_mult=[1,2]", "model.net.attention_resolutions=[]", "train.steps=10", *TINY]  # fmt: skip
    code, _, err = run_app("train", *base, f"hydra.run.dir={root / 'base'}", cwd=root)
    assert code == 0, err
    for name, extra in (
        ("lora", ["finetune=lora", "finetune.rank=2"]),
        ("embedding", ["finetune=embedding"]),
        ("full", ["finetune=full", "finetune.prior_preservation=1", "finetune.prior_samples=20"]),
    ):
        code, _, err = run_app("train", f"init_from={root / 'base'}", *extra, *NINES, f"hydra.run.dir={root / name}", cwd=root)
        assert code == 0, (name, err)
    return root


def _base_weights(root):
    return sd.load_run(root / "base", "cpu").score_model.state_dict()


def test_lora_run_saves_only_its_adapters_and_keeps_the_base(runs):
    run = runs / "lora"
    summary = json.loads((run / "summary.json").read_text())
    adapters = torch.load(run / "adapters.pt")
    assert summary["adapters_file"] == "adapters.pt" and summary["finetune"].startswith("LoRAFinetune(rank=2")
    assert "net.class_embedding.new" in adapters and adapters["net.class_embedding.new"].shape == (1, 32)
    assert all(k.endswith((".lora_A", ".lora_B")) for k in set(adapters) - {"net.class_embedding.new"})
    assert summary["trainable_parameters"] == sum(v.numel() for v in adapters.values())
    # the adapters are the checkpoint's EMA weights of those parameters
    ema = load_checkpoint(run / "checkpoints" / "last.pt")["ema"]
    assert all(torch.equal(v, ema[f"module.{k}"]) for k, v in adapters.items())
    assert any(v.abs().sum() > 0 for k, v in adapters.items() if k.endswith(".lora_B"))  # trained away from zero
    # the checkpoint holds the base run's weights, untouched, under the adapters
    state = {k.removeprefix("module."): v for k, v in ema.items() if k.startswith("module.")}
    base = _base_weights(runs)
    kept = {_base_key(k): k for k in state if not k.endswith((".lora_A", ".lora_B", "class_embedding.new"))}
    assert set(kept) == set(base)
    for key, new_key in kept.items():
        assert torch.equal(state[new_key], base[key]), key
    # load_run merges the adapters into the weights: no LoRA layer left, a tenth class, and the outputs of
    # the unmerged model (rebuilt from the run's config and checkpoint) to round-off
    trained = sd.load_run(run, "cpu")
    merged = trained.score_model
    assert merged.n_classes == 10 and not any(isinstance(m, LoRALayer) for m in merged.modules())
    unmerged = build_model(trained.config, trained.sde, trained.data)
    unmerged.load_state_dict(state)
    unmerged.eval()
    assert any(isinstance(m, LoRALayer) for m in unmerged.modules())
    x, t, y = torch.randn(6, 1, 8, 8), torch.rand(6) * 0.9 + 0.05, torch.arange(6) + 4
    with torch.no_grad():
        torch.testing.assert_close(merged(x, t, y), unmerged(x, t, y), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_the_lora_run_samples_the_new_class(runs, tmp_path):
    args = ["class_label=9", "n_samples=4", "batch_size=4", "sampler.grid.n_steps=4", "progress=false", "device=cpu"]
    code, out, err = run_app("sample", f"run_dir={runs / 'lora'}", *args, f"hydra.run.dir={tmp_path / 'nines'}", cwd=tmp_path)
    assert code == 0, err
    saved = np.load(tmp_path / "nines" / "samples.npz")
    assert saved["samples"].shape == (4, 1, 8, 8) and np.isfinite(saved["samples"]).all()
    assert json.loads((tmp_path / "nines" / "sample_summary.json").read_text())["class_label"] == 9
    code, _, err = run_app("sample", f"run_dir={runs / 'base'}", *args, f"hydra.run.dir={tmp_path / 'base'}", cwd=tmp_path)
    assert code == 2 and "0..8" in err, err  # the base model has no nines


@pytest.mark.slow
def test_embedding_run_trains_one_row(runs):
    summary = json.loads((runs / "embedding" / "summary.json").read_text())
    base = _base_weights(runs)
    row = base["net.class_embedding.weight"].shape[1]
    assert summary["trainable_parameters"] == row == 32
    adapters = torch.load(runs / "embedding" / "adapters.pt")
    assert set(adapters) == {"net.class_embedding.new"} and adapters["net.class_embedding.new"].shape == (1, row)
    state = sd.load_run(runs / "embedding", "cpu").score_model.state_dict()
    assert {_base_key(k) for k in state if k != "net.class_embedding.new"} == set(base)
    for key in state:
        if key != "net.class_embedding.new":
            assert torch.equal(state[key], base[_base_key(key)]), key
    # the new row moved away from its start, the mean of the trained class rows
    start = base["net.class_embedding.weight"][:9].mean(0)
    assert not torch.allclose(state["net.class_embedding.new"][0], start)


@pytest.mark.slow
def test_full_run_with_prior_preservation_reports_its_prior_samples(runs):
    summary = json.loads((runs / "full" / "summary.json").read_text())
    assert summary["finetune"] == "FullFinetune(prior_preservation=1)"
    assert (summary["prior_samples"], summary["prior_classes"], summary["prior_nfe"]) == (20, 9, 4)
    assert not (runs / "full" / "adapters.pt").exists()  # every parameter trained: the checkpoint is the file
    model = sd.load_run(runs / "full", "cpu").score_model
    assert summary["trainable_parameters"] == sum(p.numel() for p in model.parameters())
    base = _base_weights(runs)
    state = model.state_dict()
    assert torch.equal(state["net.class_embedding.trained"], base["net.class_embedding.weight"])
    assert not torch.equal(state["net.inp.weight"], base["net.inp.weight"])


@pytest.mark.slow
def test_finetuning_is_refused_without_a_matching_initial_run(runs, tmp_path):
    code, _, err = run_app("train", "finetune=lora", *NINES, f"hydra.run.dir={tmp_path / 'a'}", cwd=tmp_path)
    assert code == 2 and "init_from" in err and err.count("\n") == 1, err
    code, _, err = run_app(
        "train", f"init_from={runs / 'base'}", "sde=ve", "finetune=lora", *NINES, f"hydra.run.dir={tmp_path / 'b'}", cwd=tmp_path
    )
    assert code == 2 and "choose the same sde" in err and "VESDE" in err, err
    code, _, err = run_app("train", f"init_from={runs / 'base'}", "finetune=embedding", *NINES, "data.classes=[3]",
                        f"hydra.run.dir={tmp_path / 'c'}", cwd=tmp_path)  # fmt: skip
    assert code == 2 and "finetune" in err and "new class" in err, err
    code, _, err = run_app("train", f"init_from={runs / 'base'}", "finetune=full", "data=checkerboard", *TINY, "train.steps=2",
                        f"hydra.run.dir={tmp_path / 'd'}", cwd=tmp_path)  # fmt: skip
    assert code == 2 and "models data of shape (1, 8, 8)" in err, err
    assert not any((tmp_path / d / "checkpoints").exists() for d in "abcd")
