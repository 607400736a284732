"""Every package of the source tree is in the distribution (pyproject's explicit package list)."""

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FOLDERS = {
    "kernel": "foundry.kernel",
    "plugins": "foundry.plugins",
    "analytics": "foundry.analytics",
}


def test_every_package_folder_is_listed_in_pyproject():
    listed = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join([dotted, *init.parent.relative_to(REPO / folder).parts])
        for folder, dotted in FOLDERS.items()
        for init in (REPO / folder).rglob("__init__.py")
    }
    assert found - listed == set()
