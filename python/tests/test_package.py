"""The package as installed: typed, versioned, every public name documented."""

from __future__ import annotations

import importlib.metadata
import inspect
from pathlib import Path

import scale0
import scale0.aio


def test_installed_with_its_type_marker() -> None:
    assert importlib.metadata.version("scale0")
    assert (Path(scale0.__file__).parent / "py.typed").is_file()


def test_every_public_name_has_a_docstring() -> None:
    for module in (scale0, scale0.aio):
        for name in module.__all__:
            obj = getattr(module, name)
            assert inspect.getdoc(obj), f"{module.__name__}.{name}"
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if not attr.startswith("_") and callable(member):
                        assert inspect.getdoc(member), f"{module.__name__}.{name}.{attr}"
