"""The project's modules import each other without a cycle.

A cycle makes the import order decide which names exist (a half-initialised module), and
it ties modules that should be read and changed apart. The test reads every module of
pipeline/ and earthloc/ with ast (nothing is imported or run) and fails naming the cycle."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "earthloc")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imported(path: Path, name: str, modules: set[str]) -> set[str]:
    """Project modules `path` imports, anywhere in the file (function-level imports included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for t in targets:
            while t and t not in modules:  # `from pkg import name` names a module or a name in it
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports."""
    modules = project_modules()
    # a package's __init__ imported on the way to one of its own submodules is not a use of it
    return {name: {t for t in imported(path, name, set(modules)) if not name.startswith(t + ".")}
            for name, path in modules.items()}  # fmt: skip


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        return list(exc.args[1])
    return None


def test_the_graph_sees_known_imports_and_finds_a_cycle() -> None:
    g = import_graph()
    assert "earthloc.objectives" in g["earthloc.trainer"]
    assert "earthloc.astroloc" in g["earthloc.objectives.photos"]
    assert "earthloc.seeds" in g["earthloc.trainer"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) is not None  # the detector detects


def test_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


# The command line binds subcommands to stages and tools; it is the one library module allowed to.
ENTRY_POINTS = {"earthloc.cli"}


def test_the_library_does_not_import_stages_or_tools() -> None:
    """earthloc/ is the library the stages (pipeline/stages/) and tools (pipeline/tools/) are
    built on; a library module that imported one of them would tie it to a command."""
    layered = ("pipeline.stages", "pipeline.tools")
    wrong = {
        name: sorted(t for t in targets if t.startswith(layered))
        for name, targets in import_graph().items()
        if name.startswith("earthloc") and name not in ENTRY_POINTS
    }
    wrong = {name: targets for name, targets in wrong.items() if targets}
    assert not wrong, f"earthloc/ imports stages or tools: {wrong}"
