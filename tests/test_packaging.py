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
