"""Reading the source for the architecture contracts (tests/test_architecture.py): imports with
their lines, the layer of a module, and uses of private names. Everything works on ``ast`` trees,
so nothing under check is imported."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fsl_xai", "widgets")


# ---------------------------------------------------------------------------- reading the source
@dataclass(frozen=True)
class Import:
    """One import statement's binding: ``import module as alias`` or ``from module import name as alias``."""

    line: int
    module: str
    name: str | None
    alias: str


def _optional_import_nodes(tree: ast.AST) -> set[int]:
    """ids of import nodes inside ``try:`` blocks that catch ImportError (optional extras)."""
    optional: set[int] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Try):
            continue
        caught: set[str] = set()
        for handler in node.handlers:
            types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
            caught.update(getattr(t, "id", getattr(t, "attr", "")) for t in types if t is not None)
        if caught & {"ImportError", "ModuleNotFoundError"}:
            for stmt in node.body:
                optional.update(id(n) for n in ast.walk(stmt) if isinstance(n, (ast.Import, ast.ImportFrom)))
    return optional


def _from_module(node: ast.ImportFrom, module: str) -> str:
    """The absolute module of ``from ... import``, relative imports resolved against ``module``."""
    if not node.level:
        return node.module or ""
    base = module.split(".")[:-1]  # the package of the file (of an __init__ too: its name ends in .__init__)
    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
    prefix = ".".join(base)
    return f"{prefix}.{node.module}" if node.module else prefix


def import_records(tree: ast.AST, module: str = "", skip: set[int] | None = None) -> list[Import]:
    """Every import binding in the tree, at any depth (lazy imports inside functions too)."""
    out: list[Import] = []
    for node in ast.walk(tree):
        if skip and id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.extend(Import(node.lineno, a.name, None, a.asname or a.name.split(".")[0]) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = _from_module(node, module)
            out.extend(Import(node.lineno, source, a.name, a.asname or a.name) for a in node.names)
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and _called_name(node) in ("import_module", "__import__")):
            out.append(Import(node.lineno, node.args[0].value, None, ""))
    return out


def _called_name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def imported_modules(source: str, module: str = "", include_optional: bool = True) -> set[str]:
    """Absolute names of every module imported by this source, at any depth (lazy imports too).

    ``module`` is the dotted name of the file, so relative imports resolve; string arguments of
    ``importlib.import_module(...)`` / ``__import__(...)`` count as imports. With
    ``include_optional=False``, imports guarded by ``try: ... except ImportError`` are left out.
    """
    tree = ast.parse(source)
    skip = set() if include_optional else _optional_import_nodes(tree)
    names: set[str] = set()
    for imp in import_records(tree, module, skip):
        names.add(imp.module)
        if imp.name is not None:  # the name may be a module: `from . import base`
            names.add(f"{imp.module}.{imp.name}")
    return {n for n in names if n}


def top_level(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names}


def python_files(package: str) -> list[Path]:
    """The project's own Python files under a folder: hidden folders (a benchmark's peer venv,
    .ipynb_checkpoints) and __pycache__ are not the project's."""
    def own(path: Path) -> bool:
        parts = path.relative_to(ROOT).parts[:-1]
        return not any(part.startswith(".") or part == "__pycache__" for part in parts)

    return sorted(p for p in (ROOT / package).rglob("*.py") if own(p))


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def imports_by_file(package: str, include_optional: bool = True) -> dict[str, set[str]]:
    return {rel(p): top_level(imported_modules(p.read_text(), module_name(p), include_optional))
            for p in python_files(package)}


def notebook_code(path: Path) -> tuple[str, Callable[[int], str]]:
    """A notebook's code cells as one source, and a function: line of it -> where it is in the notebook."""
    lines: list[str] = []
    where: list[str] = []
    cells = [c for c in json.loads(path.read_text()).get("cells", []) if c.get("cell_type") == "code"]
    for number, cell in enumerate(cells, 1):
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        for i, line in enumerate(source.splitlines(), 1):
            # IPython magics and shell escapes are not Python
            lines.append("" if re.match(r"\s*[%!]", line) else line)
            where.append(f"{rel(path)} (code cell {number}, line {i})")
    return "\n".join(lines), lambda line: where[line - 1]


