"""Training loop: exact resume, atomic and verified checkpoints, NaN handling, EMA, options."""

from __future__ import annotations

import functools
import math
import hashlib

import pytest
import torch

import sde_diffusion as sd
from sde_diffusion.training import CheckpointError, MetricsLog, NonFiniteLossError, load_checkpoint, save_checkpoint


def _data(n=256, shape=(2,)):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(0))


def _trainer(tmp_path, *, steps=30, shape=(2,), seed=0, resume=False, loss_fn=sd.denoising_score_matching, warmup_steps=5, **opts):
    torch.manual_seed(123)  # network initialisation
    sde = sd.VPSDE()
    model = sd.EpsilonParameterization(sd.TimeMLP(shape, hidden_dim=16, n_layers=2), sde)
    options = sd.TrainOptions(
        steps=steps, batch_size=32, lr=1e-2, warmup_steps=warmup_steps, checkpoint_every=10, log_every=5, progress=False, resume=resume, **opts
    )
    return sd.Trainer(model, sde, _data(shape=shape), options, loss_fn=loss_fn, run_dir=tmp_path, seed=seed)


def _assert_same_state(a: dict, b: dict):
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    for k in sa:
        for name in sa[k]:
            assert torch.equal(torch.as_tensor(sa[k][name]), torch.as_tensor(sb[k][name])), (k, name)
    assert a["step"] == b["step"]


class _Crash(Exception):
    pass


def _crash_at(step):
    def callback(trainer):
        if trainer.step == step:
            raise _Crash

    return callback


@pytest.mark.parametrize("shape", [(2,), (1, 8, 8)])
def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path, shape):
    full = _trainer(tmp_path / "full", shape=shape)
    full.fit()

    crashed = _trainer(tmp_path / "crash", shape=shape)
    crashed.on_step.append(_crash_at(25))  # dies 5 steps after the checkpoint at step 20
    with pytest.raises(_Crash):
        crashed.fit()
    assert load_checkpoint(tmp_path / "crash" / "checkpoints" / "last.pt")["step"] == 20

    resumed = _trainer(tmp_path / "crash", shape=shape, resume=True)
    assert resumed.step == 20
    resumed.fit()
    _assert_same_state(full.state(), resumed.state())
    # the metrics hold every logged step once, as in the uninterrupted run
    steps = [r["step"] for r in MetricsLog(tmp_path / "crash" / "metrics.jsonl").read()]
    assert steps == [r["step"] for r in MetricsLog(tmp_path / "full" / "metrics.jsonl").read()] == list(range(5, 31, 5))


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    a, b, c = _trainer(tmp_path / "a", steps=10), _trainer(tmp_path / "b", steps=10), _trainer(tmp_path / "c", steps=10, seed=1)
    for t in (a, b, c):
        t.fit()
    assert torch.equal(a.model.net.out.weight, b.model.net.out.weight)
    assert not torch.equal(a.model.net.out.weight, c.model.net.out.weight)


def test_resume_without_a_checkpoint_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        _trainer(tmp_path, resume=True)


def test_truncated_checkpoint_is_refused(tmp_path):
    t = _trainer(tmp_path, steps=10)
    t.fit()
    path = tmp_path / "checkpoints" / "last.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError):
        _trainer(tmp_path, resume=True)


def test_altered_checkpoint_is_refused(tmp_path):
    t = _trainer(tmp_path, steps=10)
    t.fit()
    path = tmp_path / "checkpoints" / "last.pt"
    payload = torch.load(path, weights_only=True)
    payload["model"]["net.out.bias"] += 1e-3  # a quiet edit that keeps the file well-formed
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="integrity check"):
        load_checkpoint(path)


def test_every_single_byte_flip_in_tensor_data_is_caught(tmp_path):
    """Flip bytes spread over the file: each either breaks the archive or the digest; none loads."""
    path = save_checkpoint(tmp_path / "c.pt", {"w": torch.arange(4096, dtype=torch.float32), "step": 3})
    clean = path.read_bytes()
    for offset in range(200, len(clean) - 200, len(clean) // 40):
        corrupt = bytearray(clean)
        corrupt[offset] ^= 0x10
        path.write_bytes(bytes(corrupt))
        try:
            loaded = load_checkpoint(path)
        except CheckpointError:
            continue
        # a flip in bytes the reader ignores (zip padding) may load; then the content must be intact
        assert torch.equal(loaded["w"], torch.arange(4096, dtype=torch.float32)) and loaded["step"] == 3


def test_checkpoints_load_without_running_code(tmp_path):
    """A pickle that would execute code on load is refused: loading uses weights_only=True."""

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "sde-diffusion-checkpoint/1", "x": Evil()}, path)
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not a sde-diffusion checkpoint"):
        torch.save({"a": 1}, tmp_path / "other.pt")
        load_checkpoint(tmp_path / "other.pt")


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    """A crash while writing leaves the previous checkpoint intact and no temporary files."""
    path = save_checkpoint(tmp_path / "last.pt", {"w": torch.ones(3), "step": 1})
    before = path.read_bytes()

    def dying_save(obj, f, *a, **k):
        f.write(b"partial bytes")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"w": torch.zeros(3), "step": 2})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def _poisoned_loss(after_step):
    calls = {"n": 0}

    def loss(model, sde, x0, generator=None):
        calls["n"] += 1
        value = sd.denoising_score_matching(model, sde, x0, generator=generator)
        return value * float("nan") if calls["n"] > after_step else value

    return loss


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    t = _trainer(tmp_path, steps=30, loss_fn=_poisoned_loss(after_step=15))
    path = tmp_path / "checkpoints" / "last.pt"
    with pytest.raises(NonFiniteLossError, match=r"step 16: loss = nan.*Lower train.lr.*last good checkpoint"):
        t.fit()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert load_checkpoint(path)["step"] == 10
    assert torch.isfinite(t.model.net.out.weight).all()  # the poisoned step was not applied
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


