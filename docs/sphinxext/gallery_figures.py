"""sphinx-gallery scraper for figures made without pyplot."""

from __future__ import annotations

from typing import Any


def unmanaged_figures(block: Any, block_vars: dict[str, Any], gallery_conf: dict[str, Any]) -> str:
    """Figures an example holds in its variables (rnnshap's plots and darts' are made without
    pyplot, out of the matplotlib scraper's sight): each new one is saved once, in order."""
    from matplotlib.figure import Figure
    from sphinx_gallery.scrapers import figure_rst

    seen = block_vars.setdefault("rnnshap_seen_figures", set())
    paths = []
    for value in list(block_vars["example_globals"].values()):
        figures = value if isinstance(value, (list, tuple)) else [value]
        for figure in figures:
            if isinstance(figure, Figure) and id(figure) not in seen and figure.canvas.manager is None:
                seen.add(id(figure))
                path = next(block_vars["image_path_iterator"])
                figure.savefig(path, dpi=110, bbox_inches="tight")
                paths.append(path)
    return figure_rst(paths, gallery_conf["src_dir"])
