"""The README works as written: the shell blocks of its quickstart ("A first formation in five
minutes") and plugin guide ("Writing blocks") run, in order, against a real daemon.

Conventions, in README.md's source:

- ``<!-- readme-test -->`` on the line right before a fenced block marks it; every ``sh`` block
  of the two sections must be marked (:func:`test_every_shell_block_of_the_two_sections_is_marked`).
- ``expect="TEXT"`` in the marker (any number of them): the block's output (stdout and stderr)
  must contain TEXT.
- ``<!-- readme-test file -->`` before a ``python`` or ``toml`` block whose first line is
  ``# PATH``: the block is written to PATH before the blocks after it run.
- A ``sh`` block runs as written, by ``bash -euo pipefail`` (so every command must exit 0), from
  the root of a temporary checkout: ``.venv`` there links to this interpreter's prefix (the venv
  ``make run`` / ``make test`` made), ``examples`` and ``foundry.toml`` to the repository's. PATH
  does not contain the venv: a block must activate it, as a reader must.
- Long-running commands are not run literally:

  - a block that is only ``make run`` or ``[.venv/bin/]foundry serve [--config C]`` starts the
    daemon in the background — ``foundry serve --config C`` (default ``foundry.toml``, relative
    to the checkout) with ``--listen 127.0.0.1:0 --http-listen 127.0.0.1:0`` and a temporary
    ``FOUNDRY_HOME`` — after stopping the one started before with SIGINT (as Ctrl-C would).
    These, and ``FOUNDRY_ADDR`` = the daemon's address in every block's environment (the
    clients' default is the README's 127.0.0.1:50051), are the only substitutions;
  - a block whose last command is ``foundry watch`` runs in the background until its expected
    output has appeared, then gets SIGINT (Ctrl-C) and must exit 0 or 130.

``make run`` itself is checked without running it: :func:`test_make_run_installs_only_the_runtime`.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.daemon import REPO, Daemon

README = REPO / "README.md"
SECTIONS = ("## A first formation in five minutes", "## Writing blocks (the plugin API)")
MARKER = re.compile(r"^<!-- readme-test(?P<args>.*?)-->$")
EXPECT = re.compile(r'expect="([^"]*)"')
FENCE = re.compile(r"^```(?P<lang>\w*)$")
DAEMON = re.compile(r"^(make run|(\.venv/bin/)?foundry serve\b.*)$")
WATCH = re.compile(r"^(\.venv/bin/)?foundry watch\b")
BLOCK_TIMEOUT = 300.0  # seconds; each CLI call starts a Python interpreter, CPU is shared


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based, for messages
    lang: str
    text: str
    marked: bool
    file: bool
    expect: tuple[str, ...]

    @property
    def commands(self) -> list[str]:
        """The block's commands, one per line, as words joined by spaces (comments dropped)."""
        lines = self.text.replace("\\\n", " ").splitlines()
        return [c for c in (" ".join(_words(x)) for x in lines) if c]


def readme_blocks() -> list[Block]:
    """The fenced blocks of the two sections, in document order."""
    return [b for section in SECTIONS for b in _blocks(_section(section))]


def _section(heading: str) -> list[tuple[int, str]]:
    lines = README.read_text().splitlines()
    start = lines.index(heading)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return list(enumerate(lines[start:end], start=start + 1))


def _blocks(lines: list[tuple[int, str]]) -> Iterator[Block]:
    index = 0
    while index < len(lines):
        number, line = lines[index]
        fence = FENCE.match(line)
        if not fence or not fence["lang"]:
            index += 1
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i][1] == "```")
        marker = MARKER.match(lines[index - 1][1]) if index else None
        args = marker["args"] if marker else ""
        yield Block(
            line=number,
            lang=fence["lang"],
            text="\n".join(x for _, x in lines[index + 1 : end]) + "\n",
            marked=marker is not None,
            file=marker is not None and args.split()[:1] == ["file"],
            expect=tuple(EXPECT.findall(args)),
        )
        index = end + 1


def _words(line: str) -> list[str]:
    try:
        return shlex.split(line, comments=True)
    except ValueError:  # not shell words (say, an unbalanced quote): the line as it is
        return line.split()


# --- the structure of the README ---------------------------------------------------------------


def test_every_shell_block_of_the_two_sections_is_marked():
    shell = [b for b in readme_blocks() if b.lang == "sh"]

    assert shell, "no shell blocks found: did the section headings change?"
    assert [b.line for b in shell if not b.marked] == []


def test_file_blocks_name_their_path_on_the_first_line():
    files = [b for b in readme_blocks() if b.file]

    assert files
    for block in files:
        assert block.lang in ("python", "toml"), block.line
        assert re.match(r"^# [\w./-]+$", block.text.splitlines()[0]), block.line


# --- running it ---------------------------------------------------------------------------------