@pytest.mark.parametrize("warmup", [True, False])
def test_ema_is_the_exponential_average_of_the_weight_history(tmp_path, warmup):
    decay = 0.9
    t = _trainer(tmp_path, steps=12, ema_decay=decay, ema_warmup=warmup)
    history = []
    t.on_step.append(lambda tr: history.append(tr.model.net.out.bias.detach().clone()))
    first = t.model.net.out.bias.detach().clone()
    # the EMA copies the weights at the first update; then ema <- d_n ema + (1 - d_n) w with
    # d_n = min(decay, (1 + n) / (10 + n)) after n updates (warm-up), or d_n = decay
    t.fit()
    expected = history[0]
    for n, w in enumerate(history[1:], start=1):
        d = min(decay, (1 + n) / (10 + n)) if warmup else decay
        expected = d * expected + (1 - d) * w
    torch.testing.assert_close(t.ema_model.net.out.bias, expected)
    assert not torch.equal(first, history[-1])
    assert t.ema.last_decay == pytest.approx(min(decay, 12 / 21) if warmup else decay)


def test_ema_warmup_forgets_the_initial_weights_and_reaches_the_set_decay():
    """The weight the average gives the initial (untrained) network after n updates: with warm-up
    it is prod_k d_k, tiny after a few hundred steps; without it decay^(n-1) (37 % after 1,000
    steps at 0.999). The warm-up ends where (1 + n) / (10 + n) reaches the decay: n = 8,990 for 0.999."""
    from sde_diffusion.training.ema import EMA

    net = torch.nn.Linear(1, 1, bias=False)
    ema = EMA(net, 0.999)
    with torch.no_grad():
        net.weight.fill_(1.0)  # the "initial" network
        ema.update()
        net.weight.zero_()  # every later step: the trained network
        for _ in range(999):
            ema.update()
    share_of_init = float(ema.module.weight)
    assert share_of_init == pytest.approx(float(torch.tensor([(1 + n) / (10 + n) for n in range(1, 1000)], dtype=torch.float64).prod()), rel=1e-4)
    assert share_of_init < 1e-20
    no_warmup = EMA(net, 0.999, warmup=False)
    assert no_warmup.decay_at(1) == 0.999 and 0.999**999 > 0.36
    assert ema.decay_at(8989) < 0.999 and ema.decay_at(8990) == pytest.approx(0.999) and ema.decay_at(50_000) == 0.999


def _lrs(trainer, steps):
    seen = []
    trainer.on_step.append(lambda tr: seen.append(tr.optimizer.param_groups[0]["lr"]))
    first = trainer.optimizer.param_groups[0]["lr"]
    trainer.fit()
    return [first, *seen][:steps]


def test_the_default_schedule_is_the_linear_warm_up_lr_min_1_k_plus_1_over_w(tmp_path):
    t = _trainer(tmp_path, steps=8, warmup_steps=4)  # lr 1e-2
    assert _lrs(t, 8) == [1e-2 * min(1.0, (k + 1) / 4) for k in range(8)]  # to the bit: the closed form
    assert sd.Trainer(t.model, t.sde, _data(), sd.TrainOptions(lr=1e-3, warmup_steps=0, progress=False)).optimizer.param_groups[0]["lr"] == 1e-3


@pytest.mark.parametrize("shape", ["linear", "cosine"])
def test_decaying_schedules_warm_up_then_reach_their_final_ratio(tmp_path, shape):
    from sde_diffusion.training import lr_schedule

    schedule = functools.partial(lr_schedule, shape=shape, warmup_steps=4, total_steps=24, final_ratio=0.1)
    t = sd.Trainer(_trainer(tmp_path, steps=24).model, sd.VPSDE(), _data(), sd.TrainOptions(steps=24, batch_size=32, lr=1e-2, progress=False), lr_schedule=schedule)
    lrs = _lrs(t, 24)
    assert lrs[:4] == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2]) and lrs[4] == pytest.approx(1e-2)
    p = [(k - 4) / 20 for k in range(4, 24)]
    expected = [1e-2 * (1 - 0.9 * q) for q in p] if shape == "linear" else [1e-3 + 9e-3 * 0.5 * (1 + math.cos(math.pi * q)) for q in p]
    assert lrs[4:] == pytest.approx(expected)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))


