"""The shape of the code, checked: rules a reviewer would otherwise have to remember."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("shared", "syncd", "county", "township", "village")
#: SQL that reads or writes the store's own tables.
STORE_TABLES = re.compile(r"\b(FROM|JOIN|INTO|UPDATE)\s+(document|revision)\b", re.I)


def project_modules():
    for package in PACKAGES:
        yield from sorted((ROOT / package).rglob("*.py"))


def string_constants(path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value


def test_only_the_store_queries_its_own_tables():
    # The store is a closed room: outside shared/store/ code asks shared.store.reads (or
    # the Store) instead of writing SQL on document and revision.
    store = ROOT / "shared" / "store"
    found = [f"{path.relative_to(ROOT)}:{line}"
             for path in project_modules() if store not in path.parents
             for line, text in string_constants(path) if STORE_TABLES.search(text)]
    assert found == []


def test_the_check_sees_sql_on_the_store_tables(tmp_path):
    # The rule above can fail: the pattern finds such a query in a module.
    module = tmp_path / "m.py"
    module.write_text('Q = "SELECT d.id FROM document d JOIN revision r ON r.doc_id = d.id"\n',
                      encoding="utf-8")
    assert [text for _, text in string_constants(module) if STORE_TABLES.search(text)]
