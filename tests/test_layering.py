"""Layering: stage recipes (arena_dist.stages) sit on top of the library; no library module imports one, and test
fixtures live under tests/, not in the package."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "arena_dist"
# The CLI and the demo run recipes by design (the CLI by name, through importlib).
ENTRY_POINTS = {"cli.py", "demo.py"}


def imported_modules(path: Path) -> set[str]:
    """Every module an `import` / `from ... import` statement of the file names (`from a import b` gives a, a.b)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def library_modules() -> list[Path]:
    return [path for path in sorted(PACKAGE.rglob("*.py"))
            if path.relative_to(PACKAGE).parts[0] != "stages"
            and path.relative_to(PACKAGE).as_posix() not in ENTRY_POINTS]


def test_no_library_module_imports_a_stage_recipe():
    offenders = [path.relative_to(PACKAGE).as_posix() for path in library_modules()
                 if any(name == "arena_dist.stages" or name.startswith("arena_dist.stages.")
                        for name in imported_modules(path))]
    assert offenders == [], f"library modules importing arena_dist.stages: {offenders}"


def test_the_check_sees_every_import_form(tmp_path):
    for line in ("import arena_dist.stages.plan", "from arena_dist.stages import plan",
                 "from arena_dist import stages", "def f():\n    from arena_dist.stages.plan import Config"):
        source = tmp_path / "m.py"
        source.write_text(line + "\n")
        assert any(n == "arena_dist.stages" or n.startswith("arena_dist.stages.") for n in imported_modules(source))


def test_no_test_fixture_in_the_package():
    assert not (PACKAGE / "label" / "tiny.py").exists() and not (PACKAGE / "models" / "tiny.py").exists()