def test_adamw_from_a_factory_and_a_resume_continues_the_schedule(tmp_path):
    from sde_diffusion.training import lr_schedule

    make = dict(optimizer=functools.partial(torch.optim.AdamW, lr=1e-2, weight_decay=0.1),
                lr_schedule=functools.partial(lr_schedule, shape="cosine", warmup_steps=5, total_steps=30))  # fmt: skip
    def trainer(run, steps, resume=False):
        torch.manual_seed(123)
        sde = sd.VPSDE()
        model = sd.EpsilonParameterization(sd.TimeMLP((2,), hidden_dim=16, n_layers=2), sde)
        opts = sd.TrainOptions(steps=steps, batch_size=32, lr=1e-2, checkpoint_every=10, log_every=5, progress=False, resume=resume)
        return sd.Trainer(model, sde, _data(), opts, run_dir=run, seed=0, **make)

    whole = trainer(tmp_path / "a", 30)
    assert isinstance(whole.optimizer, torch.optim.AdamW)
    whole.fit()
    trainer(tmp_path / "b", 17).fit()
    resumed = trainer(tmp_path / "b", 30, resume=True)
    resumed.fit()
    _assert_same_state(load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt"), load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt"))


def test_a_checkpoint_without_a_schedule_state_resumes_on_the_same_rates(tmp_path):
    """Checkpoints written before schedules were saved hold no "scheduler": the rate is recomputed
    from the step, and the resumed run equals the uninterrupted one."""
    _trainer(tmp_path / "a", steps=12).fit()
    _trainer(tmp_path / "b", steps=7).fit()
    path = tmp_path / "b" / "checkpoints" / "last.pt"
    old = {k: v for k, v in load_checkpoint(path).items() if k not in ("scheduler", "sha256", "format")}
    save_checkpoint(path, old)
    _trainer(tmp_path / "b", steps=12, resume=True).fit()
    _assert_same_state(load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt"), load_checkpoint(path))


def test_clipping(tmp_path):
    t = _trainer(tmp_path, steps=1, grad_clip=1e-3)
    _, raw_norm = t.train_step()
    clipped = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in t.model.parameters()]))
    assert raw_norm.item() > 1e-3 and clipped.item() == pytest.approx(1e-3, rel=1e-3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lr": -1.0}, "train.lr must be a positive number"),
        ({"lr": float("nan")}, "train.lr"),
        ({"steps": 0}, "train.steps must be an integer >= 1"),
        ({"batch_size": 2.5}, "train.batch_size"),
        ({"ema_decay": 1.0}, "train.ema_decay"),
        ({"grad_clip": -1.0}, "train.grad_clip"),
        ({"warmup_steps": -5}, "train.warmup_steps"),
        ({"resume": "yes"}, "train.resume"),
        ({"ema_warmup": 1}, "train.ema_warmup"),
    ],
)
def test_bad_options_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sd.TrainOptions(**kwargs)


def test_bad_training_data_is_rejected(tmp_path):
    sde = sd.VPSDE()
    model = sd.EpsilonParameterization(sd.TimeMLP((2,), hidden_dim=8, n_layers=1), sde)
    bad = torch.randn(10, 2)
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite values in 1 of 10 samples"):
        sd.Trainer(model, sde, bad, sd.TrainOptions(progress=False))


def test_sliced_score_matching_trains_through_the_trainer(tmp_path):
    t = _trainer(tmp_path, steps=5, loss_fn=functools.partial(sd.sliced_score_matching, n_projections=2))
    result = t.fit()
    assert result.steps == 5 and result.last_loss == result.last_loss  # finite, not NaN


def test_a_metrics_line_cut_short_by_a_kill_is_dropped_on_resume(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.write({"step": 1, "loss": 1.0})
    log.write({"step": 2, "loss": 0.9})
    with log.path.open("a") as f:
        f.write('{"step": 3, "lo')
    assert [r["step"] for r in log.read()] == [1, 2]
    log.truncate_after(2)
    assert log.path.read_text().count("\n") == 2


def test_stale_temporary_files_of_a_killed_writer_are_removed(tmp_path):
    (tmp_path / ".last.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    save_checkpoint(tmp_path / "last.pt", {"w": torch.ones(2), "step": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_ema_follows_its_recursion_and_matches_averaged_model():
    """First update copies the weights, then ema <- d ema + (1 - d) w; the state_dict layout and every
    value equal torch's AveragedModel with EMA averaging, so checkpoints load either way."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from sde_diffusion.training.ema import EMA

    torch.manual_seed(0)
    net = sd.TimeMLP((2,), hidden_dim=8, n_layers=1)
    decay = 0.9
    ema, reference = EMA(net, decay, warmup=False), AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    expected = None
    for k in range(4):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))  # an "optimiser step", in place
        w = torch.cat([p.detach().flatten() for p in net.parameters()])
        expected = w.clone() if k == 0 else decay * expected + (1 - decay) * w
        ema.update()
        reference.update_parameters(net)
    got = torch.cat([p.flatten() for p in ema.module.parameters()])
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    ours, theirs = ema.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys() and int(ours["n_averaged"]) == 4
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-6, atol=1e-6, msg=key)
