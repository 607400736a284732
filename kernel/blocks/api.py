"""The Block API: one kind of plugin serves both as a Foundry task block (triggered by events) and
as a FleetForge DAG step type (called with a step's inputs).

A block author subclasses :class:`Block` or decorates a function with :func:`block`, and returns the
blocks from a ``register_blocks`` hook implementation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import inspect
import json
import os
import signal
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from foundry.kernel.actors.threads import ThreadPool
from foundry.kernel.blocks.children import Capture, run_capturing
from foundry.kernel.blocks.files import regular_file
from foundry.kernel.core.envpolicy import child_environment
from foundry.kernel.core.ids import MAX_ID_LENGTH, payload_json_of
from foundry.kernel.core.throttle import Action, Throttle
from foundry.kernel.core.tracecontext import traceparent


class BlockKind(StrEnum):
    """An observer reads and reports; a mutator changes the world (throttles restrain it)."""

    OBSERVER = "observer"
    MUTATOR = "mutator"


@dataclass(frozen=True)
class Usage:
    """What a step cost: tokens in and out, and money."""

    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.tokens_in + other.tokens_in,
            self.tokens_out + other.tokens_out,
            self.cost + other.cost,
        )


MAX_USAGE = 2**53  # a token count or a cost, at most (JSON's exact integers)


@dataclass(frozen=True)
class Emission:
    """An event a block asked to emit."""

    event_type: str
    payload: Mapping[str, Any]
    # The payload and its JSON, taken at emit() when it holds more than plain values (the
    # payload then a copy made of that JSON): a block that changed a nested value after
    # emitting — one dict, emitted once an item — had the change stored in every event. What
    # is stored and delivered is the JSON, while ``payload`` is still that copy (an emission a
    # block replaced is read afresh). None: none taken, the JSON is made when the block is done.
    taken: tuple[Mapping[str, Any], str] | None = field(default=None, compare=False, repr=False)

    def taken_json(self) -> str | None:
        """The JSON taken at emit(), unless the payload was replaced since."""
        taken = self.taken
        return taken[1] if taken is not None and taken[0] is self.payload else None


_PLAIN = frozenset({str, int, float, bool, type(None)})


def _emitted(event_type: str, payload: Mapping[str, Any]) -> Emission:
    """What ``emit`` records: the payload as it is now, whatever the block changes later."""
    copied = dict(payload)
    if all(type(value) in _PLAIN for value in copied.values()):
        return Emission(event_type, copied)
    try:
        text = payload_json_of(copied)
    except BaseException:  # noqa: BLE001 - not JSON (or a plugin value raising SystemExit):
        return Emission(event_type, copied)  # refused when the block has returned, as ever
    snapshot = json.loads(text)
    return Emission(event_type, snapshot, (snapshot, text))


def event_type_fault(event_type: object) -> str:
    """Why a block may not emit ``event_type`` ("" when it may): a non-empty string of at most
    ``MAX_ID_LENGTH`` characters, as an Emit's, without NUL (a shell block gets the type in its
    environment, which cannot hold one)."""
    if not isinstance(event_type, str) or not event_type or "\0" in event_type:
        return "must be a non-empty string without NUL"
    if len(event_type) > MAX_ID_LENGTH:
        return f"is longer than {MAX_ID_LENGTH} characters"
    return ""


@dataclass(frozen=True)
class CommandResult:
    exit_code: int
    output: str  # stdout and stderr together, as they came (the trace's raw output)
    stdout: str = ""  # stdout alone: what a command answers (its warnings go to stderr)
    stderr: str = ""  # stderr alone: where a failing command says why


class _LazyPath:
    """A Path attribute that also takes a str, and makes the Path when first read: building one
    costs ~5 µs, and most executions never look at their artifact folder."""

    def __set_name__(self, owner: type, name: str) -> None:
        self._slot = f"_{name}"

    def __get__(self, instance: object, owner: type | None = None) -> Path:
        if instance is None:
            raise AttributeError(self._slot)  # no default: dataclass makes the field required
        value: Path | str = getattr(instance, self._slot)
        if isinstance(value, str):
            value = Path(value)
            setattr(instance, self._slot, value)
        return value

    def __set__(self, instance: object, value: Path | str) -> None:
        if hasattr(instance, self._slot):
            # A block that pointed its folder elsewhere had the daemon list, and sign, any
            # folder's files (/etc's) as its artifacts.
            raise AttributeError(
                f"ctx.{self._slot[1:]} is the folder the kernel gave this execution: a block "
                "cannot move it"
            )
        setattr(instance, self._slot, value)


@dataclass
class BlockContext:
    """What a running block sees, and how it reports back.

    ``payload`` is the triggering event's payload for a task block, or the step's resolved inputs
    for a DAG step (``inputs`` is the same mapping under its step name).
    """

    payload: Mapping[str, Any]
    artifact_dir: _LazyPath = _LazyPath()  # a Path when read; a str is accepted
    throttle: Throttle = Throttle.FULL
    event_type: str = ""
    event_id: str = ""
    project: str = ""
    run_id: str = ""
    step_id: str = ""
    seed: int = 0
    model: str = ""
    env: Mapping[str, str] = field(default_factory=dict)
    attempt: int = 1
    summary: str = ""
    emissions: list[Emission] = field(default_factory=list)
    usage: Usage = Usage()
    raw_output: str = ""
    exit_code: int = 0
    artifacts_touched: bool = False  # artifact_path or run_command: the folder is listed
    artifacts_written: list[str] = field(default_factory=list)  # by write_artifact
    # Of those, the ones write_artifact wrote (checked as it wrote them): any other a block put
    # there itself is checked where it leads (``resolves_within``).
    api_written: frozenset[str] = field(default=frozenset(), init=False, repr=False, compare=False)
    # Whether this execution ran a program (run_command sets it): when not, its trace shows
    # ``raw_output`` and ``exit_code`` as null, as the public Foundry daemon's does.
    ran_command: bool = False
    # W3C trace context of this execution (a block execution or a step attempt): its span.
    trace_id: str = ""
    span_id: str = ""

    @property
    def inputs(self) -> Mapping[str, Any]:
        return self.payload

    @property
    def traceparent(self) -> str:
        """This execution's span as a W3C ``traceparent`` value ("" outside a trace): what a
        child process gets as ``TRACEPARENT`` and an outgoing HTTP request as its header."""
        return traceparent(self.trace_id, self.span_id) if self.trace_id else ""

    def emit(self, event_type: str, payload: Mapping[str, Any] | None = None) -> None:
        """Ask for an event. The throttle decides whether it is delivered downstream."""
        fault = event_type_fault(event_type)
        if fault:
            raise ValueError(f"emit: event_type {fault}")
        if payload is None:
            payload = {}
        elif not isinstance(payload, Mapping):  # (0, "", [] became {}; [("a", 1)] {"a": 1})
            raise TypeError(f"emit: payload must be a JSON object (a mapping), not "
                            f"{type(payload).__name__}")  # fmt: skip
        self.emissions.append(_emitted(event_type, payload))

    def record_usage(self, tokens_in: int = 0, tokens_out: int = 0, cost: float = 0.0) -> None:
        """Add to this execution's usage: whole token counts from 0, a finite cost from 0
        (else ``ValueError``): a negative count left the step and its run unattested."""
        for name, count in (("tokens_in", tokens_in), ("tokens_out", tokens_out)):
            if type(count) is not int or not 0 <= count <= MAX_USAGE:
                raise ValueError(f"record_usage: {name} must be a whole number from 0 to "
                                 f"{MAX_USAGE}, got {count!r:.40}")  # fmt: skip
        if type(cost) not in (int, float) or not 0 <= cost <= MAX_USAGE:  # (NaN fails too)
            raise ValueError(f"record_usage: cost must be a number from 0, got {cost!r:.40}")
        total = self.usage + Usage(tokens_in, tokens_out, cost)
        # the totals too, here: past the bound, the block failed later naming ctx.usage
        for name in ("tokens_in", "tokens_out", "cost"):
            if getattr(total, name) > MAX_USAGE:
                raise ValueError(f"record_usage: this execution's {name} would pass {MAX_USAGE}")
        self.usage = total

    def artifact_path(self, name: str) -> Path:
        """A path under this execution's artifact folder; files there are listed in the trace.
        It makes the folder on the calling thread: an async block writes with
        :meth:`write_artifact` instead."""
        self.artifacts_touched = True
        return self._artifact_file(name)[0]

    async def write_artifact(self, name: str, data: str | bytes) -> Path:
        """Write ``data`` (text as UTF-8) to the file ``name`` in this execution's artifact
        folder and list it in the trace; its path. The folder's creation and the write run on a
        worker thread: a new folder and file cost a few hundred microseconds of system calls,
        during which the trio thread would run no other chain."""
        path, listed = await ARTIFACT_THREADS.run(self._write_artifact, name, data)
        self.artifacts_written.append(listed)
        self.api_written = self.api_written | {listed}
        return path

    def _write_artifact(self, name: str, data: str | bytes) -> tuple[Path, str]:
        content = data.encode() if isinstance(data, str) else data
        if _plain_file_name(name):
            written = _write_plain_file(os.fspath(self.artifact_dir), name, content)
            if written is not None:
                return Path(written), written
        path, listed = self._artifact_file(name)
        # "reports/out.txt": its folder made, within (it failed with FileNotFoundError);
        # artifact_path leaves that to the block, as ever
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return path, listed

    def _artifact_file(self, name: str) -> tuple[Path, str]:
        """``name``'s resolved path in the artifact folder (made if need be), and the name the
        trace lists it by (as a scan of the folder finds it)."""
        folder = self.artifact_dir
        folder.mkdir(parents=True, exist_ok=True)
        real_folder = folder.resolve()
        path = (folder / name).resolve()
        if not path.is_relative_to(real_folder):
            raise ValueError(f"artifact name {name!r} leaves the artifact folder")
        return path, str(folder / path.relative_to(real_folder))

    async def run_command(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes = b"",
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        pass_env: Collection[str] = (),
    ) -> CommandResult:
        """Run a program (no shell), capturing stdout and stderr together as the raw output.

        The child starts from a minimal environment (``envpolicy.child_environment``), never the
        daemon's: the daemon variables named in ``pass_env``, the step's ``env`` a run set (the
        kernel checked it against the block's ``allow_env``), then ``env``; ``TRACEPARENT`` is
        this execution's span, whatever the others say.
        """
        self.artifact_dir.mkdir(parents=True, exist_ok=True)
        self.artifacts_touched = True
        full_env = child_environment(
            os.environ, passed=pass_env, from_run=self.env, declared=env,
            traceparent=self.traceparent,
        )  # fmt: skip
        capture, stdout, stderr = Capture(), Capture(), Capture()
        try:
            returncode, captured = await run_capturing(
                argv,
                stdin=stdin,
                env=full_env,
                cwd=cwd,
                capture=capture,
                stdout=stdout,
                stderr=stderr,
            )  # a terminal's Ctrl-C is the daemon's (its process group is its own: children.py)
        except BaseException:
            if capture.started:  # cut short (its block's timeout): what it wrote is the trace's
                killed = capture.returncode
                self._ran(capture.output(), -signal.SIGKILL if killed is None else killed)
            raise
        result = self._ran(captured, returncode)
        return dataclasses.replace(result, stdout=stdout.output().decode(errors="replace"),
                                   stderr=stderr.output().decode(errors="replace"))  # fmt: skip

    def _ran(self, captured: bytes, returncode: int) -> CommandResult:
        output = captured.decode(errors="replace")
        self.raw_output += output
        self.exit_code = returncode
        self.ran_command = True
        return CommandResult(returncode, output)

    def artifact_folder(self) -> str:
        """The artifact folder's path as text, without making a Path of it (~5 µs)."""
        return os.fspath(self._artifact_dir)  # type: ignore[attr-defined]  # (_LazyPath's slot)

    def listed_artifacts(self) -> list[str]:
        """The files this execution wrote to its artifact folder: those ``write_artifact``
        wrote, or, once ``artifact_path`` or ``run_command`` let anything be written there,
        every file the folder holds."""
        if not self.artifacts_touched or not self.artifact_dir.is_dir():
            # (a path that is not a str or not in the folder, set by the block itself, fails its
            # execution; one the block removed since is not listed: nothing is left to attest)
            if not self.artifacts_written:  # (most executions: no artifact_dir made a Path)
                return []
            folder, checked = self.artifact_folder(), self.api_written
            # once a file, however its path was spelled (``dir/./a``, ``dir//a``, ``dir/a``)
            return sorted({
                os.path.normpath(path) for path in self.artifacts_written
                if type(path) is str and in_artifact_folder(folder, path) and regular_file(path)
                and (path in checked or resolves_within(folder, path))
            })  # fmt: skip
        # Regular files only, never a symbolic link: a command that unpacked a link to
        # /proc/self/environ had the daemon read its own environment and sign its digest.
        found = sorted(str(p) for p in self.artifact_dir.rglob("*") if regular_file(p))
        if not found:  # made for a command that wrote nothing: one empty folder a shell step
            with contextlib.suppress(OSError):
                self.artifact_dir.rmdir()
        return found

    async def collect_artifacts(self) -> list[str]:
        """:meth:`listed_artifacts`, with the folder's scan (when there is one) on a worker
        thread: a command may leave thousands of files, and the trio thread runs every other
        chain meanwhile."""
        if not self.artifacts_touched:
            return self.listed_artifacts()  # no scan: the names write_artifact kept
        return await ARTIFACT_THREADS.run(self.listed_artifacts)


def in_artifact_folder(folder: str, path: str) -> bool:
    """``path`` names a file within ``folder``, ``..`` segments resolved in both (a home given
    as ``../home`` is a folder of ``..``: every artifact of it was refused)."""
    if "\0" in path:
        return False
    inside = os.path.normpath(folder) + os.sep
    return os.path.normpath(path).startswith(inside)


def resolves_within(folder: str, path: str) -> bool:
    """``path``, its links followed (a folder in it a link to ``/etc``), is within ``folder``."""
    return os.path.realpath(path).startswith(os.path.realpath(folder) + os.sep)


def _plain_file_name(name: str) -> bool:
    """A name that can only mean a file directly in the folder: no separator, not ``.``/``..``,
    not empty."""
    return (
        bool(name) and name not in (".", "..") and os.sep not in name and "\0" not in name
        and (os.altsep is None or os.altsep not in name)
    )  # fmt: skip


_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
_NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _write_plain_file(folder: str, name: str, content: bytes) -> str | None:
    """Write ``content`` to ``folder/name`` (folder made if need be); its path. None when the
    name is a symbolic link already (or the system cannot refuse one): the caller resolves it.

    A plain name cannot leave the folder unless it is a link, and ``O_NOFOLLOW`` refuses a link,
    so no ``realpath`` is needed (two of them walked every folder up to ``/``: ~280 against
    ~120 µs of CPU an artifact, measured here)."""
    if not _NO_FOLLOW:
        return None
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    try:
        fd = os.open(path, _NEW_FILE | _NO_FOLLOW, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None
        raise
    with open(fd, "wb") as file:  # closes fd, whatever happens
        file.write(content)
    return path


# Threads writing artifacts at once (more only contend for the interpreter lock), shared by every
# execution of the process.
ARTIFACT_THREADS = ThreadPool("foundry-artifacts", 4)


class NeedsAwait(Exception):
    """A block asked to run without awaiting cannot: the kernel awaits it instead."""


_DECLARED = frozenset((
    "name", "kind", "sinks", "timeout", "retries", "backoff", "description", "allow_env",
    "synchronous",
))  # fmt: skip


class Block:
    """Base class of every block.

    Override :meth:`run`; optionally :meth:`accepts` (payload self-filter), :meth:`audit` (the
    side-effect-free step a mutator runs under AUDIT_ONLY) and :meth:`simulate` (the events a
    mutator offers under DRY_RUN).
    """

    name: str = ""
    kind: BlockKind = BlockKind.OBSERVER
    sinks: tuple[str, ...] = ()
    timeout: float | None = 60.0
    retries: int = 0
    backoff: float = 0.2
    description: str = ""
    # The names a run's step ``env`` may set for this block ("*": any name not forbidden
    # outright, see envpolicy). Default none: a run cannot change a block's environment.
    allow_env: frozenset[str] = frozenset()
    # True when run/audit/simulate never await: the kernel may then run the block through
    # call(), inline, without a task or deadline scope (its timeout cannot interrupt it anyway).
    synchronous: bool = False

    def __setattr__(self, key: str, value: Any) -> None:
        # What a block declares is fixed once the daemon registered it: one that renamed itself
        # in run() was recorded in traces under another block's name (a built-in's), while
        # Status showed its own; a mutator that made itself an observer passed its throttle.
        if key in _DECLARED and self.__dict__.get("_registered"):
            raise AttributeError(f"block {self.name!r}: its {key} is fixed once the daemon "
                                 "registered it")  # fmt: skip
        object.__setattr__(self, key, value)

    def __init__(
        self,
        name: str | None = None,
        *,
        kind: BlockKind | str | None = None,
        sinks: Iterable[str] | None = None,
        timeout: float | None | bool = False,
        retries: int | None = None,
        backoff: float | None = None,
        description: str | None = None,
        allow_env: Iterable[str] | None = None,
    ) -> None:
        self.name = name if name is not None else self.name or type(self).__name__
        self.kind = BlockKind(kind) if kind is not None else BlockKind(self.kind)
        given = sinks if sinks is not None else self.sinks
        if isinstance(given, str):  # ("ticket_scored") without its comma: sinks t, i, c, k, …
            raise ValueError(f"block {self.name!r}: sinks: expected a list or tuple of event "
                             f"types, got the string {given!r:.100}")  # fmt: skip
        self.sinks = tuple(given)
        if all(type(s) is str for s in self.sinks):  # (others: block_fault names them)
            self.sinks = tuple(dict.fromkeys(self.sinks))  # one listed twice ran it twice
        if timeout is not False:
            self.timeout = None if timeout is None else float(timeout)
        self.retries = retries if retries is not None else self.retries
        self.backoff = backoff if backoff is not None else self.backoff
        self.description = description if description is not None else self.description
        if allow_env is not None:
            self.allow_env = frozenset(allow_env)

    def accepts(self, payload: Mapping[str, Any]) -> bool:
        """Payload self-filter: return False to let an event pass this block by."""
        return True

    def env_allowed(self, inputs: Mapping[str, Any]) -> frozenset[str]:
        """The env names a DAG step with these (unresolved) inputs may set: ``allow_env``."""
        return self.allow_env

    def model_refused(self, model: str) -> str:
        """Why a DAG step of this type may not name ``model`` ("" when it may): asked at
        SubmitRun, PatchStep and eval pack sync, so a model this block cannot serve is refused
        with INVALID_ARGUMENT naming the step, not found out when the step runs. Default: any."""
        return ""

    def runs_as(self, inputs: Mapping[str, Any]) -> Block:
        """The block whose ``timeout``, ``retries`` and ``backoff`` a DAG step of this type with
        these (resolved) inputs runs under where the step sets none: this one. A block that
        hands its work to another answers that one (the ``shell`` step: the declared command
        its ``command`` names — a step ran past its command's timeout, never retried)."""
        return self

    async def run(self, ctx: BlockContext) -> Any:
        """Do the work. Return the output (any JSON value); emit events with ``ctx.emit``."""
        raise NotImplementedError(f"block {self.name!r} does not implement run()")

    async def audit(self, ctx: BlockContext) -> None:
        """AUDIT_ONLY: describe what run() would do, without side effects. Default: nothing."""

    async def simulate(self, ctx: BlockContext) -> None:
        """DRY_RUN: emit simulated events so the chain can be exercised read-only."""

    def call(self, action: Action, ctx: BlockContext) -> Any:
        """For a ``synchronous`` block: run, audit or simulate (per ``action``) without awaiting,
        returning run()'s output. Raises :class:`NeedsAwait` when that is not possible."""
        raise NeedsAwait(self.name)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self.kind} sinks={list(self.sinks)}>"


BlockFn = Callable[[BlockContext], Any]
AcceptsFn = Callable[[Mapping[str, Any]], bool]


class FunctionBlock(Block):
    """A block made from plain functions by :func:`block`."""

    def __init__(
        self,
        fn: BlockFn,
        *,
        accepts: AcceptsFn | None = None,
        audit: BlockFn | None = None,
        simulate: BlockFn | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self._fn, self._accepts, self._audit, self._simulate = fn, accepts, audit, simulate
        self.synchronous = not any(
            inspect.iscoroutinefunction(f) for f in (fn, audit, simulate) if f is not None
        )
        self.description = self.description or inspect.getdoc(fn) or ""

    def accepts(self, payload: Mapping[str, Any]) -> bool:
        return self._accepts(payload) if self._accepts else True

    async def run(self, ctx: BlockContext) -> Any:
        result = self._fn(ctx)
        # A type lookup, not inspect.isawaitable (an ABC check), and no extra coroutine frame:
        # this is the engine's innermost call.
        return await result if hasattr(type(result), "__await__") else result

    async def audit(self, ctx: BlockContext) -> None:
        if self._audit:
            await _maybe_await(self._audit(ctx))

    async def simulate(self, ctx: BlockContext) -> None:
        if self._simulate:
            await _maybe_await(self._simulate(ctx))

    def call(self, action: Action, ctx: BlockContext) -> Any:
        fn = {Action.RUN: self._fn, Action.AUDIT: self._audit}.get(action, self._simulate)
        if fn is None:
            return None
        result = fn(ctx)
        if hasattr(type(result), "__await__"):
            # A plain function that returned an awaitable (say, a lambda around a coroutine
            # function): nothing of it ran yet. The kernel awaits this block from now on.
            if inspect.iscoroutine(result):
                result.close()
            object.__setattr__(self, "synchronous", False)  # (the kernel's, not the block's)
            raise NeedsAwait(self.name)
        return result if action is Action.RUN else None


def block(
    name: str,
    *,
    sinks: Iterable[str] = (),
    kind: BlockKind | str = BlockKind.OBSERVER,
    timeout: float | None = 60.0,
    retries: int = 0,
    backoff: float = 0.2,
    accepts: AcceptsFn | None = None,
    audit: BlockFn | None = None,
    simulate: BlockFn | None = None,
    allow_env: Iterable[str] = (),
) -> Callable[[BlockFn], FunctionBlock]:
    """Make a block from a function ``fn(ctx) -> output`` (sync or async)."""

    def wrap(fn: BlockFn) -> FunctionBlock:
        return FunctionBlock(
            fn,
            name=name,
            sinks=sinks,
            kind=kind,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            accepts=accepts,
            audit=audit,
            simulate=simulate,
            allow_env=allow_env,
        )

    return wrap


async def _maybe_await(value: Any) -> Any:
    if hasattr(type(value), "__await__"):
        return await value
    return value


BlockFactory = Callable[[Mapping[str, Any]], Block]
"""Builds a block from a ``[[blocks]]`` table of foundry.toml (see ``register_block_types``)."""
