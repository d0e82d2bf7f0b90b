"""Every ``>>>`` example in the package's docstrings runs and prints what it says, with only
the installed package: the checkout's ``tests`` and ``examples`` cannot be imported (demo
models are in ``lightning_tricks.demos``)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import lightning_tricks
from tests.helpers.isolation import installed_package_only

MODULES = sorted(m.name for m in pkgutil.walk_packages(lightning_tricks.__path__, "lightning_tricks."))


@pytest.mark.parametrize("module_name", ["lightning_tricks", *MODULES])
def test_docstring_examples(module_name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(module_name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    with installed_package_only():
        for test in finder.find(module, module_name, globs={**vars(module)}):
            if test.examples:
                runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, (
        f"{result.failed} docstring example(s) failed in {module_name} (see output above)"
    )
