"""Deferred imports: a stand-in module that imports the real one on first use.

A notebook's start is mostly imports, and two of them load code the workbench never runs:

- ``captum.attr`` imports ``captum.attr._utils.visualization`` (for its LLM and image-mask helpers),
  which imports matplotlib's pyplot: about half a second of every kernel start on a 2-core machine.
- jsonschema (through plotly's FigureWidget and nbformat) imports ``rfc3987_syntax``, which compiles
  some forty lark grammars at import time (about 2 s), for an IRI format checker never called here.

``defer(name, functions)`` puts a stand-in for ``name`` into ``sys.modules``. Reading any attribute
of it imports the real module (so code that does use it gets the real thing, only later), and each
name in ``functions`` is a wrapper that does the same when called: those are the names other modules
take with ``from name import f`` while being imported themselves.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Callable
from pathlib import Path


class DeferredModule(types.ModuleType):
    """Stands in for a module until something reads one of its attributes."""

    def __init__(self, name: str):
        super().__init__(name, f"deferred import of {name} (see fsl_xai.deferred)")
        self.__dict__["_real"] = None

    def _load(self) -> types.ModuleType:
        real = self.__dict__["_real"]
        if real is None:
            if sys.modules.get(self.__name__) is self:
                del sys.modules[self.__name__]
            real = self.__dict__["_real"] = importlib.import_module(self.__name__)
        return real

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(self._load(), attr)


def _installed(name: str) -> bool:
    """Whether ``name`` can be imported, found without importing any of its parent packages."""
    parts = name.split(".")
    try:
        spec = importlib.util.find_spec(parts[0])
    except (ImportError, ValueError):
        return False
    if spec is None:
        return False
    if len(parts) == 1:
        return True
    for root in spec.submodule_search_locations or ():
        base = Path(root).joinpath(*parts[1:])
        if base.with_suffix(".py").is_file() or (base / "__init__.py").is_file():
            return True
    return False


def _wrapper(stand_in: DeferredModule, fname: str) -> Callable:
    def call(*args, **kwargs):
        return getattr(stand_in._load(), fname)(*args, **kwargs)
    call.__name__ = call.__qualname__ = fname
    call.__doc__ = f"{stand_in.__name__}.{fname}, imported on first call"
    return call


def defer(name: str, functions: tuple[str, ...] = ()) -> bool:
    """Install a stand-in for ``name`` unless it is already imported or not installed.

    Returns True when the stand-in was installed (or already is)."""
    current = sys.modules.get(name)
    if isinstance(current, DeferredModule):
        return True
    if current is not None or not _installed(name):
        return False
    stand_in = DeferredModule(name)
    for fname in functions:
        setattr(stand_in, fname, _wrapper(stand_in, fname))
    sys.modules[name] = stand_in
    return True


def defer_captum_visualization() -> bool:
    """Keep matplotlib out of ``import captum.attr`` until a Captum visualisation helper is used."""
    return defer("captum.attr._utils.visualization", functions=("draw_mask_border", "draw_mask_legend"))
