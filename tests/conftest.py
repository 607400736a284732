"""Fixtures of the whole suite.

- ``make_daemon`` (function) and ``shared_daemon`` (module): ``make(config_text="", env=None,
  name="d", config_file=None)`` starts a real daemon (:class:`tests.daemon.Daemons`, one
  implementation for both scopes). A shared daemon is kept for the whole test module: starting one
  costs most of a second, and tests that key everything by their own ids can share it. All are
  killed at the end of their scope.
- ``daemon_config_text`` (session): how a test's config text becomes the daemon's; a test folder
  overrides it to add what its daemons all need (``tests/runs/conftest.py``: declared blocks and
  the fake OpenAI endpoint).
- ``daemon`` (function): ``make_daemon()``.
- ``grpcio_client`` (session): the official grpcio client generated from the ``.proto`` sources,
  the independent client of the wire tests.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.daemon import Daemon, Daemons, daemons
from tests.grpcio_client import Grpcio, generate

# A suite started in the background (``nohup make test &``) inherits SIGINT ignored, and so would
# every daemon and CLI it starts, which many tests stop with Ctrl-C (a process that inherits an
# ignored SIGINT rightly keeps ignoring it): they get Python's default handling instead.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def daemon_config_text() -> Callable[[str], str]:
    return lambda text: text


@pytest.fixture
def make_daemon(tmp_path: Path, daemon_config_text: Callable[[str], str]) -> Iterator[Daemons]:
    with daemons(lambda _: tmp_path, daemon_config_text) as make:
        yield make


@pytest.fixture(scope="module")
def shared_daemon(
    tmp_path_factory: pytest.TempPathFactory, daemon_config_text: Callable[[str], str]
) -> Iterator[Daemons]:
    with daemons(lambda _: tmp_path_factory.mktemp("shared"), daemon_config_text) as make:
        yield make


@pytest.fixture
def daemon(make_daemon: Daemons) -> Daemon:
    return make_daemon()


@pytest.fixture(scope="session")
def grpcio_client(tmp_path_factory: pytest.TempPathFactory) -> Grpcio:
    return generate(tmp_path_factory.mktemp("grpcio-generated"))
