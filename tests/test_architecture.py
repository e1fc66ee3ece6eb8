"""The invariants ARCHITECTURE.md states about the code itself (the import layers are checked by
`lint-imports` in .ci/run): small functions and modules, and a run's files parsed in one place."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "dprad"
MAX_FUNCTION_LINES = 100
MAX_MODULE_LINES = 600

# Modules that may parse JSON, and what they parse. Everything a run directory holds is read by
# dprad.run (RunRecord); these read other things.
JSON_READERS = {
    "run/files.py": "a run's files (the one reader, used by RunRecord)",
    "data/provenance.py": "the teacher sidecar beside a labelled table (user data)",
    "data/reports.py": "JSONL reports (user data)",
    "data/schemas.py": "a label schema file (user data)",
    "labeling/llm.py": "the LLM server's answers and their cache",
    "local_models.py": "a sentence-transformers model's pooling config",
    "metrics/transfer.py": "a user's label map",
    "report/label_noise.py": "the label-noise study written by bench/label_noise.py",
    "serve/auditlog.py": "the serving audit log's lines",
    "serve/deps.py": "request bodies",
    "sweep/state.py": "a sweep's own cell state",
    "audit/extraction.py": "the served model's HTTP answers (the extraction attack is an API client)",
    "demo.py": "the demo's own teacher-agreement file",
}


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_no_function_over_100_lines_and_no_module_over_600() -> None:
    too_long = []
    for path in _modules():
        text = path.read_text()
        rel = path.relative_to(SRC)
        if text.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{rel}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    too_long.append(f"{rel}:{node.lineno} {node.name}: {lines} lines")
    assert not too_long, "\n".join(too_long)


def test_run_files_are_parsed_only_by_the_run_reader() -> None:
    readers = {str(p.relative_to(SRC)) for p in _modules() if re.search(r"\bjson\.loads?\(", p.read_text())}
    unexpected = readers - set(JSON_READERS)
    assert not unexpected, (
        f"parse JSON outside the run reader (use dprad.run.RunRecord): {sorted(unexpected)}"
    )
    gone = set(JSON_READERS) - readers
    assert not gone, f"no longer parse JSON: drop them from JSON_READERS: {sorted(gone)}"
    for path in _modules():
        text = path.read_text()
        rel = str(path.relative_to(SRC))
        if rel != "run/files.py":
            for name in ("privacy.json", "metrics.json", "splits.json", "schema.json", "config.json"):
                assert not re.search(rf'["\']{re.escape(name)}["\']\)\.read', text), (rel, name)


# Where a run file's name (a value of dprad.run.files) may still be written as a literal outside dprad/run/,
# and why: another file of the same name, or a module the constant cannot reach. Every other module names a
# run's files by their constants (``files.PRIVACY``), so that a name is defined in one place.
RUN_FILE_LITERALS = {
    ("local_models.py", "config.json"): "a model directory's config.json (transformers), not a run's",
    ("export/bundle.py", "config.json"): "the full mode's saved encoder's config.json (transformers)",
    ("export/safe.py", "config.json"): "also the bundled encoder's config.json (transformers)",
    ("privacy/ledger.py", "privacy.json"): "below run/ in the layers: cannot import its constants",
}


def _run_file_names() -> set[str]:
    """The values of dprad.run.files' string constants that name a file (a name with a suffix: "model",
    "head" and the like name directories and weight stems, and are words used for much else)."""
    tree = ast.parse((SRC / "run" / "files.py").read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            value = node.value.value
            if isinstance(value, str) and "." in value and all(isinstance(t, ast.Name) for t in node.targets):
                names.add(value)
    return names


def _string_literals(tree: ast.AST) -> list[ast.Constant]:
    """Every string constant of a module except docstrings (comments are not in the tree)."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
    ]


def test_run_file_names_are_written_only_in_run_files() -> None:
    names = _run_file_names()
    assert {"config.json", "privacy.json", "metrics.json", "reference.json"} <= names, names
    found = set()
    for path in _modules():
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith("run/"):
            continue
        for node in _string_literals(ast.parse(path.read_text())):
            if node.value in names:
                found.add((rel, node.value, node.lineno))
    unexpected = sorted(
        f"{rel}:{line}: {name!r}" for rel, name, line in found if (rel, name) not in RUN_FILE_LITERALS
    )
    assert not unexpected, f"name a run's files by their constants in dprad.run.files: {unexpected}"
    gone = set(RUN_FILE_LITERALS) - {(rel, name) for rel, name, _ in found}
    assert not gone, f"no longer written as literals: drop them from RUN_FILE_LITERALS: {sorted(gone)}"
