"""What the entry points share: one-line errors, and checking group choices before Hydra starts."""

from __future__ import annotations

import importlib.resources
import re
import sys
from typing import NoReturn

_GROUP_CHOICE = re.compile(r"^(?P<group>[a-z_]+)=(?P<value>[A-Za-z0-9_.,\-]+)$")


def fail(prog: str, message: str, code: int = 2) -> NoReturn:
    """Print ``prog: error: message`` on one line to stderr and exit with ``code``."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(code)


def group_options() -> dict[str, list[str]]:
    """The config groups shipped in ``sde_diffusion.conf`` and their options."""
    root = importlib.resources.files("sde_diffusion.conf")
    groups = {}
    for entry in root.iterdir():
        if entry.is_dir() and not entry.name.startswith(("_", ".")):
            groups[entry.name] = sorted(p.name[:-5] for p in entry.iterdir() if p.name.endswith(".yaml"))
    return groups


def check_group_choices(prog: str, argv: list[str]) -> None:
    """Refuse ``group=unknown`` overrides with one line listing the valid options.

    Hydra's own message for this spans several lines; this check runs first. It is skipped when the
    user adds config directories of their own (``--config-dir``/``-cd``/``hydra.searchpath``), whose
    options only Hydra knows.
    """
    if any(a.startswith(("--config-dir", "-cd", "hydra.searchpath")) for a in argv):
        return
    groups = group_options()
    for arg in argv:
        match = _GROUP_CHOICE.match(arg)
        if not match or match["group"] not in groups:
            continue
        for value in match["value"].split(","):  # multirun lists: sde=vp,ve
            if value not in groups[match["group"]]:
                fail(
                    prog,
                    f"unknown {match['group']} '{value}'; choose one of: {', '.join(groups[match['group']])} "
                    f"(or set {match['group']}._target_ to your own class)",
                )
