"""The ``rnnshap-refusals`` directive: every error rnnshap raises on purpose, with its advice, read from the code.

The page ``docs/refusals.md`` holds the directive; at build time it imports the modules that define rnnshap's
errors, walks :class:`rnnshap.errors.RnnShapError`'s subclasses, and writes each one's place in the hierarchy and
docstring, then the advice :class:`rnnshap.errors.UnsupportedOperationError` gives for each kind of refused
operation (:data:`rnnshap.errors.ADVICE`), so the page cannot drift from the messages.
"""

from __future__ import annotations

import importlib
import inspect
import re

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

#: the modules that define an error class (a module whose library is not installed is left out, and said so)
MODULES = (
    "rnnshap.errors",
    "rnnshap.versions",
    "rnnshap.classifiers",
    "rnnshap.captum.arguments",
    "rnnshap.engines.keras.private",
)


def error_classes() -> tuple[list[type], list[str]]:
    """Every subclass of RnnShapError defined in :data:`MODULES`, base classes first, and the modules not imported."""
    from rnnshap.errors import RnnShapError

    missing = []
    for name in MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    found: list[type] = []

    def walk(cls: type) -> None:
        for sub in sorted(cls.__subclasses__(), key=lambda c: c.__name__):
            if sub.__module__.startswith("rnnshap.") and sub not in found:
                found.append(sub)
                walk(sub)

    found.append(RnnShapError)
    walk(RnnShapError)
    return found, missing


def _markdown(docstring: str) -> str:
    """A docstring's reStructuredText roles and literals as Markdown (the page is read by MyST)."""
    text = re.sub(r":(?:class|data|func|meth|attr):`~?([^`]+)`", r"`\1`", docstring)
    return text.replace("``", "`")


def refusals_text() -> list[str]:
    """The page's body, in Markdown."""
    from rnnshap import errors

    classes, missing = error_classes()
    lines: list[str] = []
    for cls in classes:
        public = "rnnshap.errors" if hasattr(errors, cls.__name__) else cls.__module__
        bases = ", ".join(f"`{base.__name__}`" for base in cls.__bases__)
        lines += [f"## `{public}.{cls.__name__}`", "", f"A subclass of {bases}.", ""]
        lines += _markdown(inspect.getdoc(cls) or "").splitlines() + [""]
    lines += ["## The advice for each kind of refused operation", ""]
    lines += [
        "`UnsupportedOperationError` lists every refused operation of a forward pass at once, then the advice of "
        "each kind among them (`{op}` stands for the first operation of that kind):",
        "",
    ]
    for kind, advice in errors.ADVICE.items():
        lines += [f"### `{kind}`", "", "```text", *advice.splitlines(), "```", ""]
    lines += ["Every refusal of an operation ends with the Shapley mode, which needs only the forward:", ""]
    lines += ["```text", *errors.SHAPLEY_DOOR.splitlines(), "```", ""]
    if missing:
        lines += [f"(Not imported where this page was built: {', '.join(missing)}.)", ""]
    return lines


class Refusals(SphinxDirective):
    has_content = False

    def run(self) -> list[nodes.Node]:
        container = nodes.section()
        container.document = self.state.document
        nested_parse_with_titles(self.state, StringList(refusals_text(), source="rnnshap.errors"), container)
        return list(container.children)


def setup(app):  # noqa: ANN001, ANN201 - Sphinx's extension hook
    app.add_directive("rnnshap-refusals", Refusals)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
