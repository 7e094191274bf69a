"""dvc.yaml lists exactly the project code each stage runs.

DVC reruns a stage only when one of its listed dependencies changes, so a module a
stage imports but does not list is an edit that silently leaves stale outputs, and a
module listed but not imported reruns the stage for nothing. The code a stage runs is
derived here without executing anything: the stage's `cmd` names an `earthloc`
subcommand, `earthloc/cli.py` binds that subcommand to a handler, and the handler's
imports are followed through the project's modules with `ast`.

Conventions the check encodes:
- A listed folder (e.g. `pipeline/fetch`) covers every module below it; it must cover at
  least one module the stage imports.
- `earthloc/cli.py` itself is not required: it only parses arguments and dispatches, and
  listing it would rerun every stage on a help-text edit.
- A package's `__init__.py` is followed (its imports count) but not required: the
  project keeps docstrings and re-exports there, not logic.
- Imports under `if TYPE_CHECKING:` do not run and do not count.
- Listed paths that are not project Python code (data, tiles, models, assets) are not
  judged here.
"""

from __future__ import annotations

import ast
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "earthloc")
CLI = ROOT / "earthloc" / "cli.py"


def module_path(name: str) -> Path | None:
    """The file of project module `name` (a module or a package's `__init__.py`), or None."""
    parts = name.split(".")
    if parts[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*parts)
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(node: ast.AST) -> Iterator[ast.AST]:
    """Every node below `node` except the bodies of `if TYPE_CHECKING:` blocks."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for sub in child.orelse:
                yield sub
                yield from _runtime_nodes(sub)
            continue
        yield child
        yield from _runtime_nodes(child)


# The config loader builds every section, each from its own stage module, imported lazily
# inside that section's builder: a stage runs only its own section's builder, whose module
# the stage imports anyway. Only the loader's module-level imports are followed.
TOP_LEVEL_ONLY = {"pipeline.config"}


def imported_modules(tree: ast.AST, current: str, is_package: bool) -> set[str]:
    """Project modules imported anywhere in `tree` (lazy imports inside functions included,
    except for the modules of TOP_LEVEL_ONLY)."""
    found: set[str] = set()
    package = current if is_package else current.rpartition(".")[0]
    nodes = (
        [stmt for stmt in tree.body if isinstance(stmt, (ast.Import, ast.ImportFrom))]  # type: ignore[attr-defined]
        if current in TOP_LEVEL_ONLY
        else _runtime_nodes(tree)
    )
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            for alias in node.names:  # `from pipeline.geo import area` imports a submodule
                found.add(f"{base}.{alias.name}")
    result: set[str] = set()
    for name in found:
        parts = name.split(".")
        # importing a.b.c runs a/__init__.py and a/b/__init__.py first
        for i in range(1, len(parts) + 1):
            if module_path(".".join(parts[:i])) is not None:
                result.add(".".join(parts[:i]))
    return result


def closure(start: set[str]) -> dict[str, str | None]:
    """Every project module reachable from `start`, each mapped to the module that imports it."""
    parent: dict[str, str | None] = {m: None for m in start}
    todo = list(start)
    while todo:
        name = todo.pop()
        path = module_path(name)
        assert path is not None
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for dep in imported_modules(tree, name, path.name == "__init__.py"):
            if dep not in parent:
                parent[dep] = name
                todo.append(dep)
    return parent


def cli_handlers() -> dict[str, ast.FunctionDef]:
    """Subcommand name -> its handler function in earthloc/cli.py, from the
    `p = sub.add_parser("name", ...)` ... `p.set_defaults(func=handler)` pairs."""
    tree = ast.parse(CLI.read_text(encoding="utf-8"))
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    # pair each add_parser with the set_defaults that follows it in the source
    ordered = sorted(
        (n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)),
        key=lambda n: (n.lineno, n.col_offset),
    )
    handlers: dict[str, ast.FunctionDef] = {}
    current: str | None = None
    for node in ordered:
        assert isinstance(node.func, ast.Attribute)
        if node.func.attr == "add_parser" and node.args and isinstance(node.args[0], ast.Constant):
            current = str(node.args[0].value)
        elif node.func.attr == "set_defaults" and current is not None:
            for kw in node.keywords:
                if kw.arg == "func" and isinstance(kw.value, ast.Name) and kw.value.id in functions:
                    handlers[current] = functions[kw.value.id]
    return handlers


def stage_definitions() -> dict[str, dict]:
    """Stage name -> the mapping that holds its cmd and deps (`do:` for foreach stages)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    return {name: (spec["do"] if "do" in spec else spec) for name, spec in stages.items()}