class Reader:
    """A temporary checkout, the daemon the README's blocks talk to, and running the blocks."""

    def __init__(self, root: Path) -> None:
        self.checkout = root / "checkout"
        self.home = root / "foundry-home"
        self.daemon: Daemon | None = None
        self.checkout.mkdir()
        (self.checkout / ".venv").symlink_to(sys.prefix, target_is_directory=True)
        for name in ("examples", "foundry.toml"):
            (self.checkout / name).symlink_to(REPO / name)

    def env(self) -> dict[str, str]:
        venv_bin = str(Path(sys.prefix) / "bin")
        path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != venv_bin)
        env = {**os.environ, "PATH": path, "FOUNDRY_HOME": str(self.home)}
        for name in ("VIRTUAL_ENV", "PYTHONPATH", "FOUNDRY_ADDR"):
            env.pop(name, None)
        if self.daemon is not None:
            env["FOUNDRY_ADDR"] = self.daemon.address
        return env

    def run(self, block: Block) -> None:
        if block.file:
            self.write(block)
        elif block.lang != "sh":
            return
        elif any(DAEMON.match(c) for c in block.commands):
            self.serve(block)
        elif WATCH.match(block.commands[-1]):
            self.interrupt_when_seen(block)
        else:
            self.to_completion(block)

    def write(self, block: Block) -> None:
        first, _, body = block.text.partition("\n")
        path = self.checkout / first.removeprefix("# ")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)

    def serve(self, block: Block) -> None:
        [command] = block.commands  # a daemon block holds the daemon command only
        words = command.split()
        config = words[words.index("--config") + 1] if "--config" in words else "foundry.toml"
        self.stop()
        self.daemon = Daemon(self.home, (self.checkout / config).resolve(), self.env()).start()

    def to_completion(self, block: Block) -> None:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block.text],
            cwd=self.checkout, env=self.env(), capture_output=True, text=True,
            timeout=BLOCK_TIMEOUT,
        )  # fmt: skip
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"README.md:{block.line} exited {done.returncode}:\n{output}"
        _expect(block, output)

    def interrupt_when_seen(self, block: Block) -> None:
        process = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", block.text],
            cwd=self.checkout, env=self.env(), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        output: list[str] = []
        assert process.stdout is not None
        reader = threading.Thread(target=lambda: output.extend(process.stdout or ()), daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + BLOCK_TIMEOUT
            while time.monotonic() < deadline and process.poll() is None:
                if all(text in "".join(output) for text in block.expect):
                    break
                time.sleep(0.1)
            os.killpg(process.pid, signal.SIGINT)  # Ctrl-C reaches the terminal's process group
            code = process.wait(30)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
            reader.join(10)
            process.stdout.close()
        text = "".join(output)
        # 130: the command handled Ctrl-C; -SIGINT: bash re-raised it after the command ended
        assert code in (0, 130, -signal.SIGINT), f"README.md:{block.line} exited {code}:\n{text}"
        _expect(block, text)

    def stop(self) -> None:
        if self.daemon is not None:
            code = self.daemon.stop(signal.SIGINT)
            assert code == 0, self.daemon.stderr()
            self.daemon = None

    def close(self) -> None:
        if self.daemon is not None:
            self.daemon.close()


def _expect(block: Block, output: str) -> None:
    missing = [text for text in block.expect if text not in output]
    assert missing == [], f"README.md:{block.line}: {missing} not in the output:\n{output}"


@pytest.fixture(scope="module")
def reader(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reader]:
    """One reader for the module: the blocks run in README order, one test each, and share
    the checkout and the daemon as a reader's terminals would."""
    if not (Path(sys.prefix) / "bin" / "activate").is_file():
        pytest.skip("the suite runs outside a venv: there is no .venv/bin/activate to source")
    reader = Reader(tmp_path_factory.mktemp("readme"))
    try:
        yield reader
    finally:
        reader.close()


MARKED = [b for b in readme_blocks() if b.marked]


@pytest.mark.parametrize("block", MARKED, ids=[f"README.md:{b.line}" for b in MARKED])
def test_a_block_runs_as_written(reader: Reader, block: Block):
    reader.run(block)


def test_after_the_blocks_the_daemon_stops_on_ctrl_c(reader: Reader):
    assert reader.daemon is not None, "no block started a daemon"
    assert (reader.checkout.parent / "my-plugin" / "pyproject.toml").is_file()  # cp -r ran

    reader.stop()  # SIGINT: drains and exits 0


# --- make run ------------------------------------------------------------------------------------


def _make(folder: Path, *targets: str) -> str:
    done = subprocess.run(
        ["make", "-n", *targets], cwd=folder, capture_output=True, text=True, timeout=60,
        env={**os.environ, "MAKEFLAGS": ""},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def make_folder(tmp_path: Path) -> Path:
    """The Makefile and an older pyproject.toml, with an existing venv (python a stand-in)."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(REPO / name, tmp_path / name)
    os.utime(tmp_path / "pyproject.toml", (time.time() - 60, time.time() - 60))
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").touch()
    return tmp_path


def test_make_run_installs_only_the_runtime(make_folder: Path):
    plan = _make(make_folder, "run")

    assert ".venv/bin/python -m pip install -e .\n" in plan  # no [dev] extras
    assert "[dev]" not in plan
    assert "--quiet" not in plan  # pip shows its progress
    assert "source .venv/bin/activate" in plan  # how to call the CLI, before it serves
    assert plan.index("activate") < plan.index(".venv/bin/foundry serve --config foundry.toml")


def test_make_test_after_make_run_adds_the_dev_extras(make_folder: Path):
    (make_folder / ".venv" / ".installed-runtime").touch()  # what make run left

    assert "pip install" not in _make(make_folder, "run")
    plan = _make(make_folder, "test")
    assert "pip install -e '.[dev]'" in plan
    assert "touch .venv/.installed .venv/.installed-runtime" in plan  # satisfies make run too


def test_make_run_after_make_test_does_not_reinstall(make_folder: Path):
    (make_folder / ".venv" / ".installed").touch()  # what make test left
    (make_folder / ".venv" / ".installed-runtime").touch()

    assert "pip install" not in _make(make_folder, "run")
    assert "pip install" not in _make(make_folder, "test")
