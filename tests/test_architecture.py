"""Architecture contracts, checked by reading the source (ast), not by importing it.

- The dependency direction is notebooks -> widgets -> fsl_xai: fsl_xai never imports the UI
  stack (ipywidgets, plotly, IPython, anywidget, voila) nor the widgets package, and nothing in
  fsl_xai or widgets imports from notebooks.
- Only fsl_xai/data/dicom.py imports pydicom (and the pylibjpeg decoders).
- Only files under fsl_xai/explain/ import captum.
- Every third-party module that fsl_xai or widgets imports is declared in pyproject.toml
  (imports guarded by ``try: ... except ImportError`` are optional and exempt).
"""

from __future__ import annotations

import ast
import json
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UI_MODULES = {"ipywidgets", "plotly", "IPython", "anywidget", "voila", "widgets", "ipykernel"}
DICOM_MODULES = {"pydicom", "pylibjpeg", "libjpeg", "openjpeg"}
# import name -> distribution name, where they differ
DIST_OF = {"sklearn": "scikit-learn", "PIL": "pillow", "yaml": "pyyaml", "IPython": "ipython",
           "libjpeg": "pylibjpeg-libjpeg", "openjpeg": "pylibjpeg-openjpeg"}
# installed with a declared package, so importing them needs no entry of their own
IMPLIED = {"traitlets": "ipywidgets", "ipython": "ipywidgets", "ipykernel": "jupyterlab",
           "nbformat": "jupyterlab", "jupyter_server": "jupyterlab"}


def _optional_import_nodes(tree: ast.AST) -> set[int]:
    """ids of import nodes inside ``try:`` blocks that catch ImportError (optional extras)."""
    optional: set[int] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Try):
            continue
        caught = set()
        for handler in node.handlers:
            types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
            caught.update(getattr(t, "id", getattr(t, "attr", "")) for t in types if t is not None)
        if caught & {"ImportError", "ModuleNotFoundError"}:
            for stmt in node.body:
                optional.update(id(n) for n in ast.walk(stmt) if isinstance(n, (ast.Import, ast.ImportFrom)))
    return optional


def imported_modules(source: str, module: str = "", include_optional: bool = True) -> set[str]:
    """Absolute names of every module imported by this source, at any depth (lazy imports too).

    ``module`` is the dotted name of the file, so relative imports resolve; string arguments of
    ``importlib.import_module(...)`` / ``__import__(...)`` count as imports. With
    ``include_optional=False``, imports guarded by ``try: ... except ImportError`` are left out.
    """
    names: set[str] = set()
    package = module.rsplit(".", 1)[0] if module else ""
    tree = ast.parse(source)
    skip = set() if include_optional else _optional_import_nodes(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                prefix = ".".join(base)
                target = f"{prefix}.{node.module}" if node.module else prefix
                names.add(target)
                names.update(f"{target}.{alias.name}" for alias in node.names)
            else:
                names.add(node.module or "")
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__"):
                names.add(node.args[0].value)
    return {n for n in names if n}


def top_level(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names}


def python_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1] + ["__init__"]
    return ".".join(parts)


def imports_by_file(package: str, include_optional: bool = True) -> dict[str, set[str]]:
    return {str(p.relative_to(ROOT)): top_level(imported_modules(p.read_text(), module_name(p), include_optional))
            for p in python_files(package)}


def notebook_imports(path: Path) -> set[str]:
    nb = json.loads(path.read_text())
    code = "\n".join("".join(c["source"]) if isinstance(c["source"], list) else c["source"]
                     for c in nb.get("cells", []) if c.get("cell_type") == "code")
    # IPython magics and shell escapes are not Python
    code = "\n".join(line for line in code.splitlines() if not re.match(r"\s*[%!]", line))
    return top_level(imported_modules(code))


# ---------------------------------------------------------------------------- the checker itself
def test_checker_sees_every_kind_of_import() -> None:
    source = (
        "import numpy as np\n"
        "from plotly import graph_objects\n"
        "def lazy():\n    import captum.attr\n"
        "from ..data import imageset\n"
        "from . import base\n"
        "import importlib\nmod = importlib.import_module('pydicom')\n"
    )
    found = imported_modules(source, "fsl_xai.models.protonet")
    assert {"numpy", "plotly", "captum.attr", "fsl_xai.data", "fsl_xai.data.imageset",
            "fsl_xai.models", "fsl_xai.models.base", "importlib", "pydicom"} <= found
    assert top_level(found) >= {"numpy", "plotly", "captum", "fsl_xai", "pydicom"}