def subcommand(cmd: str) -> str:
    words = shlex.split(cmd)
    assert words[0] == "earthloc", f"stage command does not start with `earthloc`: {cmd!r}"
    return words[1]


def chain(parent: dict[str, str | None], name: str, handler: str) -> str:
    """How the stage reaches `name`: `a.py <- b.py <- earthloc/cli.py:cmd_x`."""
    links = [name]
    while (up := parent[links[-1]]) is not None:
        links.append(up)
    files = [str(module_path(n).relative_to(ROOT)) for n in links]  # type: ignore[union-attr]
    return " <- ".join([*files, f"earthloc/cli.py:{handler}"])


def is_code(rel: str) -> bool:
    path = ROOT / rel
    if path.suffix == ".py":
        return True
    return path.is_dir() and rel.split("/")[0] in PACKAGES and any(path.rglob("*.py"))


def required_modules(handler: ast.FunctionDef) -> dict[str, str | None]:
    start = imported_modules(handler, "earthloc.cli", is_package=False)
    start.discard("earthloc.cli")
    return closure(start)


def deps_mismatch(stage: str, spec: dict) -> list[str]:
    handlers = cli_handlers()
    sub = subcommand(spec["cmd"])
    assert sub in handlers, f"stage {stage!r}: `earthloc {sub}` has no handler in earthloc/cli.py"
    parent = required_modules(handlers[sub])
    required = {
        str(module_path(m).relative_to(ROOT)): m  # type: ignore[union-attr]
        for m in parent
        if module_path(m).name != "__init__.py" and m != "earthloc.cli"  # type: ignore[union-attr]
    }
    listed = [str(d) for d in spec.get("deps", []) if is_code(str(d))]
    problems: list[str] = []
    for rel, name in sorted(required.items()):
        if not any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in listed):
            problems.append(
                f"dvc.yaml stage {stage!r}: add `- {rel}` to deps (imported via {chain(parent, name, handlers[sub].name)})"
            )
    for d in listed:
        if not any(rel == d or rel.startswith(d.rstrip("/") + "/") for rel in required):
            problems.append(f"dvc.yaml stage {stage!r}: remove `- {d}` from deps (`earthloc {sub}` does not import it)")
    return problems


STAGES = stage_definitions()


def test_the_import_walk_sees_lazy_imports_and_skips_type_checking() -> None:
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from pipeline import params\n"
        "def f():\n    from pipeline.geo import area\n    import earthloc.model\n"
        "from .tiles import x\n"
    )
    found = imported_modules(tree, "pipeline.geo.regions", is_package=False)
    assert found == {
        "pipeline",
        "pipeline.geo",
        "pipeline.geo.area",
        "pipeline.geo.tiles",
        "earthloc",
        "earthloc.model",
    }


def test_every_stage_runs_an_earthloc_subcommand_with_a_handler() -> None:
    handlers = cli_handlers()
    assert STAGES
    for name, spec in STAGES.items():
        assert subcommand(spec["cmd"]) in handlers, name


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_list_exactly_the_code_it_imports(stage: str) -> None:
    problems = deps_mismatch(stage, STAGES[stage])
    assert not problems, "\n" + "\n".join(problems)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_stage_has_its_module_first(stage: str) -> None:
    """A reader finds a stage's code by its name: `pipeline/stages/<stage>.py` (a foreach or
    matrix stage such as `fetch@2021-10` is the one stage `fetch`), listed first among the
    stage's code, so dvc.yaml names it where the stage begins."""
    own = f"pipeline/stages/{stage}.py"
    assert (ROOT / own).is_file(), f"dvc.yaml stage {stage!r} has no module {own}"
    code = [str(d) for d in STAGES[stage].get("deps", []) if is_code(str(d))]
    assert code and code[0] == own, f"dvc.yaml stage {stage!r}: its first code dependency is {code[:1]}, not {own}"
    assert str(STAGES[stage]["deps"][0]) == own, f"dvc.yaml stage {stage!r}: deps should begin with {own}"


def test_stages_folder_holds_only_stages() -> None:
    """pipeline/stages/ holds the dvc.yaml stages and nothing else; a command that is not a
    stage lives in pipeline/tools/."""
    modules = {p.stem for p in (ROOT / "pipeline" / "stages").glob("*.py") if p.name != "__init__.py"}
    assert modules == set(STAGES), f"not stages: {sorted(modules - set(STAGES))}"
