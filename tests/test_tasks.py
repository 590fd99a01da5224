"""The training tasks (sde_diffusion.tasks) own what sde-sample draws from their runs and why a run
is refused as a score model; the apps only choose the task by the run's config."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import sde_diffusion as sd
from analytic import mixture
from sde_diffusion.samplers import ddim
from sde_diffusion.samplers.draw import draw_samples
from sde_diffusion.tasks import TASKS, Drawn
from sde_diffusion.timesteps import uniform_time_grid


def _run(dist, sde):
    """A finished run as the tasks see it: an SDE, its data (the mixture's held-out draws), a device."""
    data = SimpleNamespace(data_shape=(2,), test=dist.sample(64, generator=torch.Generator().manual_seed(1)))
    return SimpleNamespace(sde=sde, data=data, device=torch.device("cpu"), run_dir=Path("runs/x"), conditioner=None)


def _grid(n_steps: int):
    return lambda sde, dtype=torch.float32, device=None: uniform_time_grid(sde, n_steps, eps=1e-3, dtype=dtype, device=device)


def test_the_score_task_draws_what_draw_samples_draws_with_the_held_out_data_beside():
    dist, sde = mixture(2), sd.VPSDE()
    run = _run(dist, sde)
    score = dist.score_fn(sde)
    drawn = TASKS["score"].draw(run, score, ddim, _grid(10), 12, batch_size=5, seed=3, progress=False)
    direct = draw_samples(sde, score, ddim, _grid(10), (2,), 12, batch_size=5, seed=3, device=torch.device("cpu"))
    assert isinstance(drawn, Drawn)
    assert torch.equal(drawn.samples.samples, direct.samples) and drawn.held_out is run.data.test
    assert drawn.inputs is None and drawn.latents is None and drawn.extra == {}


def test_a_cascade_draw_super_resolves_the_base_samples_with_its_second_stage():
    dist, sde = mixture(2), sd.VPSDE()
    run, score = _run(dist, sde), dist.score_fn(sde)
    calls = []

    def super_resolve(low, *, batch_size, seed, progress):  # a second stage that doubles its inputs
        calls.append((low.clone(), batch_size, seed))
        return sd.samplers.draw.DrawnSamples(2 * low, torch.full((low.shape[0],), 7), [7], 0.5)

    sr = SimpleNamespace(super_resolve=super_resolve, data=SimpleNamespace(test=torch.zeros(3, 2)), run_dir=Path("runs/sr"))
    drawn = TASKS["score"].draw(run, score, ddim, _grid(10), 4, batch_size=4, seed=0, progress=False, sr=sr)
    base = draw_samples(sde, score, ddim, _grid(10), (2,), 4, batch_size=4, seed=0, device=torch.device("cpu")).samples
    assert torch.equal(drawn.inputs, base) and torch.equal(drawn.samples.samples, 2 * base)
    assert drawn.samples.batch_nfe == [10 + 7] and drawn.held_out is sr.data.test
    assert drawn.extra == {"cascade_sr_dir": "runs/sr"} and calls[0][1:] == (4, 0)


def test_a_super_resolution_draw_needs_its_low_resolution_inputs():
    run = _run(mixture(2), sd.VPSDE())
    with pytest.raises(ValueError, match="low-resolution images"):
        TASKS["super_resolution"].draw(run, None, ddim, _grid(4), 2, batch_size=2, seed=0, progress=False)


@pytest.mark.parametrize(
    ("task", "words"),
    [
        ("classifier", "holds a classifier (task=classifier), not a score model: use it as sde-sample classifier_dir"),
        ("cold", "holds a cold diffusion restorer, not a score model"),
        ("autoencoder", "sde-train experiment=latent_digits autoencoder_dir=runs/x"),
    ],
)
def test_tasks_without_scores_refuse_to_draw_in_their_own_words(task, words):
    run = _run(mixture(2), sd.VPSDE())
    assert words in TASKS[task].refusal("sde-sample", run.run_dir)
    with pytest.raises(ValueError, match="not a score model|autoencoder_dir"):
        TASKS[task].draw(run, None, ddim, _grid(4), 2, batch_size=2, seed=0, progress=False)


def test_which_apps_a_super_resolution_run_serves():
    sr = TASKS["super_resolution"]
    assert sr.refusal("sde-sample", Path("r")) is None and TASKS["score"].refusal("sde-eval", Path("r")) is None
    assert "conditional on a low-resolution image" in sr.refusal("sde-eval", Path("r"))
    assert "its summary.json holds its accuracy" in TASKS["classifier"].refusal("sde-eval", Path("r"))


def test_a_super_resolution_draw_is_super_resolve_with_the_chosen_score_and_sampler():
    from sde_diffusion.app.runs import TrainedRun
    from sde_diffusion.samplers.draw import super_resolve

    sde, conditioner = sd.VPSDE(), sd.SuperResolution(factor=2)

    def model(x, t, labels=None, cond=None):  # an exact-looking score that reads its conditioning image
        up = torch.nn.functional.interpolate(cond.image, scale_factor=2)
        return -(x - 0.5 * up) / (1.0 + t.reshape(-1, 1, 1, 1))

    def other(x, t, labels=None, cond=None):  # the score sde-sample chose: a guided one, say
        return 0.9 * model(x, t, labels, cond)

    test = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    data = SimpleNamespace(data_shape=(1, 4, 4), test=test)
    trained = TrainedRun(Path("runs/sr"), None, sde, data, model, 10, torch.device("cpu"), conditioner)
    low = test[:, :, ::2, ::2]
    drawn = TASKS["super_resolution"].draw(trained, other, ddim, _grid(5), 6, batch_size=4, seed=2, progress=False, low=low)
    direct = super_resolve(sde, other, ddim, _grid(5), conditioner, low, batch_size=4, seed=2)
    assert torch.equal(drawn.samples.samples, direct.samples) and drawn.inputs is low and drawn.held_out is test
    own = super_resolve(sde, model, ddim, _grid(5), conditioner, low, batch_size=4, seed=2)
    assert not torch.equal(drawn.samples.samples, own.samples)  # the chosen score, not the run's model