def test_checker_tells_optional_imports() -> None:
    source = (
        "try:\n    import kaleido\nexcept ImportError:\n    kaleido = None\n"
        "try:\n    import plotly\nexcept ValueError:\n    pass\n"
        "try:\n    from pydicom import dcmread\nexcept (OSError, ModuleNotFoundError):\n    pass\n"
    )
    assert top_level(imported_modules(source)) == {"kaleido", "plotly", "pydicom"}
    assert top_level(imported_modules(source, include_optional=False)) == {"plotly"}


def test_walk_finds_the_package() -> None:
    found = imports_by_file("fsl_xai")
    assert "fsl_xai/data/imageset.py" in found
    assert {"numpy", "pandas"} <= found["fsl_xai/data/imageset.py"]
    assert {"numpy", "fsl_xai"} <= found["fsl_xai/episodes.py"]  # relative imports resolved


# ---------------------------------------------------------------------------- the contracts
def test_fsl_xai_never_imports_the_ui() -> None:
    bad = {f: sorted(mods & UI_MODULES) for f, mods in imports_by_file("fsl_xai").items() if mods & UI_MODULES}
    assert not bad, f"fsl_xai must not import UI packages (dependency runs widgets -> fsl_xai): {bad}"


def test_only_dicom_module_imports_pydicom() -> None:
    allowed = "fsl_xai/data/dicom.py"
    bad = {f: sorted(mods & DICOM_MODULES) for f, mods in imports_by_file("fsl_xai").items()
           if mods & DICOM_MODULES and f != allowed}
    assert not bad, f"only {allowed} may import pydicom / pylibjpeg: {bad}"


def test_only_explain_imports_captum() -> None:
    bad = [f for f, mods in imports_by_file("fsl_xai").items()
           if "captum" in mods and not f.startswith("fsl_xai/explain/")]
    assert not bad, f"only fsl_xai/explain/ may import captum: {bad}"


def test_nothing_imports_notebooks_or_tests() -> None:
    files = {**imports_by_file("fsl_xai"), **imports_by_file("widgets")}
    bad = {f: sorted(mods & {"notebooks", "tests", "benchmarks"}) for f, mods in files.items()
           if mods & {"notebooks", "tests", "benchmarks"}}
    assert not bad, f"library code must not import notebooks, tests or benchmarks: {bad}"


def test_notebooks_use_the_packages_not_the_reverse() -> None:
    # notebooks may import widgets and fsl_xai; they must not import test code
    bad = {str(p.relative_to(ROOT)): sorted(notebook_imports(p) & {"tests", "benchmarks"})
           for p in sorted((ROOT / "notebooks").rglob("*.ipynb")) if ".ipynb_checkpoints" not in p.parts}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"notebooks must not import tests or benchmarks: {bad}"


def _normalise(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def _declared() -> tuple[set[str], set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    name = lambda req: _normalise(re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0])  # noqa: E731
    core = {name(r) for r in project["dependencies"]}
    extras = {name(r) for reqs in project["optional-dependencies"].values() for r in reqs}
    return core, extras


def test_every_third_party_import_is_declared() -> None:
    core, extras = _declared()
    declared = core | extras
    local = {"fsl_xai", "widgets"}
    missing: dict[str, list[str]] = {}
    for package in ("fsl_xai", "widgets"):
        # an import guarded by `except ImportError` is an optional extra with a fallback
        for f, mods in imports_by_file(package, include_optional=False).items():
            for mod in mods - local - set(sys.stdlib_module_names) - {"__future__"}:
                dist = _normalise(DIST_OF.get(mod, mod))
                if dist not in declared and IMPLIED.get(dist) not in declared:
                    missing.setdefault(dist, []).append(f)
    assert not missing, f"imports not declared in pyproject.toml (add them to dependencies or an extra): {missing}"


@pytest.mark.parametrize("dist", ["torch", "numpy", "pandas", "captum"])
def test_core_dependencies_are_core(dist: str) -> None:
    core, _ = _declared()
    assert dist in core
