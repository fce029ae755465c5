"""Deferred imports: the stand-in keeps a module unimported until it is really used."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from fsl_xai.deferred import DeferredModule, defer


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A package ``dpkg`` whose ``heavy`` module counts its own imports, and a module using it."""
    pkg = tmp_path / "dpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "heavy.py").write_text(textwrap.dedent("""
        import sys
        sys.modules["dpkg"].loads = getattr(sys.modules["dpkg"], "loads", 0) + 1
        def double(x):
            return 2 * x
        CONSTANT = 42
    """))
    (pkg / "user.py").write_text("from dpkg.heavy import double\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "dpkg"
    for name in [m for m in sys.modules if m == "dpkg" or m.startswith("dpkg.")]:
        del sys.modules[name]


def test_a_deferred_module_loads_on_first_call_or_attribute(package):
    assert defer("dpkg.heavy", functions=("double",))
    assert isinstance(sys.modules["dpkg.heavy"], DeferredModule)
    assert defer("dpkg.heavy")  # installing twice is harmless
    # dpkg is the package the fixture writes into tmp_path; no type checker can see it
    import dpkg  # type: ignore[import-not-found]
    import dpkg.user  # type: ignore[import-not-found]
    assert getattr(dpkg, "loads", 0) == 0  # imported by dpkg.user, yet not run
    assert dpkg.user.double(4) == 8  # the wrapper imports the real module
    assert dpkg.loads == 1
    assert not isinstance(sys.modules["dpkg.heavy"], DeferredModule)
    assert dpkg.user.double(5) == 10 and dpkg.loads == 1  # only once


def test_reading_an_attribute_imports_the_real_module(package):
    defer("dpkg.heavy")
    import dpkg.heavy as heavy  # type: ignore[import-not-found]
    assert heavy.CONSTANT == 42
    import dpkg
    assert dpkg.loads == 1


def test_nothing_is_deferred_when_missing_or_already_imported(package):
    assert not defer("dpkg.missing")
    assert not defer("no_such_package_anywhere.x")
    import dpkg.heavy  # noqa: F401
    assert not defer("dpkg.heavy")
    assert not isinstance(sys.modules["dpkg.heavy"], DeferredModule)


def test_captum_attr_no_longer_imports_pyplot_but_its_helpers_still_work():
    code = textwrap.dedent("""
        import sys
        import fsl_xai.explain
        import captum.attr
        print("pyplot" if "matplotlib.pyplot" in sys.modules else "no pyplot")
        from captum.attr import visualization
        print(visualization.visualize_image_attr.__module__)
        print("pyplot" if "matplotlib.pyplot" in sys.modules else "no pyplot")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["no", "pyplot", "captum.attr._utils.visualization", "pyplot"]
