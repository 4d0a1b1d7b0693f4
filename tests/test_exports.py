"""Each package's public surface is explicit: every package and public module has a
sorted ``__all__`` whose names exist, and a package re-exports only names its modules
declare public (habit 15 of the style guide)."""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

import pytest

PACKAGES = ("probe", "classifier", "policy", "api")


def _modules() -> list[str]:
    names = []
    for pkg in PACKAGES:
        names.append(pkg)
        path = importlib.import_module(pkg).__path__
        for info in pkgutil.walk_packages(path, pkg + "."):
            if not any(part.startswith("_") for part in info.name.split(".")):
                names.append(info.name)
    return names


def _order(name: str) -> tuple[int, str]:
    """isort's order for ``__all__`` (ruff RUF022): constants, classes, then the rest."""
    return (0 if name.isupper() else 1 if name[:1].isupper() else 2, name)


@pytest.mark.parametrize("name", _modules())
def test_all_is_sorted_and_every_name_exists(name: str) -> None:
    module = importlib.import_module(name)
    exported = module.__dict__.get("__all__")
    assert isinstance(exported, list), f"{name} has no __all__ list"
    assert exported == sorted(set(exported), key=_order), f"{name}.__all__ is not sorted"
    for attr in exported:
        assert not attr.startswith("_")
        getattr(module, attr)


def _origin(pkg: ModuleType, attr: str) -> str | None:
    value = getattr(pkg, attr)
    return getattr(value, "__module__", None) if callable(value) else None


@pytest.mark.parametrize("pkg_name", PACKAGES)
def test_packages_re_export_only_public_names(pkg_name: str) -> None:
    pkg = importlib.import_module(pkg_name)
    for attr in pkg.__all__:
        origin = _origin(pkg, attr)
        if origin is None or not origin.startswith(pkg_name + "."):
            continue  # a constant, or a name from outside (none today)
        source = importlib.import_module(origin)
        assert attr in source.__all__, f"{pkg_name}.{attr} is not in {origin}.__all__"
        assert not any(p.startswith("_") for p in origin.split("."))


def test_star_import_gives_exactly_all() -> None:
    for pkg_name in PACKAGES:
        space: dict[str, object] = {}
        exec(f"from {pkg_name} import *", space)
        assert sorted(k for k in space if k != "__builtins__") == sorted(
            importlib.import_module(pkg_name).__all__)
