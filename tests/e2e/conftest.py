"""Fixtures of the end-to-end suite: real daemons (``make_daemon`` comes from ``tests/conftest.py``;
``shared_daemon`` here starts one per test module, for tests that only add their own workflows) and
the official grpcio client generated from the ``.proto`` sources."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.daemon import Daemon, write_config
from tests.e2e.grpcio_client import Grpcio, generate


@pytest.fixture(scope="session")
def grpcio_client(tmp_path_factory: pytest.TempPathFactory) -> Grpcio:
    return generate(tmp_path_factory.mktemp("grpcio-generated"))


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Daemon]]:
    """``shared_daemon(config_text="", env=None)``: a daemon kept for the whole test module.

    Starting a daemon costs most of a second; tests that key everything by their own event ids
    can share one. All are killed when the module is done.
    """
    started: list[Daemon] = []

    def make(config_text: str = "", env: dict[str, str] | None = None) -> Daemon:
        base = tmp_path_factory.mktemp("shared")
        daemon = Daemon(base / "home", write_config(base / "d.toml", config_text), env)
        started.append(daemon)
        return daemon.start()

    try:
        yield make
    finally:
        for daemon in started:
            daemon.close()
