"""Training batches streamed from host memory (``train.data_on_device=false``): each step trains on the
rows of its counter-based indices, whatever the workers prefetch; labels follow their rows; resume is
exact; memory-mapped data train exactly like the same data in memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import sde_diffusion as sd
from sde_diffusion.training.streaming import step_indices


def _data(n=200):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(0))


def _recording_loss(seen):
    def loss(score, sde, x0, generator=None):
        seen.append(x0.clone())
        return sd.denoising_score_matching(score, sde, x0, generator=generator)

    return loss


def _trainer(
    data, run_dir=None, *, steps=12, workers=2, resume=False, loss_fn=sd.denoising_score_matching, on_device=False, labels=None, **kw
):
    torch.manual_seed(0)
    sde = sd.VPSDE()
    model = kw.pop("model", None) or sd.EpsilonParameterization(sd.TimeMLP((2,), hidden_dim=16, n_layers=2), sde)
    options = sd.TrainOptions(
        steps=steps, batch_size=16, lr=1e-2, warmup_steps=2, checkpoint_every=5, log_every=5, progress=False, resume=resume,
        data_on_device=on_device, data_workers=workers, **kw,
    )  # fmt: skip
    return sd.Trainer(model, sde, data, options, loss_fn=loss_fn, run_dir=run_dir, seed=3, labels=labels)


def test_step_indices_depend_only_on_seed_and_step():
    a = [step_indices(100, 8, 3, k) for k in range(4)]
    assert all(torch.equal(step_indices(100, 8, 3, k), a[k]) for k in reversed(range(4)))  # any order
    assert not torch.equal(a[0], a[1]) and not torch.equal(a[0], step_indices(100, 8, 4, 0))
    assert a[0].dtype == torch.int64 and int(a[0].min()) >= 0 and int(a[0].max()) < 100


@pytest.mark.parametrize("workers", [0, 2])
def test_each_step_trains_on_the_rows_of_its_indices(workers):
    data, seen = _data(), []
    _trainer(data, workers=workers, loss_fn=_recording_loss(seen), grad_accumulation=2).fit()
    assert len(seen) == 24  # 12 steps x 2 micro-batches
    for k in range(12):
        rows = data[step_indices(200, 16, 3, k)]
        assert torch.equal(torch.cat(seen[2 * k : 2 * k + 2]), rows)


def test_streamed_resume_equals_the_uninterrupted_run(tmp_path):
    data = _data()
    full = _trainer(data, tmp_path / "full")
    full.fit()
    first = _trainer(data, tmp_path / "part", steps=5)
    first.fit()  # stops at the checkpoint of step 5
    resumed = _trainer(data, tmp_path / "part", resume=True)
    assert resumed.step == 5
    resumed.fit()
    for a, b in zip(full.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_memory_mapped_data_train_exactly_like_the_same_data_in_memory(tmp_path):
    data = _data()
    np.save(tmp_path / "x.npy", data.numpy())
    mapped = torch.from_numpy(np.load(tmp_path / "x.npy", mmap_mode="c"))  # copy-on-write: never written to
    a, b = _trainer(data), _trainer(mapped)
    a.fit(), b.fit()
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(p, q)


class _LabelEcho(nn.Module):
    """A class-conditional 'network' that records the labels it is given."""

    n_classes = 5

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.labels: list[torch.Tensor] = []

    def forward(self, x, t, y):
        self.labels.append(y.clone())
        return self.lin(x)


def test_labels_follow_their_streamed_rows():
    """Label k sits in column 0 of row k's data: the labels the network sees must be its rows'."""
    labels = torch.arange(200) % 5
    data = torch.stack([labels.double(), torch.randn(200, dtype=torch.float64)], 1).float()
    seen, model = [], _LabelEcho()
    _trainer(data, model=model, loss_fn=_recording_loss(seen), label_dropout=0.0, steps=4, labels=labels).fit()
    for x0, y in zip(seen, model.labels, strict=True):
        assert torch.equal(x0[:, 0].long(), y)


def test_resident_training_is_unchanged_by_the_new_options():
    """data_on_device=true (the default) draws its rows from the Trainer's generator as before."""
    data, seen = _data(), []
    _trainer(data, on_device=True, loss_fn=_recording_loss(seen), steps=3).fit()
    gen = torch.Generator().manual_seed(3)
    for x0 in seen:
        assert torch.equal(x0, data[torch.randint(200, (16,), generator=gen)])


def test_bad_worker_counts_are_refused():
    with pytest.raises(ValueError, match="train.data_workers"):
        sd.TrainOptions(data_workers=-1)
