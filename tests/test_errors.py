"""One error tree: every exception jetagent, its capabilities and its projections define
derives from ``JetagentError`` (issue 9, item 10; issue 11, item 4), so
``except JetagentError`` catches everything raised on purpose."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import capabilities
import jetagent
import projections
from jetagent.errors import JetagentError


def _modules() -> list[str]:
    names = []
    for package in (jetagent, capabilities, projections):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if info.name.endswith("__main__") or info.name == "jetagent.cli.demo":
                continue
            names.append(info.name)
    return names


def test_every_exception_class_has_the_one_root() -> None:
    strays = []
    for name in _modules():
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == name
                and not attr.startswith("_")  # private control flow, never raised out
                and not issubclass(value, JetagentError)
            ):
                strays.append(f"{name}.{attr}")
    assert strays == []
