"""Packaging: every subpackage is listed, and the wheel ships the Hydra configs."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "sde_diffusion").rglob("__init__.py")
    } | {"sde_diffusion.conf"}
    assert found == listed


def test_wheel_contains_the_configs(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("sde_diffusion-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"sde_diffusion/conf/{p.relative_to(ROOT / 'conf')}" for p in (ROOT / "conf").rglob("*.yaml")}
    assert shipped and shipped <= names
    assert "sde_diffusion/conf/config.yaml" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "sde-train = sde_diffusion.cli.train:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_importing_the_library_loads_no_app_layer():
    """``import sde_diffusion`` loads the core only: neither Hydra, OmegaConf nor matplotlib, which
    the apps and the plots need (``sd.load_run`` loads them on first use)."""
    import subprocess
    import sys

    code = (
        "import sys, sde_diffusion as sd\n"
        "heavy = {'hydra', 'omegaconf', 'matplotlib'}\n"
        "assert not heavy & set(sys.modules), sorted(heavy & set(sys.modules))\n"
        "assert callable(sd.load_run) and 'omegaconf' in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_the_configuration_layer_lives_in_app_and_its_old_paths_are_the_same_modules():
    """config, schemas, runs and plotting moved to ``sde_diffusion.app``; a script importing
    ``sde_diffusion.config`` (or ``from sde_diffusion.runs import load_run``) gets the very module."""
    import importlib
    import re
    import subprocess
    import sys

    for name in ("config", "schemas", "runs", "plotting"):
        old, new = importlib.import_module(f"sde_diffusion.{name}"), importlib.import_module(f"sde_diffusion.app.{name}")
        assert old is new and new.__name__ == f"sde_diffusion.app.{name}"
    from sde_diffusion.runs import load_run

    assert load_run is importlib.import_module("sde_diffusion").load_run
    # the core imports nothing of the configuration layer: only the apps, the tasks and sd.load_run do
    core = [p for p in (ROOT / "sde_diffusion").rglob("*.py") if not {"app", "cli", "tasks"} & set(p.relative_to(ROOT / "sde_diffusion").parts)]
    shims = {ROOT / "sde_diffusion" / f"{m}.py" for m in ("config", "schemas", "runs", "plotting")}
    importers = sorted(str(p.relative_to(ROOT)) for p in core if p not in shims and re.search(r"from \.+app\b", p.read_text()))
    # sd.load_run and the latent data set (which loads an autoencoder run) import it when first used
    assert importers == ["sde_diffusion/__init__.py", "sde_diffusion/latents.py"]
    code = "import sys, sde_diffusion.app\nassert not {'hydra', 'omegaconf', 'matplotlib'} & set(sys.modules)\n"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).returncode == 0
