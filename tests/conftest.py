from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.daemon import Daemon, write_config


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """``make_daemon(config_text="", env=None)`` starts a real daemon; all are killed at the end."""
    started: list[Daemon] = []

    def make(config_text: str = "", env: dict[str, str] | None = None, name: str = "d") -> Daemon:
        config = write_config(tmp_path / f"{name}.toml", config_text)
        daemon = Daemon(tmp_path / f"{name}-home", config, env)
        started.append(daemon)
        return daemon.start()

    try:
        yield make
    finally:
        for daemon in started:
            daemon.close()


@pytest.fixture
def daemon(make_daemon: Callable[..., Daemon]) -> Daemon:
    return make_daemon()
