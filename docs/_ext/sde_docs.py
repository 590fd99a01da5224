"""Sphinx extension: the pages generated from the code, written before Sphinx reads the sources.

- ``_generated/configuration.md``: every config group shipped in ``conf/`` (the package's
  ``sde_diffusion.conf``) with its options and each option's leading comment, the listing that
  ``sde-train --help`` prints (``sde_diffusion.cli._common.group_options``; tests/test_docs.py checks
  that the two agree).
- ``_generated/api/<package>.md``: one page per subpackage of :mod:`sde_diffusion`, an ``automodule``
  per public module, so a new module appears in the API reference without editing the docs.
"""

from __future__ import annotations

import pkgutil
import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1]
CONF = DOCS.parent / "conf"
GENERATED = DOCS / "_generated"

# The apps: the command-line programs, documented on their pages and by --help, not in the API reference.
API_SKIP = {"sde_diffusion.cli", "sde_diffusion.conf", *(f"sde_diffusion.{m}" for m in ("config", "schemas", "runs", "plotting"))}
"""Not documented: the apps, the shipped configs, and the old paths of the configuration layer's
modules (each the same module as its sde_diffusion.app one, documented there)."""


def _is_group(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith(("_", "."))


def config_groups(conf: Path = CONF) -> dict[str, list[Path]]:
    """The groups of ``conf`` and their option files, as ``group_options`` finds them: top-level
    folders, their subfolders as ``group/sub``, except inside Hydra's own ``hydra``."""
    groups = {}
    for entry in sorted(conf.iterdir()):
        if _is_group(entry):
            groups[entry.name] = sorted(entry.glob("*.yaml"))
            if entry.name != "hydra":
                for sub in sorted(entry.iterdir()):
                    if _is_group(sub):
                        groups[f"{entry.name}/{sub.name}"] = sorted(sub.glob("*.yaml"))
    return groups


def leading_comment(path: Path) -> str:
    """The comment at the top of an option's file, up to its first blank comment line or indented
    example (``#   sde-train ...``), on one line; Hydra's ``# @package`` directive skipped."""
    words = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line[1:]
        if text.strip().startswith("@package"):
            continue
        if not text.strip() or text.startswith("  "):
            break
        words.append(text.strip())
    if not words:  # no comment: what the option builds
        keys = dict(line.split(":", 1) for line in path.read_text().splitlines() if re.match(r"^(_target_|name):", line))
        words = [
            f"`{keys['_target_'].strip()}`" if "_target_" in keys else "",
            f"with `name: {keys['name'].strip()}`" if "name" in keys else "",
        ]
    return " ".join(w for w in words if w)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def configuration_markdown(conf: Path = CONF) -> str:
    lines = []
    for group, files in config_groups(conf).items():
        lines += [f"## `{group}`", ""]
        if group == "hydra":
            subs = sorted(
                f"`hydra/{sub.name}={p.stem}`" for sub in (conf / "hydra").iterdir() if _is_group(sub) for p in sub.glob("*.yaml")
            )
            lines += [
                "Hydra's own settings, whose options Hydra and its plugins provide; this package adds "
                + ", ".join(subs)
                + " (see [Sweeps and distributed runs](../sweeps.md)).",
                "",
            ]
            continue
        lines += ["| option | what it is |", "|---|---|"]
        lines += [f"| `{p.stem}` | {_cell(leading_comment(p))} |" for p in files]
        lines.append("")
    return "\n".join(lines)


def api_modules(package: str = "sde_diffusion") -> dict[str, list[str]]:
    """``{subpackage or module: [its public modules]}``: the top-level package's own modules under
    ``sde_diffusion``, each subpackage's under its name."""
    import sde_diffusion

    pages: dict[str, list[str]] = {package: [package]}
    for info in pkgutil.iter_modules(sde_diffusion.__path__, f"{package}."):
        name = info.name
        if name.rsplit(".", 1)[1].startswith("_") or name in API_SKIP:
            continue
        if info.ispkg:
            sub = __import__(name, fromlist=["_"])
            pages[name] = [name] + [
                m.name for m in pkgutil.iter_modules(sub.__path__, f"{name}.") if not m.name.rsplit(".", 1)[1].startswith("_")
            ]
        else:
            pages[package].append(name)
    return pages


def api_markdown(page: str, modules: list[str]) -> str:
    lines = [f"# `{page}`", ""]
    for module in modules:
        # a package's own names are re-exports, documented in the module that defines them
        options = ["   :no-members:"] if hasattr(__import__(module, fromlist=["_"]), "__path__") else []
        heading = [f"## `{module.rsplit('.', 1)[1]}`", ""] if module != page else []
        lines += [*heading, "```{eval-rst}", f".. automodule:: {module}", *options, "```", ""]
    return "\n".join(lines)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:  # unchanged files keep their time: no needless rebuilds
        path.write_text(text)


def generate(app=None) -> None:
    header = (
        "<!-- generated by docs/_ext/sde_docs.py from conf/ at every build; do not edit -->\n\n"
        "# Configuration reference\n\n"
        "Every config group shipped with the apps and its options, as `sde-train --help` lists them "
        "(`sde-sample` shares the groups it uses; `bound` is `sde-eval`'s own), with the comment that heads each "
        "option's file (`conf/<group>/<option>.yaml`). Choose one with `group=option`; "
        "`<app> <overrides> --cfg job` prints the composed config without running.\n\n"
    )
    _write(GENERATED / "configuration.md", header + configuration_markdown())
    api = api_modules()
    for page, modules in api.items():
        _write(GENERATED / "api" / f"{page}.md", api_markdown(page, modules))
    for stale in (GENERATED / "api").glob("*.md"):
        if stale.stem not in api:
            stale.unlink()


def skip_foreign(app, what, name, obj, skip, options):
    """Leave out what a module imported from another library (``torchdiffeq.odeint``, Hydra's
    ``instantiate``): it is documented there. Other members keep autodoc's decision."""
    import inspect

    module = getattr(obj, "__module__", None)
    imported = (inspect.isroutine(obj) or inspect.isclass(obj)) and isinstance(module, str) and not module.startswith("sde_diffusion")
    if what == "module" and imported:  # type aliases (Callable[...]) with this package's docstrings stay
        return True
    return None


def setup(app):
    app.connect("autodoc-skip-member", skip_foreign)
    app.connect("builder-inited", generate)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
