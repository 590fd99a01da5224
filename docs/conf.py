"""Sphinx configuration: Markdown pages (MyST), the API reference from the docstrings (autodoc) and
the pages generated from the code (_ext/sde_docs.py). Build: sphinx-build -W -b html docs docs/_build/html"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "_ext"))

project = "sde-diffusion"
author = "sde-diffusion contributors"
copyright = "2026, sde-diffusion contributors"
release = "0.1.0"

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax", "sde_docs"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
root_doc = "index"

myst_heading_anchors = 3  # [text](page.md#a-heading) links, as on GitHub
myst_enable_extensions = ["colon_fence"]
highlight_language = "none"  # indented blocks are shell commands and output

autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "description"
autodoc_preserve_defaults = True
autodoc_inherit_docstrings = False  # torch.nn.Module's docstrings are not this package's to check

html_theme = "furo"
html_title = "sde-diffusion"
