"""Every hook of the plugin API is documented in the README, with its exact signature, and has a
test named for it (``test_<hook>_...``)."""

import ast
import inspect
import re
from pathlib import Path

from foundry.kernel import hookspecs

REPO = Path(__file__).resolve().parents[2]
ROW = re.compile(r"^\|\s*`(\w+)\(([^)`]*)\)`\s*\|", re.MULTILINE)


def hookspec_signatures() -> dict[str, str]:
    """``{name: "name(arg, ...)"}`` for every hookspec of ``kernel/hookspecs.py``."""
    return {
        name: f"{name}({', '.join(inspect.signature(fn).parameters)})"
        for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(fn, "foundry_spec")
    }


def readme_hook_table(text: str) -> dict[str, str]:
    """``{name: "name(arg, ...)"}`` for every row of the README's "Hooks" table."""
    section = text.split("**Hooks**", 1)[1].split("\n\n", 2)[1]  # the table after the heading
    return {
        name: f"{name}({', '.join(a.strip() for a in args.split(',') if a.strip())})"
        for name, args in ROW.findall(section)
    }


def defined_tests(root: Path) -> set[str]:
    return {
        node.name
        for path in root.rglob("test_*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name.startswith("test_")
    }


def test_there_are_hooks():
    assert {"register_blocks", "register_block_types", "register_tools"} <= set(
        hookspec_signatures()
    )


def test_the_readme_hook_table_has_each_hook_with_its_exact_signature():
    documented = readme_hook_table((REPO / "README.md").read_text())
    assert documented == hookspec_signatures()


def test_every_hook_has_a_test_named_for_it():
    tests = defined_tests(REPO / "tests")
    untested = [
        n for n in hookspec_signatures() if not any(t.startswith(f"test_{n}_") for t in tests)
    ]
    assert not untested, f"hooks with no test_<hook>_... test: {untested}"


def test_the_checks_catch_a_wrong_signature_and_a_missing_test(tmp_path):
    table = (
        "**Hooks**:\n\n| hook | returns |\n|---|---|\n| `register_blocks(config)` | x |\n\nafter"
    )
    assert readme_hook_table(table) == {"register_blocks": "register_blocks(config)"}
    assert readme_hook_table(table) != hookspec_signatures()
    (tmp_path / "test_x.py").write_text("def test_register_blocks_x():\n    pass\n")
    assert defined_tests(tmp_path) == {"test_register_blocks_x"}