def notebook_imports(path: Path) -> set[str]:
    return top_level(imported_modules(notebook_code(path)[0]))


def notebooks() -> list[Path]:
    return sorted(p for p in (ROOT / "notebooks").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def module_file(name: str) -> Path | None:
    """The file of a module or package of fsl_xai or widgets; None when the name is not one."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def root_exports() -> dict[str, str]:
    """fsl_xai's lazy exports: public name -> the module that defines it."""
    tree = ast.parse((ROOT / "fsl_xai" / "__init__.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "_EXPORTS" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


# ---------------------------------------------------------------------------- layers
Layers = list[tuple[str, tuple[str, ...]]]


def layer_of(module: str, layers: Layers) -> int | None:
    """Index in ``layers`` of the longest listed name that ``module`` is or lies under."""
    best, found = -1, None
    for index, (_, prefixes) in enumerate(layers):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), index
    return found


def fsl_xai_dependency(imp: Import, exports: dict[str, str]) -> str | None:
    """The fsl_xai module an import depends on; None for other packages and the root's own names."""
    target = imp.module
    if imp.name is not None and module_file(f"{imp.module}.{imp.name}") is not None:
        target = f"{imp.module}.{imp.name}"
    if target == "fsl_xai":  # the root package only re-exports lazily: count the module behind the name
        return exports.get(imp.name or "")
    return target if target.startswith("fsl_xai.") else None


def layer_violations(tree: ast.AST, module: str, label: str, exports: dict[str, str],
                     layers: Layers) -> list[str]:
    """``label:line: what, how to fix`` for each import of a higher layer by this module."""
    package_module = module.removesuffix(".__init__")
    own = layer_of(package_module, layers)
    if own is None:
        return [f"{label}:1: {package_module} is in no layer; add it to LAYERS in tests/test_architecture.py"]
    out = []
    for imp in import_records(tree, module):
        target = fsl_xai_dependency(imp, exports)
        layer = None if target is None else layer_of(target, layers)
        if target is None or (layer is not None and layer <= own):
            continue
        if layer is None:
            out.append(f"{label}:{imp.line}: imports {target}, which is in no layer; "
                       "add it to LAYERS in tests/test_architecture.py")
        else:
            out.append(f"{label}:{imp.line}: {package_module} ({layers[own][0]}) imports {target} "
                       f"({layers[layer][0]}), a higher layer; move what both need down to the "
                       f"{layers[own][0]} layer or below, or let the caller pass it in")
    return out


# ---------------------------------------------------------------------------- private names
def defined_private_names(tree: ast.AST) -> set[str]:
    """Private names a file defines: functions, classes, assigned names, ``self._x`` / ``cls._x``."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
              and getattr(node.value, "id", "") in ("self", "cls")):
            names.add(node.attr)
    return {n for n in names if is_private(n)}


def private_definitions() -> dict[str, set[str]]:
    """Private name -> the files of fsl_xai and widgets that define it."""
    where: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in python_files(package):
            for name in defined_private_names(ast.parse(path.read_text())):
                where.setdefault(name, set()).add(rel(path))
    return where


def private_module_owner(name: str) -> str | None:
    """For a private module (``widgets._base``), the package it is private to (``widgets``)."""
    parts = name.split(".")
    for i in range(1, len(parts)):
        if is_private(parts[i]):
            return ".".join(parts[:i])
    return None


def _module_bindings(imports: list[Import]) -> dict[str, str]:
    """Local name -> the fsl_xai / widgets module it is bound to by an import."""
    bound: dict[str, str] = {}
    for imp in imports:
        if not imp.alias:
            continue
        if imp.name is None:
            target = imp.module if imp.alias != imp.module.split(".")[0] else imp.alias
        else:
            target = f"{imp.module}.{imp.name}"
        if target.split(".")[0] in PACKAGES and (target in PACKAGES or module_file(target) is not None):
            bound[imp.alias] = target
    return bound


def _resolve_module(expr: ast.expr, bound: dict[str, str]) -> str | None:
    if isinstance(expr, ast.Name):
        return bound.get(expr.id)
    if isinstance(expr, ast.Attribute):
        base = _resolve_module(expr.value, bound)
        if base is not None and module_file(f"{base}.{expr.attr}") is not None:
            return f"{base}.{expr.attr}"
    return None


def _private_accesses(tree: ast.AST) -> list[tuple[int, ast.expr, str]]:
    """(line, receiver, name) for ``x._name`` and ``getattr(x, "_name")`` (and has/set/delattr)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            found.append((node.lineno, node.value, node.attr))
        elif (isinstance(node, ast.Call) and _called_name(node) in ("getattr", "hasattr", "setattr", "delattr")
              and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
              and isinstance(node.args[1].value, str) and is_private(node.args[1].value)):
            found.append((node.lineno, node.args[0], node.args[1].value))
    return found


def privacy_violations(tree: ast.AST, module: str, where: dict[str, set[str]], label: str = "",
                       locate: Callable[[int], str] | None = None,
                       white_box: tuple[str, ...] | None = None) -> list[str]:
    """``file:line: what, how to fix`` for each use of another module's private names, by line.

    Args:
        tree: the parsed source.
        module: its dotted module name ("" for a notebook or a script).
        where: private name -> files defining it (``private_definitions()``).
        label: the file as shown; ``locate(line)`` may give a better place (a notebook cell).
        white_box: for a test, the packages it tests: their private names and modules are allowed,
            and private attributes of objects are not checked.
    """
    place = locate or (lambda line: f"{label}:{line}")
    found: list[tuple[int, str]] = []

    def add(line: int, text: str) -> None:
        found.append((line, f"{place(line)}: {text}"))

    def in_subject(name: str) -> bool:
        return any(name == s or name.startswith(s + ".") for s in white_box or ())

    imports = import_records(tree, module)
    for imp in imports:
        names = [imp.module] + ([f"{imp.module}.{imp.name}"] if imp.name is not None else [])
        for name in names:
            owner = private_module_owner(name)
            if (owner is not None and name.split(".")[0] in PACKAGES and module_file(name) is not None
                    and not module.startswith(owner + ".") and not in_subject(name)):
                add(imp.line, f"imports {name}, a module private to {owner}; use the public API of {owner}, "
                              "or make the module public (drop the underscore) if others need it")
                break
        if (imp.name is not None and is_private(imp.name) and imp.module.split(".")[0] in PACKAGES
                and module_file(f"{imp.module}.{imp.name}") is None and not in_subject(imp.module)):
            add(imp.line, f"imports {imp.name}, private to {imp.module}; make it public there (drop the "
                          "underscore, document it) or move it to where it is used")
    bound = _module_bindings(imports)
    own = defined_private_names(tree)
    for line, receiver, name in _private_accesses(tree):
        if getattr(receiver, "id", "") in ("self", "cls") or (
                isinstance(receiver, ast.Call) and getattr(receiver.func, "id", "") == "super"):
            continue  # the class's own members (a subclass uses its base's protected members)
        base = _resolve_module(receiver, bound)
        if base is not None and not in_subject(base):
            add(line, f"reads {base}.{name}, private to that module; make it public there, or ask its owner "
                      "for a public function that does what is needed")
        elif base is None and white_box is None and name in where and name not in own:
            add(line, f"uses .{name}, private to {', '.join(sorted(where[name]))}; use a public method or "
                      "attribute instead (add one there if none fits)")
    return [text for _, text in sorted(found, key=lambda item: item[0])]


def subjects_of_test(path: Path) -> tuple[str, ...]:
    """The packages a test file tests (see the module docstring)."""
    parts = path.relative_to(ROOT / "tests").parts
    if parts[0] in ("widgets", "ui"):
        return ("widgets",)
    if parts[0] == "fsl_xai" and len(parts) > 2:  # tests/fsl_xai/dicom/ tests fsl_xai.data.dicom
        return tuple(m for m in (f"fsl_xai.{parts[1]}", f"fsl_xai.data.{parts[1]}") if module_file(m) is not None)
    if parts[0] == "fsl_xai" and parts[-1].startswith("test_"):
        stem = parts[-1].removeprefix("test_").removesuffix(".py")
        return (f"fsl_xai.{stem}", f"fsl_xai._{stem}")
    return ()


def report(title: str, violations: list[str]) -> str:
    """An assertion message: the title, the count, then one violation a line."""
    return f"{title} ({len(violations)}):\n  " + "\n  ".join(violations)
