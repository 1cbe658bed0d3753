"""The shape of the package: rules a reader relies on to find their way, checked on the source itself."""

from __future__ import annotations

import ast
import re
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "disco_trl"
MAX_FUNCTION_LINES = 60
MAX_TOP_LEVEL_MODULES = 12


def _modules(folder: Path = PACKAGE) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_every_function_is_at_most_60_lines():
    long = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, "split these functions:\n" + "\n".join(long)


def test_at_most_12_top_level_modules_and_the_promised_subpackages():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top
    for subpackage in ("eval", "data", "rewards", "demo", "demo/study"):
        assert (PACKAGE / subpackage / "__init__.py").is_file(), subpackage


def _imported_private_names(path: Path) -> list[str]:
    """`from X import _name` and `X._name` where X is another module of the package."""
    tree = ast.parse(path.read_text())
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found, module_aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(max(node.level - 1, 0)):
                base = base.rpartition(".")[0]
            source = (f"{base}.{node.module}" if node.module else base) if node.level else (node.module or "")
            for alias in node.names:
                if source.startswith("disco_trl") and source != here:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        found.append(f"from {source} import {alias.name}")
                    module_aliases[alias.asname or alias.name] = f"{source}.{alias.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in module_aliases:
            if node.attr.startswith("_") and not node.attr.startswith("__"):
                found.append(f"{node.value.id}.{node.attr}")
    return found


def test_no_module_imports_another_modules_private_names():
    offenders = {str(p.relative_to(ROOT)): names for p in _modules() if (names := _imported_private_names(p))}
    assert not offenders, offenders


def _imports_of(path: Path) -> set[str]:
    """The package modules `path` imports at its top level (the arrows of the import graph)."""
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    targets = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            source = f"{base}.{node.module}" if node.module else base
            targets |= {source} | {f"{source}.{a.name}" for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("disco_trl"):
            targets |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    known = {_module_name(p) for p in _modules()}
    return {t for t in targets if t in known and t != here}


def test_no_import_circle():
    graph = {_module_name(p): _imports_of(p) for p in _modules()}
    packages = {_module_name(p) for p in _modules() if p.name == "__init__.py"}

    def reaches(start: str, goal: str, seen: set) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal:
                return True
            if nxt not in seen and nxt not in packages:  # a package's face only hands names on
                seen.add(nxt)
                if reaches(nxt, goal, seen):
                    return True
        return False

    circles = [m for m in graph if m not in packages and reaches(m, m, set())]
    assert not circles, circles


def test_no_issue_numbers_in_code_or_tests():
    pattern = re.compile(r"issue", re.IGNORECASE)  # work is tracked in issues; code says what it does, not where from
    hits = []
    for folder in ("disco_trl", "tests", "benchmarks", "scripts", "examples", "recipes"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix in (".py", ".sh", ".yaml", ".yml") and "__pycache__" not in path.parts:
                for number, line in enumerate(path.read_text().splitlines(), start=1):
                    if pattern.search(line) and path.name != Path(__file__).name:
                        hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:80]}")
    assert not hits, "\n".join(hits)



def test_the_docs_name_files_that_exist():
    """Paths in backticks (`disco_trl/...`, `tests/...`, ...) and relative links in the Markdown pages resolve."""
    pages = [*ROOT.glob("*.md"), *ROOT.glob("docs/**/*.md"), *ROOT.glob("benchmarks/*.md")]
    missing = []
    for page in pages:
        text = page.read_text()
        for path in re.findall(r"`((?:disco_trl|benchmarks|scripts|tests|recipes|examples|docs)/[\w./\-]+)`", text):
            if not any(c in path for c in "*{") and not (ROOT / path.rstrip(".")).exists():
                missing.append(f"{page.relative_to(ROOT)}: {path}")
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if not target.startswith(("http://", "https://")) and not (page.parent / target).exists():
                missing.append(f"{page.relative_to(ROOT)}: link {target}")
    assert not missing, "\n".join(missing)


def test_the_trainer_overrides_at_most_5_grpotrainer_methods_and_names_each():
    from trl import GRPOTrainer

    import disco_trl.trainer as module

    overrides = [name for name, value in vars(module.DiscoTrainer).items()
                 if callable(value) and name != "__init__" and hasattr(GRPOTrainer, name)]
    assert len(overrides) <= 5, overrides
    assert all(f"`{name}`" in module.__doc__ for name in overrides), overrides
