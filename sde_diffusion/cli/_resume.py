"""Resuming an ``sde-train`` run from its own saved config, without touching it when refused.

``sde-train hydra.run.dir=R train.resume=true [train.steps=N ...]`` continues the run in ``R``. The
checks that decide whether a command may use ``R`` at all run before Hydra starts, because Hydra
rewrites ``R/.hydra/`` as soon as it does:

- the run's own command-line overrides (``R/.hydra/overrides.yaml``) are replayed, so a resume
  needs none of them repeated; those the user gives win;
- Hydra is told not to write ``R/.hydra/`` (``hydra.output_subdir=null``): the app writes the
  merged config there itself once the resume has been accepted (:func:`save_run_config`), so a
  refused resume leaves the directory byte for byte as it was;
- a directory that already holds a checkpoint is refused without ``train.resume=true`` (training
  afresh would overwrite it), and ``train.resume=true`` is refused where there is nothing to resume.

Inside the app, :func:`contradictions` compares the composed config with the one stored in the
checkpoint: the sections the weights depend on (``FIXED``) may not change.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .._atomic import write_atomically
from ._common import fail, override_key

FIXED = ("sde", "model", "data", "loss", "seed", "train.ema", "train.ema_sigma_rel")
"""Config sections (and keys) a resumed run may not change: the checkpoint's weights, optimizer state,
weight averages and random streams were made with them."""


def _value_of(argv: list[str], key: str) -> str | None:
    values = [a.split("=", 1)[1] for a in argv if "=" in a and not a.startswith("-") and override_key(a) == key]
    return values[-1] if values else None


def prepare(prog: str, argv: list[str]) -> list[str]:
    """Check a command against the run directory it names, before Hydra touches it; returns the
    overrides to run with (the saved ones replayed in front of the given ones when resuming)."""
    resume = (_value_of(argv, "train.resume") or "").lower() == "true"
    multirun = any(a in ("-m", "--multirun") for a in argv)
    if multirun:
        if resume:
            fail(prog, "train.resume=true continues one run: drop -m and name the run with hydra.run.dir=<its directory>")
        return argv
    run_dir = _value_of(argv, "hydra.run.dir")
    if run_dir is None:
        if resume:
            fail(prog, "train.resume=true needs the run to continue: add hydra.run.dir=<the directory sde-train wrote>")
        return argv
    run_dir_path = Path(run_dir).expanduser()
    checkpoint = run_dir_path / "checkpoints" / "last.pt"
    if not resume:
        if checkpoint.exists():
            fail(
                prog,
                f"{run_dir} already holds a training run (checkpoints/{checkpoint.name}); continue it with train.resume=true, or choose a new hydra.run.dir",
            )
        return argv
    if not checkpoint.is_file():
        fail(
            prog,
            f"train.resume=true but {run_dir} holds no checkpoints/last.pt to continue; check hydra.run.dir, or start afresh without train.resume",
        )
    saved = run_dir_path / ".hydra" / "overrides.yaml"
    if not saved.is_file():
        fail(prog, f"train.resume=true but {run_dir} has no .hydra/overrides.yaml (was it written by sde-train?)")
    given = {override_key(a) for a in argv if "=" in a and not a.startswith("-")}
    replayed = [str(a) for a in OmegaConf.to_container(OmegaConf.load(saved)) or [] if override_key(str(a)) not in given | {"train.resume"}]
    return [*replayed, *_pinned(run_dir_path, given), *argv, "hydra.output_subdir=null"]


DEFAULTS_CHANGED = ("model.preconditioning", "loss.weighting.P_mean")
"""Keys whose shipped default changed after runs were saved (``sde=ve`` and ``sde=edm`` now precondition
by default; ``loss=edm``'s ``P_mean`` moved with the data's scale). Replaying a run's overrides composes
today's defaults, so a resume pins these to the run's saved values (for a run saved before the key
existed, its :data:`ADDED_LATER` value; none there: nothing to pin) unless the command gives them."""


def _pinned(run_dir: Path, given: set[str]) -> list[str]:
    """Overrides that hold the keys of :data:`DEFAULTS_CHANGED` to the values the run in ``run_dir`` was
    saved with (``.hydra/config.yaml``), for those the command does not give."""
    path = run_dir / ".hydra" / "config.yaml"
    saved = OmegaConf.to_container(OmegaConf.load(path)) if path.is_file() else {}
    pins = []
    for key in DEFAULTS_CHANGED:
        value = _select(saved, key) if isinstance(saved, dict) else _MISSING
        value = ADDED_LATER.get(key) if value is _MISSING else value
        if key not in given and value is not None:
            pins.append(f"{key}={value}")
    return pins


def _differences(old, new, prefix: str) -> list[str]:
    """Dotted keys whose value in ``old`` differs in ``new``; keys that only ``new`` has are not
    differences (a later version may add options with defaults)."""
    if isinstance(old, dict) and isinstance(new, dict):
        if "_target_" in old and old["_target_"] != new.get("_target_"):  # another class: its options differ too
            return [f"{prefix} (saved {old['_target_']}, given {new.get('_target_')})"]
        return [d for k in old for d in _differences(old[k], new.get(k, _MISSING), f"{prefix}.{k}")]
    return [] if old == new else [f"{prefix} (saved {old!r}, given {'no value' if new is _MISSING else repr(new)})"]


_MISSING = object()

ADDED_LATER = {"loss.learned_weighting": False, "model.preconditioning": "none"}
"""Keys under :data:`FIXED` added after checkpoints were written, and the value such a checkpoint was
trained with: a saved config without the key is held to it (a key missing on both sides is not)."""


def contradictions(saved: dict, cfg: DictConfig) -> list[str]:
    """What the composed ``cfg`` changes in the checkpoint's ``saved`` config among :data:`FIXED`."""
    new = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(new, dict)  # the container of a DictConfig is a dict
    olds = {key: _select(saved, key) for key in FIXED}
    changed = [d for key, old in olds.items() if old is not _MISSING for d in _differences(old, _select(new, key), key)]
    for key, before in ADDED_LATER.items():
        given = _select(new, key)
        if _select(saved, key) is _MISSING and given is not _MISSING and given != before:
            changed.append(f"{key} (saved before the key existed: {before!r}, given {given!r})")
    return changed


def _select(config: dict, dotted: str):
    """The value at the dotted key of a plain config, or :data:`_MISSING` (a checkpoint saved before the key existed)."""
    for part in dotted.split("."):
        if not isinstance(config, dict) or part not in config:
            return _MISSING
        config = config[part]
    return config


def save_run_config(run_dir: Path, cfg: DictConfig, overrides: list[str]) -> None:
    """Write the accepted resume's config and overrides into ``run_dir/.hydra`` as Hydra would
    (atomically: a crash leaves the old files or the new ones)."""
    hydra_dir = run_dir / ".hydra"
    hydra_dir.mkdir(exist_ok=True)
    write_atomically(hydra_dir / "config.yaml", lambda f: f.write(OmegaConf.to_yaml(cfg)), binary=False, mode=0o644)
    write_atomically(
        hydra_dir / "overrides.yaml", lambda f: f.write(OmegaConf.to_yaml(OmegaConf.create(list(overrides)))), binary=False, mode=0o644
    )
