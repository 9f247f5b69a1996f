"""The import-linter contracts in pyproject.toml name every module of llmtune.

``make lint`` runs ``lint-imports``, which fails the build when an import points upward; a module
no layer names would escape that check, so a new module must be placed in a layer here first.
"""

from __future__ import annotations

import ast
import pkgutil
from pathlib import Path

import tomllib

import llmtune

ROOT = Path(__file__).resolve().parent.parent


def _contracts() -> list[dict]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return data["tool"]["importlinter"]["contracts"]


def _layer_modules(contract: dict) -> list[str]:
    containers = contract.get("containers") or [""]
    names = []
    for container in containers:
        for layer in contract["layers"]:
            for part in layer.replace(":", "|").split("|"):
                name = part.strip().strip("()")
                names.append(f"{container}.{name}" if container else name)
    return names


def _modules() -> list[str]:
    found = []
    for info in pkgutil.walk_packages(llmtune.__path__, "llmtune."):
        found.append(info.name)
    return found


def _imports_nothing(module: str) -> bool:
    """A package whose ``__init__`` imports nothing (a docstring over its layered modules)."""
    path = ROOT / Path(*module.split(".")) / "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8")) if path.is_file() else None
    return tree is not None and not any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(tree))


def test_every_module_sits_in_a_layer():
    layers = _layer_modules(next(c for c in _contracts() if c["id"] == "layers"))
    missing = [
        m
        for m in _modules()
        if not any(m == name or m.startswith(name + ".") for name in layers)
        and not (_imports_nothing(m) and any(name.startswith(m + ".") for name in layers))
    ]
    assert missing == [], f"modules outside every layer (place them in pyproject.toml's contract): {missing}"


def test_layer_names_are_real_modules():
    modules = set(_modules())
    for contract in _contracts():
        if contract["type"] != "layers":
            continue
        unknown = [name for name in _layer_modules(contract) if name not in modules]
        assert unknown == [], f"contract {contract['id']} names modules that do not exist: {unknown}"
