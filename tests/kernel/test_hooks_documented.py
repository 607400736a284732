"""Every hook of the plugin API is documented in the README and exercised by a test."""

import inspect
from pathlib import Path

from foundry.kernel import hookspecs

REPO = Path(__file__).resolve().parents[2]


def _hooks() -> list[str]:
    return [
        name
        for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(fn, "foundry_spec")
    ]


def test_there_are_hooks():
    assert {"register_blocks", "register_block_types", "register_tools"} <= set(_hooks())


def test_every_hook_is_documented_in_the_readme():
    readme = (REPO / "README.md").read_text()
    missing = [name for name in _hooks() if f"`{name}(" not in readme]
    assert not missing, f"hooks missing from the README's hook table: {missing}"


def test_every_hook_has_a_test():
    this = Path(__file__).resolve()
    tests = "\n".join(
        p.read_text() for p in (REPO / "tests").rglob("test_*.py") if p.resolve() != this
    )
    untested = [name for name in _hooks() if name not in tests]
    assert not untested, f"hooks no test implements: {untested}"
