"""The layout docs/architecture.md describes, held against the code: the wings of
app/ and the floor under them, imports that run one way and never in a circle, empty
wing packages, and functions short enough to read."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

APP = Path(__file__).resolve().parent.parent / "app"
DOOR = {"app.cli", "app.start", "app.__main__"}
# Which wings each wing may import (the floor, app/*.py but the door, is open to all).
MAY_IMPORT = {
    "inputs": set(),
    "login": {"inputs"},
    "job": {"inputs", "login"},
    "launch": {"inputs"},
    "cfn": {"inputs", "job"},
    "iamauth": {"inputs"},
}
LONGEST_FUNCTION = 120


def _modules() -> dict[str, Path]:
    found = {}
    for path in APP.rglob("*.py"):
        parts = path.relative_to(APP.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(path: Path) -> set[str]:
    """Every app module the file imports, at any depth of the file (a function-local
    import is an import too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names if alias.name.startswith("app")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("app"):
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {
        name: {imported for imported in _imports(path) if imported in modules and imported != name}
        for name, path in modules.items()
    }


def _wing(module: str) -> str | None:
    """The wing of a module, None for the floor and the door."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else None


def test_every_wing_is_known_and_its_package_is_empty() -> None:
    wings = {path.parent.name for path in APP.glob("*/__init__.py")}
    assert wings == set(MAY_IMPORT)
    for wing in wings:
        assert (APP / wing / "__init__.py").read_text() == ""


def test_the_floor_imports_no_wing_and_no_wing_imports_the_door() -> None:
    for module, imported in _graph().items():
        for target in imported:
            if module in DOOR:
                continue
            assert target not in DOOR, f"{module} imports the command line ({target})"
            here, there = _wing(module), _wing(target)
            if there is None or there == here:
                continue
            assert here is not None, f"the floor module {module} imports the wing {target}"
            assert there in MAY_IMPORT[here], f"{module} ({here}) imports {target} ({there})"


def test_the_command_line_reaches_the_wings_only_through_its_table() -> None:
    for module in DOOR:
        wings = {target for target in _graph()[module] if _wing(target) is not None}
        assert not wings, f"{module} imports {wings}"


def test_imports_never_run_in_a_circle() -> None:
    graph = _graph()
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, " -> ".join((*path, module))
        if module in done:
            return
        for target in sorted(graph[module]):
            visit(target, (*path, module))
        done.add(module)

    for module in sorted(graph):
        visit(module, ())


def test_every_command_names_a_function_that_takes_what_the_door_passes() -> None:
    """The table names its functions as text, which no type checker follows: their
    parameters are checked here (the door calls entry(args, run), arguments(parser))."""
    from app.cli import COMMANDS, _entry  # noqa: PLC0415

    for name, command in COMMANDS.items():
        entry = inspect.signature(_entry(command.entry))
        assert [str(p.annotation) for p in entry.parameters.values()] == [
            "argparse.Namespace",
            "Run",
        ], (name, command.entry, entry)
        if command.arguments is not None:
            arguments = inspect.signature(_entry(command.arguments))
            assert [str(p.annotation) for p in arguments.parameters.values()] == [
                "argparse.ArgumentParser"
            ], (name, command.arguments, arguments)


def test_no_function_is_longer_than_a_screenful_or_two() -> None:
    for path in APP.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                assert length <= LONGEST_FUNCTION, f"{path}:{node.lineno} {node.name}: {length}"
