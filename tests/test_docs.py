"""The documentation site stays true to the code: the configuration reference lists what ``--help``
lists, and the links between the README and the pages lead somewhere. (CI builds the site itself,
with warnings as errors: ``sphinx-build -W -b html docs docs/_build/html``.)"""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

from sde_diffusion.cli._common import group_options

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _sde_docs():
    """docs/_ext/sde_docs.py, the extension that writes the generated pages (it needs no Sphinx to import)."""
    spec = importlib.util.spec_from_file_location("sde_docs", DOCS / "_ext" / "sde_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configuration_reference_lists_the_groups_and_options_of_help():
    sde_docs = _sde_docs()
    listed = {group: [p.stem for p in files] for group, files in sde_docs.config_groups().items()}
    assert listed == {group: sorted(options) for group, options in group_options().items()}
    page = sde_docs.configuration_markdown()
    sections = dict(re.findall(r"^## `([^`]+)`\n\n(.*?)(?=^## |\Z)", page, flags=re.S | re.M))
    assert sorted(sections) == sorted(listed)
    for group, options in listed.items():
        assert re.findall(r"^\| `([^`]+)` \|", sections[group], flags=re.M) == options, group


def test_configuration_reference_gives_each_option_its_leading_comment():
    sde_docs = _sde_docs()
    assert sde_docs.leading_comment(ROOT / "conf" / "sde" / "vp.yaml") == (
        "Variance-preserving SDE (its discretization is DDPM), linear beta(t). Song et al. 2021."
    )
    digits = sde_docs.leading_comment(ROOT / "conf" / "experiment" / "digits.yaml")  # after Hydra's "# @package _global_"
    assert digits.startswith("Class-conditional 8x8 digits") and "@package" not in digits


def test_api_reference_covers_every_public_module():
    import pkgutil

    import sde_diffusion

    pages = _sde_docs().api_modules()
    documented = {module for modules in pages.values() for module in modules}
    public = {
        m.name
        for m in pkgutil.walk_packages(sde_diffusion.__path__, "sde_diffusion.")
        if not any(part.startswith("_") for part in m.name.split("."))
        and m.name.split(".")[1] not in ("cli", "conf")  # the apps and the shipped configs (not sde_diffusion.config)
    }
    # an old path of a moved module (sde_diffusion.config is sde_diffusion.app.config) is documented under its new name
    aliases = {name for name in public if importlib.import_module(name).__name__ != name}
    assert aliases == {f"sde_diffusion.{m}" for m in ("config", "schemas", "runs", "plotting")}
    assert public - aliases <= documented, (public - aliases) - documented
    assert not aliases & documented


def test_links_between_the_readme_and_the_pages_lead_to_files():
    for page in [ROOT / "README.md", *DOCS.glob("*.md")]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if not target.startswith(("http://", "https://", "mailto:")):
                assert (page.parent / target).exists(), f"{page.name} links to {target}"


def test_every_page_is_in_the_table_of_contents():
    index = (DOCS / "index.md").read_text()
    pages = {p.stem for p in DOCS.glob("*.md")} - {"index"}
    assert {page for page in pages if not re.search(rf"^{re.escape(page)}$", index, flags=re.M)} == set()


def test_every_table_row_has_the_header_s_cells():
    """A ``|`` inside a code span splits a Markdown table's cell (on GitHub as in the built pages)
    unless written ``\\|``."""
    for page in [ROOT / "README.md", *DOCS.glob("*.md")]:
        cells, fence = None, False
        for number, line in enumerate(page.read_text().splitlines(), 1):
            fence ^= line.startswith("```")
            if fence or not line.startswith("|"):
                cells = None
                continue
            n = len(re.split(r"(?<!\\)\|", line)) - 2
            cells = n if cells is None else cells
            assert n == cells, f"{page.name}:{number} has {n} cells, its header {cells}"
