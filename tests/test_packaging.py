"""Every package of the source tree is in the distribution (pyproject's explicit package list),
and so are the data files the daemon reads."""

import shutil
import subprocess
import sys
import tomllib
import zipfile
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


def test_the_wheel_ships_the_proto_sources_and_the_descriptor_set(tmp_path):
    """``pip wheel`` of a copy of the sources: the ``.proto`` files (for grpcurl/buf with a
    schema, or code generation) and ``descriptors.binpb`` (server reflection) are inside."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for folder in set(setuptools["package-dir"].values()):
        shutil.copytree(
            REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "dist"), str(source)],
        check=True, timeout=300, capture_output=True,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("foundry-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    protos = {str(p.relative_to(REPO / "proto")) for p in (REPO / "proto").rglob("*.proto")}
    assert protos, "no .proto sources found"
    assert {f"foundry/proto/{p}" for p in protos} <= names
    assert "foundry/proto/descriptors.binpb" in names
    # The browser dashboard the HTTP listener serves (kernel/edge/http/dashboard): every file.
    dashboard = REPO / "kernel" / "edge" / "http" / "dashboard"
    assets = {p.name for p in dashboard.iterdir() if p.suffix in {".html", ".js", ".css", ".svg"}}
    assert {"index.html", "app.js", "style.css"} <= assets
    assert {f"foundry/kernel/edge/http/dashboard/{a}" for a in assets} <= names
