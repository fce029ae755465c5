"""Architecture contracts, checked by reading the source (ast), not by importing it.

- The dependency direction is notebooks -> widgets -> fsl_xai: fsl_xai never imports the UI
  stack (ipywidgets, plotly, IPython, anywidget, voila) nor the widgets package, and nothing in
  fsl_xai or widgets imports from notebooks.
- Layers inside fsl_xai (``LAYERS``, lowest first): a module imports only its own layer and lower
  ones, lazy imports inside functions and ``TYPE_CHECKING`` imports included. So models never
  import evaluation, training or explain, and data imports nothing above data. The root package's
  lazy exports (``from fsl_xai import X``) count as imports of the module that defines X. A new
  module of fsl_xai must be given its layer here.
- Public names only across modules. A name starting with one underscore (``_helper``, not
  ``__version__``) is private to the file that defines it, and a module named so (``widgets/_base.py``)
  is private to its package:
  - fsl_xai/, widgets/, notebooks/ and benchmarks/ never import another module's private name
    (``from m import _x``), never read one off an imported module (``m._x``), never reach a private
    attribute or method that another file of fsl_xai or widgets defines and this one does not
    (``model._check_support``, ``getattr(x, "_y")``; ``self._x`` and ``cls._x`` are the class's own
    and exempt; third-party private attributes are out of this check's sight), and import a private
    module only from inside its own package (``widgets/state.py`` may import ``widgets._base``; a
    notebook may not).
  - Tests are white-box tests of one package: a test may import and use the private names and
    private modules of the package it tests, which is the package its folder names
    (``tests/fsl_xai/study/`` -> ``fsl_xai.study``, ``tests/fsl_xai/dicom/`` -> ``fsl_xai.data.dicom``,
    ``tests/widgets/`` and ``tests/ui/`` -> ``widgets``;
    ``tests/fsl_xai/test_<name>.py`` -> ``fsl_xai.<name>`` and ``fsl_xai._<name>``), and may read
    private attributes of objects. Other packages' private names are off limits to tests too.
- Only the DICOM modules import pydicom (and the pylibjpeg decoders): ``fsl_xai/data/dicom.py``, or
  the files of a ``fsl_xai/data/dicom/`` package.
- Only files under fsl_xai/explain/ import captum.
- Every third-party module that fsl_xai or widgets imports is declared in pyproject.toml
  (imports guarded by ``try: ... except ImportError`` are optional and exempt).

Each failure lists its violations one per line as ``file:line: what, how to fix``.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib

import pytest

from ._import_checks import (
    PACKAGES,
    ROOT,
    imported_modules,
    imports_by_file,
    layer_of,
    layer_violations,
    module_name,
    notebook_code,
    notebook_imports,
    notebooks,
    privacy_violations,
    private_definitions,
    python_files,
    rel,
    report,
    root_exports,
    subjects_of_test,
    top_level,
)

UI_MODULES = {"ipywidgets", "plotly", "IPython", "anywidget", "voila", "widgets", "ipykernel"}
DICOM_MODULES = {"pydicom", "pylibjpeg", "libjpeg", "openjpeg"}
# import name -> distribution name, where they differ
DIST_OF = {"sklearn": "scikit-learn", "PIL": "pillow", "yaml": "pyyaml", "IPython": "ipython",
           "libjpeg": "pylibjpeg-libjpeg", "openjpeg": "pylibjpeg-openjpeg"}
# installed with a declared package, so importing them needs no entry of their own
IMPLIED = {"traitlets": "ipywidgets", "ipython": "ipywidgets", "ipykernel": "jupyterlab",
           "nbformat": "jupyterlab", "jupyter-server": "jupyterlab"}

# The layers of fsl_xai, lowest first; a module (or package, with everything in it) belongs to the
# layer of the longest name listed here that it starts with.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("fsl_xai.errors", "fsl_xai.config", "fsl_xai.deferred", "fsl_xai.files", "fsl_xai.intervals",
                    "fsl_xai.voila_process")),
    ("data", ("fsl_xai.data",)),
    ("episodes", ("fsl_xai.episodes",)),
    ("models", ("fsl_xai.models",)),
    ("model services", ("fsl_xai.embeddings", "fsl_xai.projection", "fsl_xai.checkpoints", "fsl_xai.guard")),
    ("evaluation and training", ("fsl_xai.evaluation", "fsl_xai.conformal", "fsl_xai.training")),
    ("explanations and metrics", ("fsl_xai.explain", "fsl_xai.metrics")),
    ("user studies", ("fsl_xai.study",)),
    ("deployment and audits", ("fsl_xai.deploy", "fsl_xai.audit", "fsl_xai.report")),
    ("entry points and test helpers", ("fsl_xai.cli", "fsl_xai.testing")),
]


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
    # in a package's __init__, `from . import x` is relative to the package itself
    assert "fsl_xai.data.folder" in imported_modules("from . import folder", "fsl_xai.data.__init__")


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


def test_layer_checker_catches_upward_imports() -> None:
    exports = {"FewShotClassifier": "fsl_xai.models", "ImageSet": "fsl_xai.data"}
    source = (
        "from ..errors import ModelError\n"          # lower: fine
        "from .base import FewShotClassifier\n"      # same layer: fine
        "def lazy():\n    from ..evaluation import evaluate\n"
        "from fsl_xai import ImageSet, FewShotClassifier, __version__\n"
        "import importlib\nimportlib.import_module('fsl_xai.explain')\n"
    )
    found = layer_violations(ast.parse(source), "fsl_xai.models.protonet", "m.py", exports, LAYERS)
    assert [v.split(":")[1] for v in found] == ["4", "7"], found
    assert "imports fsl_xai.evaluation (evaluation and training), a higher layer" in found[0]
    upward_root = layer_violations(ast.parse("from fsl_xai import FewShotClassifier"), "fsl_xai.data.folder",
                                   "d.py", exports, LAYERS)
    assert len(upward_root) == 1 and "fsl_xai.models (models)" in upward_root[0]
    assert "in no layer" in layer_violations(ast.parse(""), "fsl_xai.brand_new", "n.py", exports, LAYERS)[0]
    data, models = layer_of("fsl_xai.data", LAYERS), layer_of("fsl_xai.models", LAYERS)
    assert layer_of("fsl_xai.data.dicom.reading", LAYERS) == data and data is not None and models is not None
    assert data < models


def test_privacy_checker_catches_each_kind() -> None:
    where = {"_check_support": {"fsl_xai/models/base.py"}, "_conn": {"fsl_xai/study/store.py"},
             "_own": {"widgets/state.py"}}
    source = (
        "from fsl_xai.data.folder import _read_image\n"         # 1 private name
        "from fsl_xai.data import folder\n"
        "folder._as_size(3)\n"                                   # 3 private name on a module
        "import fsl_xai.data.imageset\n"
        "fsl_xai.data.imageset._default_metadata('x', 2)\n"      # 5 the same, by its full name
        "model._check_support(labels)\n"                         # 6 private method defined elsewhere
        "getattr(store, '_conn')\n"                              # 7 the same, by getattr
        "from . import _base\n"                                  # its own package's private module: fine
        "self._check_support(labels); super()._conn\n"           # the class's own: fine
        "def _own(): pass\n"
        "thing._own\n"                                           # defined in this file: fine
        "from fsl_xai import _deferred\n"                        # 12 private module of another package
    )
    found = privacy_violations(ast.parse(source), "widgets.state", where, "w.py")
    assert [int(v.split(":")[1]) for v in found] == [1, 3, 5, 6, 7, 12], found
    assert "imports _read_image, private to fsl_xai.data.folder; make it public" in found[0]
    assert "reads fsl_xai.data.imageset._default_metadata, private to that module" in found[2]
    assert "uses ._check_support, private to fsl_xai/models/base.py" in found[3]
    assert "imports _deferred, private to fsl_xai" in found[5]
    # a private module of another package
    outside = privacy_violations(ast.parse("from widgets import _base\n"), "fsl_xai.cli", where, "c.py")
    assert len(outside) == 1 and "imports widgets._base, a module private to widgets" in outside[0], outside
    # a test of fsl_xai.data may use its privates and objects' private attributes; not other packages'
    in_test = privacy_violations(ast.parse(source), "tests.fsl_xai.data.test_folder", where, "t.py",
                                 white_box=("fsl_xai.data",))
    assert [int(v.split(":")[1]) for v in in_test] == [12], in_test
    assert subjects_of_test(ROOT / "tests/fsl_xai/study/test_store.py") == ("fsl_xai.study",)
    assert subjects_of_test(ROOT / "tests/fsl_xai/test_deferred.py") == ("fsl_xai.deferred", "fsl_xai._deferred")
    assert subjects_of_test(ROOT / "tests/ui/test_study_browser.py") == ("widgets",)
    assert subjects_of_test(ROOT / "tests/fsl_xai/dicom/test_read_dicom.py") == ("fsl_xai.data.dicom",)


# ---------------------------------------------------------------------------- the contracts
def test_fsl_xai_never_imports_the_ui() -> None:
    bad = {f: sorted(mods & UI_MODULES) for f, mods in imports_by_file("fsl_xai").items() if mods & UI_MODULES}
    assert not bad, f"fsl_xai must not import UI packages (dependency runs widgets -> fsl_xai): {bad}"


def test_layers_inside_fsl_xai() -> None:
    exports = root_exports()
    assert exports, "fsl_xai/__init__.py has no _EXPORTS table; update root_exports() to how it exports"
    found = [v for path in python_files("fsl_xai") if module_name(path) != "fsl_xai.__init__"
             for v in layer_violations(ast.parse(path.read_text()), module_name(path), rel(path), exports, LAYERS)]
    layers = " -> ".join(name for name, _ in LAYERS)
    assert not found, report(f"imports against the layers of fsl_xai ({layers})", found)


def test_public_names_only_across_modules() -> None:
    where = private_definitions()
    found: list[str] = []
    for package in (*PACKAGES, "benchmarks"):
        for path in python_files(package):
            found += privacy_violations(ast.parse(path.read_text()), module_name(path), where, rel(path))
    for notebook in notebooks():
        code, locate = notebook_code(notebook)
        found += privacy_violations(ast.parse(code), "", where, locate=locate)
    for path in python_files("tests"):
        found += privacy_violations(ast.parse(path.read_text()), module_name(path), where, rel(path),
                                    white_box=subjects_of_test(path))
    assert not found, report("private names used across modules", found)


def test_only_dicom_modules_import_pydicom() -> None:
    def is_dicom_module(f: str) -> bool:
        return f == "fsl_xai/data/dicom.py" or f.startswith("fsl_xai/data/dicom/")

    bad = [f"{f}: imports {', '.join(sorted(mods & DICOM_MODULES))}; only fsl_xai/data/dicom.py or "
           "fsl_xai/data/dicom/ may: call their public functions instead"
           for package in PACKAGES for f, mods in imports_by_file(package).items()
           if mods & DICOM_MODULES and not is_dicom_module(f)]
    assert not bad, report("pydicom / pylibjpeg imported outside the DICOM modules", bad)


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
    bad = {rel(p): sorted(notebook_imports(p) & {"tests", "benchmarks"}) for p in notebooks()}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"notebooks must not import tests or benchmarks: {bad}"


def _normalise(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def _requirement_name(requirement: str) -> str:
    return _normalise(re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0])


def _declared() -> tuple[set[str], set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_requirement_name(r) for r in project["dependencies"]}
    extras = {_requirement_name(r) for reqs in project["optional-dependencies"].values() for r in reqs}
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
