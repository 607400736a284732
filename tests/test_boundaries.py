"""The architecture's boundaries, read from the code's own imports (DESIGN.md, "Layout").

- ``kernel/core`` is sans-IO: the standard library, itself, and the error hierarchy only;
- ``kernel/blocks`` and ``kernel/actors`` never import the edge;
- the edge reaches the actors only through their ``messages`` modules and the mailbox protocol;
- only ``kernel/edge`` imports asyncio, grpclib, trio-asyncio, h2 or an HTTP server (the CLI is a
  client program of the daemon and may use a client library);
- ``plugins/`` import only the public surface: ``foundry.kernel`` and ``foundry.kernel.config``.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
KERNEL = REPO / "kernel"
WIRE_LIBRARIES = {
    "asyncio", "grpclib", "trio_asyncio", "h2", "hpack", "hyperframe", "hypercorn",
    "connectrpc", "starlette", "wsproto", "trio_websocket",
}  # fmt: skip
PUBLIC = {"foundry.kernel", "foundry.kernel.config"}


def imports(path: Path) -> Iterator[str]:
    """Every module ``path`` imports, absolute (relative imports resolved)."""
    package = ["foundry", *path.relative_to(REPO).with_suffix("").parts][:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            yield module
            yield from (f"{module}.{alias.name}" for alias in node.names)


def files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py"))


def top(module: str) -> str:
    return module.split(".")[0]


def test_the_layout_has_the_documented_packages():
    for package in ("core", "blocks", "actors", "edge", "cli", "actors/engine",
                    "actors/scheduler", "actors/replay", "actors/tap", "actors/store",
                    "edge/grpc"):  # fmt: skip
        assert (KERNEL / package / "__init__.py").is_file(), package
    assert sorted(p.name for p in KERNEL.glob("*.py")) == [
        "__init__.py", "config.py", "daemon.py", "errors.py", "hookspecs.py", "testing.py",
    ]  # fmt: skip


@pytest.mark.parametrize("path", files(KERNEL / "core"), ids=lambda p: p.name)
def test_core_imports_only_the_standard_library(path):
    for module in imports(path):
        allowed = (
            top(module) in sys.stdlib_module_names
            or module == "__future__"
            or module.startswith(("foundry.kernel.core", "foundry.kernel.errors"))
        )
        assert allowed, f"{path.relative_to(REPO)} imports {module}"


@pytest.mark.parametrize(
    "path", files(KERNEL / "actors") + files(KERNEL / "blocks"), ids=lambda p: p.name
)
def test_actors_and_blocks_never_import_the_edge(path):
    for module in imports(path):
        assert not module.startswith("foundry.kernel.edge"), f"{path} imports {module}"
        assert top(module) not in WIRE_LIBRARIES, f"{path.relative_to(REPO)} imports {module}"


@pytest.mark.parametrize("path", files(KERNEL / "edge"), ids=lambda p: p.name)
def test_the_edge_reaches_actors_only_through_their_messages(path):
    for module in imports(path):
        if not module.startswith("foundry.kernel.actors"):
            continue
        parts = module.split(".")
        allowed = "messages" in parts or parts[:4] == ["foundry", "kernel", "actors", "mailbox"]
        assert allowed, f"{path.relative_to(REPO)} imports {module}"


def test_only_the_edge_imports_wire_libraries():
    offenders = [
        f"{path.relative_to(REPO)}: {module}"
        for folder in (KERNEL, REPO / "plugins", REPO / "analytics")
        for path in files(folder)
        if "edge" not in path.relative_to(KERNEL if folder == KERNEL else REPO).parts
        and "cli" not in path.relative_to(REPO).parts
        for module in imports(path)
        if top(module) in WIRE_LIBRARIES
    ]
    assert offenders == []


@pytest.mark.parametrize("path", files(REPO / "plugins"), ids=lambda p: p.name)
def test_plugins_import_only_the_public_surface(path):
    for module in imports(path):
        if module.startswith("foundry.kernel"):
            owner = module if module in PUBLIC else module.rpartition(".")[0]
            assert owner in PUBLIC, f"{path.relative_to(REPO)} imports {module}"


def test_the_checker_sees_a_violation(tmp_path):
    """The rules above can fail: a core module importing trio is caught."""
    fake = KERNEL / "core" / "_boundary_probe.py"
    try:
        fake.write_text("import trio\nfrom foundry.kernel.actors.mailbox import Reply\n")
        found = list(imports(fake))
    finally:
        fake.unlink()
    assert "trio" in found
    assert "foundry.kernel.actors.mailbox.Reply" in found
