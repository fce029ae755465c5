"""Import-time savings for the notebook kernel.

plotly's FigureWidget imports ``plotly.io._renderers``, which imports nbformat, which imports
jsonschema, which imports ``rfc3987_syntax`` when it is installed (JupyterLab's jupyter-events
asks for it). That package compiles some forty lark grammars at import time: about 2 s of a
notebook's start on a 2-core machine, spent on an IRI format checker the workbench never calls.

``defer_rfc3987_syntax`` puts a small stand-in module in ``sys.modules`` whose attributes import
the real package on first use, so anything that does call it gets the real function, only later.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

_NAME = "rfc3987_syntax"
_real: types.ModuleType | None = None


def _load_real() -> types.ModuleType:
    global _real
    if _real is None:
        if isinstance(sys.modules.get(_NAME), _Deferred):
            del sys.modules[_NAME]
        _real = importlib.import_module(_NAME)
    return _real


class _Deferred(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(_load_real(), name)


def _is_valid_syntax(*args, **kwargs):
    return _load_real().is_valid_syntax(*args, **kwargs)


def defer_rfc3987_syntax() -> bool:
    """Install the stand-in unless the package is already imported or not installed. True if installed."""
    if _NAME in sys.modules or importlib.util.find_spec(_NAME) is None:
        return False
    stand_in = _Deferred(_NAME, "deferred import of rfc3987_syntax (see widgets._imports)")
    stand_in.is_valid_syntax = _is_valid_syntax
    sys.modules[_NAME] = stand_in
    return True
