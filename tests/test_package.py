"""The package's public surface: exports resolve, functional imports without Lightning."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import lightning_tricks
import lightning_tricks.functional as F


def test_all_and_lazy_exports_agree():
    lazy = set(lightning_tricks._EXPORTS)
    public = set(lightning_tricks.__all__) - {"__version__", "functional"}
    assert lazy == public, f"in __all__ only: {public - lazy}; in _EXPORTS only: {lazy - public}"
    for name in lightning_tricks.__all__:
        assert getattr(lightning_tricks, name) is not None
    assert len(set(lightning_tricks.__all__)) == len(lightning_tricks.__all__)


def test_functional_all_resolves():
    assert len(set(F.__all__)) == len(F.__all__)
    for name in F.__all__:
        assert getattr(F, name) is not None, name


def test_area_packages_export_what_top_level_names():
    # Every Lightning-layer area's __all__ is re-exported at top level, and vice versa.
    for area in ("finetune", "optim", "inference", "inspect", "perf", "data", "repro"):
        mod = importlib.import_module(f"lightning_tricks.{area}")
        for name in mod.__all__:
            assert name in lightning_tricks.__all__, f"lightning_tricks.{area}.{name} is not re-exported"
        fmod = importlib.import_module(f"lightning_tricks.functional.{area}")
        for name in fmod.__all__:
            assert name in F.__all__, f"lightning_tricks.functional.{area}.{name} is not re-exported"


def test_functional_imports_without_lightning():
    code = textwrap.dedent(
        """
        import sys
        for blocked in ("lightning", "pytorch_lightning", "lightning_fabric", "lightning_utilities", "torchmetrics"):
            sys.modules[blocked] = None
        import lightning_tricks.functional as F
        import pkgutil, importlib
        for m in pkgutil.walk_packages(F.__path__, "lightning_tricks.functional."):
            importlib.import_module(m.name)
        for name in F.__all__:
            getattr(F, name)
        assert not any(k.startswith(("lightning.", "pytorch_lightning.")) for k in sys.modules), "Lightning leaked"
        print("ok", len(F.__all__))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")


def test_public_callables_have_docstrings_with_examples():
    missing = []
    for module, names in ((lightning_tricks, lightning_tricks.__all__), (F, F.__all__)):
        for name in names:
            obj = getattr(module, name)
            if name.startswith("_") or inspect.ismodule(obj) or not callable(obj):
                continue
            doc = inspect.getdoc(obj) or ""
            if "Example" not in doc:
                missing.append(f"{module.__name__}.{name}")
    assert not missing, f"public API without a docstring containing an Example: section: {missing}"


def test_every_module_imports():
    for m in pkgutil.walk_packages(lightning_tricks.__path__, "lightning_tricks."):
        importlib.import_module(m.name)


def test_project_urls_agree_with_the_docs_config():
    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    root = Path(__file__).resolve().parents[1]
    urls = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]["urls"]
    assert set(urls) == {"Homepage", "Documentation", "Repository", "Changelog", "Issues"}
    mkdocs = dict(
        line.split(": ", 1)
        for line in (root / "mkdocs.yml").read_text(encoding="utf-8").splitlines()
        if line.startswith(("site_url: ", "repo_url: "))
    )
    assert mkdocs["site_url"] == urls["Documentation"]
    assert mkdocs["repo_url"] == urls["Repository"]
    assert (
        urls["Changelog"].startswith(urls["Repository"] + "/")
        and urls["Issues"] == urls["Repository"] + "/issues"
    )
