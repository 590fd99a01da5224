"""task=classifier: a noisy-data classifier p(y | x_t, t) for classifier guidance (Dhariwal & Nichol 2021)."""

from __future__ import annotations

import torch

from ..app.plotting import accuracy_curve, loss_curve
from ..losses.classification import NOISE_LEVELS, noisy_accuracy
from .base import PROG, Finished, Task, say, training_summary, write_summary


class ClassifierTask(Task):
    """Held-out cross-entropy and accuracy at each noise level (accuracy.png); no samples."""

    name = "classifier"

    def refusal(self, prog: str, run_dir) -> str:
        use = f": use it as {prog} classifier_dir=... of a score run" if prog == "sde-sample" else "; its summary.json holds its accuracy"
        return f"{run_dir} holds a classifier (task=classifier), not a score model{use}"

    def summarize(self, run: Finished) -> dict:
        """task=classifier: held-out cross-entropy and accuracy at each noise level (accuracy.png), no samples."""
        exp, trainer, result, run_dir = run.exp, run.trainer, run.result, run.run_dir
        ema, test = trainer.ema_model.eval(), exp.data.test.to(exp.device)
        labels = exp.data.test_labels.to(exp.device)
        seed = run.seed
        gen = torch.Generator(device=exp.device).manual_seed(seed)
        with torch.no_grad():
            total = sum(
                exp.loss_fn(lambda x, t, y=yb: ema(x, t, y), exp.sde, xb, generator=gen).sum().item()
                for xb, yb in zip(test.split(1000), labels.split(1000), strict=True)
            )
        cross_entropy = total / test.shape[0]
        times = [f * exp.sde.T for f in NOISE_LEVELS]
        accuracy = noisy_accuracy(ema, exp.sde, test, labels, times, seed=seed).tolist()
        accuracy_curve(
            times,
            accuracy,
            run_dir / "accuracy.png",
            chance=1.0 / exp.score_model.n_classes,
            title=f"{exp.data.name}: {type(exp.sde).__name__} classifier",
        )
        loss_curve(
            run_dir / "metrics.jsonl",
            run_dir / "loss.png",
            held_out={"held-out cross-entropy, EMA weights": cross_entropy},
            title=f"{exp.data.name}: classifier",
        )
        summary = {
            "task": "classifier",
            **training_summary(result, run.threads),
            "held_out_cross_entropy": cross_entropy,
            "held_out_accuracy_times": times,
            "held_out_accuracy": accuracy,
            "n_classes": exp.score_model.n_classes,
            "device": str(exp.device),
            "run_dir": str(run_dir),
        }
        write_summary(run_dir, summary)
        shown = ", ".join(
            f"{a:.3f} at t={t:g}" for t, a in zip(times, accuracy, strict=True) if t in (times[0], times[len(times) // 2], times[-1])
        )
        say(
            f"{PROG}: {result.steps} steps in {result.seconds:.1f} s ({result.steps_per_sec:.0f} steps/s); held-out cross-entropy "
            f"{cross_entropy:.4f} averaged over t; accuracy {shown} (accuracy.png); wrote {run_dir}"
        )
        return summary
