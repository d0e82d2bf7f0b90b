"""The code in the documentation runs, with only the installed package.

Every ```python block of a page under docs/ is executed, in order, in one namespace
per page, in a temporary working directory, where the checkout's own files (``tests``,
``examples``) cannot be imported: a user has only the installed package (its demo models
are in ``lightning_tricks.demos``). Blocks fenced as ```py are shown only (for GPU-only or
multi-process snippets); keep them rare.
"""

from __future__ import annotations

import re
import sys

import pytest

from tests.helpers.isolation import ROOT, installed_package_only

DOCS = ROOT / "docs"
BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```", re.S | re.M)
PAGES = sorted(p for p in DOCS.rglob("*.md") if BLOCK.search(p.read_text()))

# `import tests...` / `from tests... import`, also after a doctest prompt, and LightningCLI
# class paths into tests.
IMPORTS_TESTS = re.compile(
    r"^\s*(?:>>>|\.\.\.)?\s*(?:from\s+tests(?:\.\w+)*\s+import\b|import\s+tests\b)"
    r"|import_module\(\s*[\"']tests\b|class_path[\"']?\s*[:=]\s*[\"']?tests\.",
    re.M,
)


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_page_code_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    with installed_package_only():
        for i, match in enumerate(BLOCK.finditer(page.read_text())):
            code = compile(match.group(1), f"{page.name}[block {i}]", "exec")
            exec(code, namespace)


def test_no_user_facing_file_imports_the_test_suite():
    files = [*DOCS.rglob("*.md"), *(ROOT / "lightning_tricks").rglob("*.py"), ROOT / "README.md"]
    offenders = [
        f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0).strip()}"
        for path in files
        for text in [path.read_text(encoding="utf-8")]
        for m in IMPORTS_TESTS.finditer(text)
    ]
    assert not offenders, (
        "user-facing files import the test-suite (use lightning_tricks.demos):\n" + "\n".join(offenders)
    )


def test_the_isolation_hides_the_checkout_but_not_the_package(tmp_path, monkeypatch):
    import tests.helpers

    monkeypatch.chdir(tmp_path)
    with installed_package_only():
        for statement in ("from tests.helpers import SmallCNN", "import tests", "import examples.digits"):
            with pytest.raises(ImportError):
                exec(statement, {})
        namespace: dict = {}
        exec("from lightning_tricks.demos import SmallCNN", namespace)
        assert namespace["SmallCNN"].__module__ == "lightning_tricks.demos"
        assert str(ROOT) not in sys.path
    import tests.helpers as again

    assert again is tests.helpers  # restored: the rest of the suite is unaffected
    assert IMPORTS_TESTS.search("        >>> from tests.helpers import cpu_trainer")
    assert IMPORTS_TESTS.search("import tests.helpers as h")
    assert not IMPORTS_TESTS.search("re-tests. `MemorySnapshot` records one step")
