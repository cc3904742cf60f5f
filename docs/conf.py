"""Sphinx configuration of rnnshap's documentation site.

Build it (``pip install -e '.[docs]'``)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

The markdown pages are read by myst-parser, the API reference is generated from the public
docstrings (autodoc, autosummary, napoleon for their Google-style sections), and the examples in
``docs/gallery/`` are executed by sphinx-gallery, their figures shown on their pages.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import rnnshap

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent / "sphinxext"))

project = "rnnshap"
author = "the rnnshap authors"
copyright = "2026, the rnnshap authors"
release = rnnshap.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx.ext.mathjax",
    "sphinx_gallery.gen_gallery",
    "refusals",  # docs/sphinxext/refusals.py: the refusals page, read from rnnshap's errors
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "examples", "gallery", "_parts", "Thumbs.db", ".DS_Store"]

# markdown: headings get anchors (the pages link to each other's sections), $…$ math
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 4

# the API reference: every public name, from its docstring
autosummary_generate = True
autodoc_default_options = {"members": True, "show-inheritance": False}
autodoc_typehints = "description"
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = True
# optional libraries the adapters import only when used
autodoc_mock_imports: list[str] = []

html_theme = "furo"
html_title = f"rnnshap {release}"
html_static_path: list[str] = []

# the gallery: every example runs at build time, headless, its figures on its page
os.environ.setdefault("MPLBACKEND", "Agg")
# transformers (beside the foundation forecasters) must not reach for TensorFlow when shap probes a model (Keras 3)
os.environ.setdefault("USE_TF", "0")


warnings.filterwarnings("ignore", category=UserWarning, message="Matplotlib is currently using agg")
sphinx_gallery_conf = {
    "examples_dirs": ["gallery"],
    "gallery_dirs": ["auto_examples"],
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "matplotlib_animations": False,
    "image_scrapers": ("matplotlib", "gallery_figures.unmanaged_figures"),
    "show_memory": False,
    "abort_on_example_error": True,
    # only HTML representations (a token plot); a module's text repr after ``model.eval()`` is not output
    "capture_repr": ("_repr_html_",),
}
