"""The API reference: every public object once, cross-references that resolve, no Sphinx roles.

The reference is rendered by mkdocstrings from ``docs/reference/*.md``, where each object has
one ``::: identifier`` block. mkdocstrings renders Markdown, so a Sphinx role such as
``:func:`name``` shows up as literal text; cross-references are written
``[`name`][lightning_tricks.functional.name]`` and must name a rendered object. CI's
``mkdocs build --strict`` fails on unresolved references too; these checks are static and
run without mkdocs.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import lightning_tricks
import lightning_tricks.functional as F

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lightning_tricks"
DOCS = ROOT / "docs"
SPHINX_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|data|mod|attr|exc|obj|const|ref|term):`")
DIRECTIVE = re.compile(r"^::: (\S+)", re.M)
ANCHOR = re.compile(r"\[\]\(\)\{#([^}]+)\}")
CROSSREF = re.compile(r"\]\[(lightning_tricks(?:\.\w+)*)\]")


def _docstrings(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every docstring of a module: module, classes, functions, attributes."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            found.append((node.lineno, node.value.value))
    return found


def _resolve(identifier: str) -> object:
    parts = identifier.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for part in parts[i:]:
            obj = inspect.getattr_static(obj, part) if inspect.isclass(obj) else getattr(obj, part)
        return obj
    raise ImportError(identifier)


def _reference() -> dict[str, object]:
    """identifier -> object, for every ``:::`` block and ``[](){#anchor}`` of the reference."""
    rendered = {}
    for page in sorted((DOCS / "reference").glob("*.md")):
        text = page.read_text(encoding="utf-8")
        for identifier in DIRECTIVE.findall(text) + ANCHOR.findall(text):
            rendered[identifier] = _resolve(identifier)
    return rendered


def _public_objects() -> dict[int, str]:
    objects: dict[int, str] = {}
    for module, names in ((F, F.__all__), (lightning_tricks, lightning_tricks.__all__)):
        for name in names:
            if name not in ("__version__", "functional"):
                objects.setdefault(id(getattr(module, name)), f"{module.__name__}.{name}")
    return objects


def test_no_sphinx_roles_in_docstrings_or_pages():
    found = [
        f"{path.relative_to(ROOT)}:{line}: {m.group(0)}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for line, doc in _docstrings(path)
        for m in SPHINX_ROLE.finditer(doc)
    ]
    found += [
        f"{page.relative_to(ROOT)}: {m.group(0)}"
        for page in sorted(DOCS.rglob("*.md"))
        for m in SPHINX_ROLE.finditer(page.read_text(encoding="utf-8"))
    ]
    assert not found, (
        "Sphinx roles render as literal text in mkdocs; write [`name`][lightning_tricks.functional.name] "
        "(or plain `name` for objects outside the reference):\n" + "\n".join(found)
    )


def test_reference_documents_every_public_object_once_and_no_private_module():
    directives = [
        (page.name, identifier)
        for page in sorted((DOCS / "reference").glob("*.md"))
        for identifier in DIRECTIVE.findall(page.read_text(encoding="utf-8"))
    ]
    private = [f"{page}: {i}" for page, i in directives if any(p.startswith("_") for p in i.split("."))]
    assert not private, f"private modules or objects in the reference: {private}"
    placed: dict[int, list[str]] = {}
    for page, identifier in directives:
        placed.setdefault(id(_resolve(identifier)), []).append(f"{page}: {identifier}")
    twice = [where for where in placed.values() if len(where) > 1]
    assert not twice, f"objects documented more than once: {twice}"
    missing = [name for key, name in _public_objects().items() if key not in placed]
    assert not missing, f"public objects missing from docs/reference/*.md: {missing}"


def test_cross_references_name_rendered_objects():
    rendered = _reference()

    def resolves(identifier: str) -> bool:
        if identifier in rendered:
            return True
        owner, _, member = identifier.rpartition(".")
        # a public member of a rendered class, defined by that class (inherited ones are not shown)
        return (
            owner in rendered
            and inspect.isclass(rendered[owner])
            and not member.startswith("_")
            and member in vars(rendered[owner])
        )

    sources = [
        (f"{path.relative_to(ROOT)}:{line}", doc)
        for path in sorted(PACKAGE.rglob("*.py"))
        for line, doc in _docstrings(path)
    ]
    sources += [
        (str(page.relative_to(ROOT)), page.read_text(encoding="utf-8")) for page in DOCS.rglob("*.md")
    ]
    broken = [
        f"{where}: {identifier}"
        for where, text in sources
        for identifier in CROSSREF.findall(text)
        if not resolves(identifier)
    ]
    assert not broken, "cross-references to objects the reference does not render:\n" + "\n".join(broken)
