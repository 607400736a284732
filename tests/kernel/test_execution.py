"""execute(): one block once, with timeout and retries; pure trio, so the autojump clock is safe."""

import hashlib
import json
import os
import threading
from pathlib import Path

import pytest
import trio
from foundry.kernel.blocks.api import Block, BlockContext, block
from foundry.kernel.blocks.execution import Outcome, execute, model_refusal, settings_of
from foundry.kernel.core.throttle import Action
from foundry.kernel.testing import run_block


def contexts(tmp_path: Path, made: list[BlockContext] | None = None):
    def new_context(attempt: int) -> BlockContext:
        ctx = BlockContext(payload={"k": "v"}, artifact_dir=tmp_path / "art", attempt=attempt)
        if made is not None:
            made.append(ctx)
        return ctx

    return new_context


class Flaky(Block):
    name = "Flaky"

    def __init__(self, failures: int, **options):
        super().__init__(**options)
        self.failures = failures
        self.attempts_seen: list[int] = []
        self.started_at: list[float] = []

    async def run(self, ctx):
        self.attempts_seen.append(ctx.attempt)
        self.started_at.append(trio.current_time())
        ctx.emit("tried", {"attempt": ctx.attempt})
        if len(self.attempts_seen) <= self.failures:
            raise RuntimeError(f"attempt {ctx.attempt} broke")
        return {"ok": ctx.attempt}


async def test_retries_with_exponential_backoff_then_succeeds(tmp_path, autojump_clock):
    flaky = Flaky(failures=2, retries=2, backoff=1.0)
    told = []

    outcome = await execute(
        flaky, Action.RUN, contexts(tmp_path), on_retry=lambda n, e, d: told.append((n, e, d))
    )

    assert outcome.success
    assert outcome.error == ""
    assert outcome.attempts == 3
    assert flaky.attempts_seen == [1, 2, 3]
    gaps = [b - a for a, b in zip(flaky.started_at, flaky.started_at[1:], strict=False)]
    assert gaps == [1.0, 2.0]
    assert told == [
        (1, "RuntimeError: attempt 1 broke", 1.0),
        (2, "RuntimeError: attempt 2 broke", 2.0),
    ]
    # only the successful attempt's emissions survive
    assert [e.payload for e in outcome.emissions] == [{"attempt": 3}]
    assert outcome.output == {"ok": 3}


async def test_retries_exhausted_is_a_failure_with_no_emissions(tmp_path, autojump_clock):
    flaky = Flaky(failures=5, retries=1, backoff=0.5)

    outcome = await execute(flaky, Action.RUN, contexts(tmp_path))

    assert not outcome.success
    assert outcome.attempts == 2
    assert outcome.error == "RuntimeError: attempt 2 broke"
    assert outcome.emissions == ()


async def test_a_slow_block_times_out(tmp_path, autojump_clock):
    @block("Sleepy", timeout=3)
    async def sleepy(ctx):
        await trio.sleep(3600)

    started = trio.current_time()
    outcome = await execute(sleepy, Action.RUN, contexts(tmp_path))

    assert not outcome.success
    assert outcome.timed_out
    assert "timed out" in outcome.error
    assert "timed out" in outcome.summary
    assert trio.current_time() - started == 3


async def test_a_timed_out_attempt_is_retried(tmp_path, autojump_clock):
    calls = []

    @block("SlowThenFast", timeout=1, retries=1, backoff=0)
    async def slow_then_fast(ctx):
        calls.append(ctx.attempt)
        if ctx.attempt == 1:
            await trio.sleep(10)
        return "fine"

    outcome = await execute(slow_then_fast, Action.RUN, contexts(tmp_path))

    assert outcome.success
    assert outcome.attempts == 2
    assert not outcome.timed_out
    assert calls == [1, 2]


async def test_audit_and_simulate_are_never_retried(tmp_path, autojump_clock):
    calls = []

    async def broken(ctx):
        calls.append(ctx.attempt)
        raise ValueError("no")

    @block("M", kind="mutator", retries=3, audit=broken, simulate=broken)
    def mutator(ctx):
        raise AssertionError("run must not be called")

    for action in (Action.AUDIT, Action.SIMULATE):
        outcome = await execute(mutator, action, contexts(tmp_path))
        assert not outcome.success
        assert outcome.attempts == 1
    assert calls == [1, 1]


async def test_failure_summary_is_the_error_even_if_the_block_set_one(tmp_path):
    @block("Deploy")
    def deploy(ctx):
        ctx.summary = "deploying build 42"
        raise RuntimeError("registry unreachable")

    outcome = await execute(deploy, Action.RUN, contexts(tmp_path))

    assert not outcome.success
    assert "registry unreachable" in outcome.summary


async def test_success_summary_prefers_the_blocks_own_then_the_output(tmp_path):
    @block("Own")
    def own(ctx):
        ctx.summary = "did the thing"
        return "ignored"

    @block("Output")
    def output(ctx):
        return "x" * 500

    assert (await execute(own, Action.RUN, contexts(tmp_path))).summary == "did the thing"
    long = (await execute(output, Action.RUN, contexts(tmp_path))).summary
    assert len(long) == 200
    assert long.endswith("...")


async def test_an_outputs_summary_is_the_start_of_its_json_encoded_only_that_far(tmp_path):
    """(The whole JSON of a million values, made on the loop for its first 197 characters,
    held every other client 3 s: a hunt.) What lies past the summary is not encoded at all:
    a value there that is not JSON does not make the summary a repr."""
    rows = [{"n": i, "é": None} for i in range(1_000)]

    @block("Rows")
    def many(ctx):
        return [*rows, object()]

    summary = (await execute(many, Action.RUN, contexts(tmp_path))).summary
    assert summary == '[{"n":0,"é":null},{"n":1,"é":null},' + summary[35:197] + "..."
    assert summary[:-3] == json.dumps(rows, separators=(",", ":"), ensure_ascii=False)[:197]

    @block("Small")
    def small(ctx):
        return {"score": 1.5, "ok": True}

    assert (
        await execute(small, Action.RUN, contexts(tmp_path))
    ).summary == '{"score":1.5,"ok":true}'


async def test_each_attempt_gets_a_fresh_context(tmp_path):
    made: list[BlockContext] = []
    flaky = Flaky(failures=1, retries=1, backoff=0)

    outcome = await execute(flaky, Action.RUN, contexts(tmp_path, made))

    assert [c.attempt for c in made] == [1, 2]
    assert made[0] is not made[1]
    assert outcome.context is made[1]


async def test_write_artifact_writes_off_the_trio_thread_and_lists_only_what_it_wrote(tmp_path):
    """write_artifact makes the folder and writes on a worker thread; the trace lists the files
    it wrote (not a scan of the folder), by the name a scan would give them."""
    folder = tmp_path / "art" / "evt1" / "deliver"
    ctx = BlockContext(payload={}, artifact_dir=folder)
    trio_thread = threading.get_ident()
    writers: list[int] = []
    real_open, real_write_bytes = os.open, Path.write_bytes

    def open_spy(path, flags, *args, **kwargs):  # a plain name's write
        if str(path).startswith(str(folder)):
            writers.append(threading.get_ident())
        return real_open(path, flags, *args, **kwargs)

    def write_bytes_spy(path: Path, data: bytes) -> int:  # any other name's
        writers.append(threading.get_ident())
        return real_write_bytes(path, data)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "open", open_spy)
        patch.setattr(Path, "write_bytes", write_bytes_spy)
        text = await ctx.write_artifact("greeting.txt", "Hello, Zoë!\n")
        raw = await ctx.write_artifact("sub/../raw.bin", b"\x00\xff")
    assert len(writers) == 2
    assert text == folder / "greeting.txt"
    assert trio_thread not in writers
    assert text.read_text(encoding="utf-8") == "Hello, Zoë!\n"
    assert raw.read_bytes() == b"\x00\xff"
    (folder / "stray.txt").write_text("not written through the context")
    assert ctx.listed_artifacts() == [str(folder / "greeting.txt"), str(folder / "raw.bin")]
    ctx.artifact_path("later.txt").write_text("x")  # anything may be written now: a scan
    assert ctx.listed_artifacts() == sorted(
        str(folder / name) for name in ("greeting.txt", "later.txt", "raw.bin", "stray.txt")
    )


async def test_write_artifact_refuses_a_name_that_leaves_the_folder(tmp_path):
    ctx = BlockContext(payload={}, artifact_dir=tmp_path / "art")
    with pytest.raises(ValueError, match="leaves the artifact folder"):
        await ctx.write_artifact("../escape.txt", "x")
    assert not (tmp_path / "escape.txt").exists()
    assert ctx.listed_artifacts() == []


async def test_write_artifact_makes_a_names_folder_within(tmp_path):
    """``reports/out.txt`` failed with FileNotFoundError (a hunt): its folder is made, within."""
    ctx = BlockContext(payload={}, artifact_dir=tmp_path / "art")
    path = await ctx.write_artifact("reports/out.txt", "x")
    assert path == (tmp_path / "art" / "reports" / "out.txt").resolve()
    assert path.read_text() == "x"
    assert ctx.listed_artifacts() == [str(tmp_path / "art" / "reports" / "out.txt")]


def test_record_usage_refuses_a_total_past_the_bound_as_it_is_recorded(tmp_path):
    """2**53 then 1 each passed; the block then failed naming ``ctx.usage`` (a hunt)."""
    ctx = BlockContext(payload={}, artifact_dir=tmp_path / "art")
    ctx.record_usage(tokens_in=2**53)
    with pytest.raises(ValueError, match="record_usage: this execution's tokens_in would pass"):
        ctx.record_usage(tokens_in=1)
    assert ctx.usage.tokens_in == 2**53


async def test_write_artifact_refuses_a_link_out_of_the_folder_and_follows_one_within(tmp_path):
    """A plain name that is a symbolic link already (a command may have left one) is resolved:
    a link out of the folder is refused, nothing written outside; one within is written
    through, and listed by the name a scan of the folder gives."""
    folder = tmp_path / "art"
    folder.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_text("untouched")
    (folder / "out.txt").symlink_to(outside)
    (folder / "inside.txt").write_text("old")
    (folder / "in.txt").symlink_to(folder / "inside.txt")
    ctx = BlockContext(payload={}, artifact_dir=folder)

    with pytest.raises(ValueError, match="leaves the artifact folder"):
        await ctx.write_artifact("out.txt", "x")
    written = await ctx.write_artifact("in.txt", "new")

    assert outside.read_text() == "untouched"
    assert written == folder / "inside.txt"
    assert (folder / "inside.txt").read_text() == "new"
    assert ctx.listed_artifacts() == [str(folder / "inside.txt")]


def test_a_scan_of_the_folder_lists_regular_files_only_never_a_link_or_a_pipe(tmp_path):
    """A command's folder is scanned: a link it left (one to /proc/self/environ had the daemon
    read its own environment and sign its digest), a named pipe or a link to a folder is not
    an artifact; its files, in subfolders too, are."""
    folder = tmp_path / "art"
    (folder / "sub").mkdir(parents=True)
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    (folder / "kept.txt").write_text("a")
    (folder / "sub" / "deep.txt").write_text("b")
    (folder / "environ").symlink_to("/proc/self/environ")
    (folder / "outside.txt").symlink_to(outside)
    (folder / "inside.txt").symlink_to(folder / "kept.txt")
    (folder / "linked").symlink_to(tmp_path)
    os.mkfifo(folder / "pipe")
    ctx = BlockContext(payload={}, artifact_dir=folder)
    ctx.artifact_path("later.txt")  # anything may be written now: a scan
    assert ctx.listed_artifacts() == [str(folder / "kept.txt"), str(folder / "sub" / "deep.txt")]


def test_an_artifact_is_hashed_as_the_file_itself_never_through_a_link_or_a_pipe(tmp_path):
    """``artifact_sha256``: what was listed may have been swapped since (a command's child
    still running): a link is not followed, a pipe not waited on, a file read in pieces."""
    from foundry.kernel.blocks.files import ARTIFACT_READ, artifact_sha256

    content = os.urandom(ARTIFACT_READ * 2 + 7)
    (tmp_path / "big.bin").write_bytes(content)
    assert artifact_sha256(tmp_path / "big.bin") == hashlib.sha256(content).hexdigest()
    (tmp_path / "link").symlink_to(tmp_path / "big.bin")
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        artifact_sha256(tmp_path / "link")
    with pytest.raises(OSError, match="not a regular file"):
        artifact_sha256(tmp_path / "pipe")


async def test_write_artifact_replaces_a_file_and_refuses_a_folder_by_that_name(tmp_path):
    folder = tmp_path / "a" / "b" / "c"  # made, parents too, on the first write
    ctx = BlockContext(payload={}, artifact_dir=folder)
    await ctx.write_artifact("note.txt", "a much longer first text")
    await ctx.write_artifact("note.txt", b"short")
    (folder / "dir").mkdir()

    with pytest.raises(IsADirectoryError):
        await ctx.write_artifact("dir", "x")
    assert (folder / "note.txt").read_bytes() == b"short"
    assert ctx.listed_artifacts() == [str(folder / "note.txt")]


async def test_the_artifact_folder_is_scanned_off_the_trio_thread(tmp_path):
    """After ``run_command`` (or ``artifact_path``) anything may be in the folder: an async
    execution lists it on a worker thread, a synchronous one (``execute_now``) where it runs."""
    folder = tmp_path / "art"
    ctx = BlockContext(payload={}, artifact_dir=folder)
    assert await ctx.collect_artifacts() == []
    ctx.artifact_path("a/deep.txt").parent.mkdir(parents=True)
    for name in ("a/deep.txt", "b.txt"):
        (folder / name).write_text("x")
    scanners: list[int] = []
    real = Path.rglob

    def spy(self, pattern):
        scanners.append(threading.get_ident())
        return real(self, pattern)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Path, "rglob", spy)
        listed = await ctx.collect_artifacts()
    assert listed == [str(folder / "a" / "deep.txt"), str(folder / "b.txt")]
    assert scanners
    assert threading.get_ident() not in scanners


@pytest.mark.parametrize("event_type", ["", "greet\0requested", 7])
def test_an_emission_of_no_usable_event_type_is_refused(tmp_path, event_type):
    ctx = BlockContext(payload={}, artifact_dir=tmp_path / "art")
    with pytest.raises(ValueError, match="emit: event_type must be a non-empty string"):
        ctx.emit(event_type)
    assert ctx.emissions == []


async def _kept_cancelled() -> trio.Cancelled:
    """A Cancelled caught under a timeout of the block's own, kept past its scope."""
    kept = None
    with trio.move_on_after(0.01):
        try:
            await trio.sleep(1)
        except trio.Cancelled as exc:
            kept = exc
            raise
    assert kept is not None
    return kept


@block("Keeps a Cancelled", timeout=10)
async def raises_a_kept_cancelled(ctx):
    raise await _kept_cancelled()


@block("Groups a Cancelled", timeout=10)
async def raises_a_group_with_a_kept_cancelled(ctx):
    raise BaseExceptionGroup("both", [ValueError("bad"), await _kept_cancelled()])


async def executed(raising: Block, tmp_path: Path) -> Outcome:
    """execute's outcome; a test fails on what it raises (a Cancelled reaching pytest-trio's
    nursery would end the test quietly, as passed)."""
    try:
        return await execute(raising, Action.RUN, contexts(tmp_path))
    except BaseException as exc:
        pytest.fail(f"execute raised {exc!r}")


@pytest.mark.parametrize(
    ("raising", "needle"),
    [(raises_a_kept_cancelled, "Cancelled"), (raises_a_group_with_a_kept_cancelled, "both")],
)
async def test_a_cancelled_a_block_raises_while_nothing_cancels_it_is_its_failure(
    tmp_path, raising, needle
):
    # Passed on as trio's own, it ended the engine's task (every Emit UNAVAILABLE afterwards)
    outcome = await executed(raising, tmp_path)
    assert not outcome.success
    assert needle in outcome.error
    assert not outcome.timed_out


async def test_a_sync_block_raising_a_kept_cancelled_fails_too(tmp_path):
    saved = await _kept_cancelled()

    @block("Sync keeps a Cancelled")
    def sync_raiser(ctx):
        raise saved

    outcome = await executed(sync_raiser, tmp_path)
    assert not outcome.success
    assert "Cancelled" in outcome.error


async def test_the_callers_cancellation_still_goes_through(tmp_path):
    @block("Waits", timeout=60)
    async def waits(ctx):
        await trio.sleep(3600)

    with trio.move_on_after(0.05) as scope:
        await execute(waits, Action.RUN, contexts(tmp_path))
    assert scope.cancelled_caught


def test_an_emission_of_a_type_longer_than_an_emits_is_refused(tmp_path):
    # a block's 20 MB event type cut every default-client watcher off (an Emit's is 256 at most)
    ctx = BlockContext(payload={}, artifact_dir=tmp_path / "art")
    ctx.emit("t" * 256)
    with pytest.raises(ValueError, match="emit: event_type is longer than 256 characters"):
        ctx.emit("t" * 257)
    assert [e.event_type for e in ctx.emissions] == ["t" * 256]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


async def test_a_timed_out_command_whose_own_process_had_exited_takes_its_children_along(
    tmp_path,
):
    # sh exits at once; the sleep it started holds stdout open, so the timeout cancels the read
    # of the output, not the wait for sh: trio signals no group then, and the sleep ran on
    marker = tmp_path / "pid"

    @block("Leaves a child", timeout=1)
    async def leaves_a_child(ctx):
        await ctx.run_command(["sh", "-c", f"sleep 300 & echo $! > {marker}; echo started"])

    outcome = await executed(leaves_a_child, tmp_path)
    assert outcome.timed_out
    child = int(marker.read_text())
    with trio.fail_after(5):
        while _alive(child):  # noqa: ASYNC110 - another process, not an event, is waited for
            await trio.sleep(0.05)


async def test_an_async_block_that_overruns_its_deadline_without_a_checkpoint_timed_out(tmp_path):
    """A tool block calling a plain function (time.sleep(1.5) under a 0.5 s timeout) never let
    its deadline fire: it succeeded, and was attested, after its capability token expired."""
    import time

    class Stubborn(Block):
        name = "Stubborn"

        async def run(self, ctx):
            time.sleep(0.3)  # noqa: ASYNC251 (the point: a function that never yields)
            return {"late": True}

    outcome = await execute(Stubborn(timeout=0.1), Action.RUN, contexts(tmp_path))

    assert not outcome.success
    assert outcome.error == "timed out after 0.1s"
    assert outcome.output is None
    on_time = await execute(Stubborn(timeout=5), Action.RUN, contexts(tmp_path))
    assert on_time.success
    assert on_time.output == {"late": True}


async def test_a_huge_exception_message_is_recorded_with_its_middle_cut(tmp_path):
    """A block raising with a client's payload in its message (10 MB) stored it twice per
    execution, as its error and its summary; now both ends of it, 2,000 characters at most."""
    message = "cause " + "x" * 10_000_000 + " last words"

    @block("Loud")
    def loud(ctx: BlockContext) -> None:
        raise ValueError(message)

    outcome = await execute(loud, Action.RUN, contexts(tmp_path))

    assert not outcome.success
    assert outcome.error.startswith("ValueError: cause xxx")
    assert outcome.error.endswith("xxx last words")
    assert "characters cut" in outcome.error
    assert len(outcome.error) < 2_100
    assert outcome.summary == outcome.error


async def test_the_artifacts_of_a_folder_named_through_dotdot_are_listed(tmp_path):
    """A home given as ``../home`` (README allows it) makes every artifact folder's path hold a
    ``..``: each file write_artifact wrote was refused as outside the folder (a review)."""

    @block("Writes", sinks=["go"])
    async def writes(ctx):
        await ctx.write_artifact("note.txt", "x")
        ctx.artifacts_written.append(str(ctx.artifact_dir / "sub" / ".." / "note.txt"))

    (tmp_path / "cfg").mkdir()
    done = await run_block(writes, {}, artifact_dir=tmp_path / "cfg" / ".." / "home")
    assert (done.state, done.outcome.error) == ("completed", "")
    assert {Path(p).name for p in done.outcome.artifacts} == {"note.txt"}


async def test_a_path_a_block_lists_through_a_linked_folder_fails_it(tmp_path):
    """``artifact_dir/etc`` a link to another folder, and ``artifact_dir/etc/hostname`` listed:
    the file outside was signed as the step's artifact (a review of the containment check)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "hostname").write_text("not the step's")

    @block("Links", sinks=["go"])
    def links(ctx):
        ctx.artifact_dir.mkdir(parents=True, exist_ok=True)
        (ctx.artifact_dir / "etc").symlink_to(outside)
        ctx.artifacts_written.append(str(ctx.artifact_dir / "etc" / "hostname"))

    done = await run_block(links, {}, artifact_dir=tmp_path / "art")
    assert done.state == "failed"
    assert "not a file in this execution's artifact folder" in done.outcome.error
    assert done.outcome.artifacts == ()


async def test_a_file_listed_under_several_spellings_is_one_artifact(tmp_path):
    """``dir/./a`` and ``dir//a`` beside ``dir/a`` were three artifacts, each attested (a
    review of the ``..`` change)."""

    @block("Spells", sinks=["go"])
    async def spells(ctx):
        await ctx.write_artifact("note.txt", "x")
        ctx.artifacts_written += [f"{ctx.artifact_dir}/./note.txt", f"{ctx.artifact_dir}//note.txt"]

    done = await run_block(spells, {}, artifact_dir=tmp_path / "art")
    assert done.outcome.artifacts == (str(tmp_path / "art" / "note.txt"),)


def test_a_steps_settings_come_from_the_block_it_runs_as_unless_that_answer_is_broken():
    declared = Block("declared", timeout=2.0, retries=3, backoff=1.5)

    class BadTimeout(Block):
        timeout = "5"  # a class value Block's __init__ never checked

    broken = BadTimeout("unchecked")

    class Unreadable(Block):
        @property
        def sinks(self):  # read by the answer's check: plugin code too (a review)
            raise RuntimeError("sinks computed lazily, and broken")

    unreadable = Unreadable.__new__(Unreadable)  # (its __init__ skipped, as a plugin's may)

    class Dispatcher(Block):
        def runs_as(self, inputs):
            match inputs.get("to"):
                case "declared":
                    return declared
                case "raise":
                    raise KeyError("no such command")
                case "exit":
                    raise SystemExit(3)  # (it ended the daemon, at every start after)
                case "broken":
                    return broken
                case "unreadable":
                    return unreadable
            return "not a block"

    dispatcher = Dispatcher("dispatcher", timeout=9.0)
    assert settings_of(dispatcher, {"to": "declared"}) is declared
    for to in (
        "raise",
        "exit",
        "broken",
        "unreadable",
        "other",
    ):  # a plugin's fault: its own settings
        assert settings_of(dispatcher, {"to": to}) is dispatcher, to
    assert settings_of(declared, {}) is declared  # the default: itself


def test_a_blocks_model_refusal_is_plain_text_and_a_plugins_fault_refuses_nothing():
    class Shout(str):
        def __str__(self) -> str:
            return "SHOUTED"

    class Picky(Block):
        def model_refused(self, model):
            match model:
                case "raise":
                    raise KeyError("lookup broke")
                case "exit":
                    raise SystemExit(3)
                case "number":
                    return 7
                case "shout":
                    return Shout("no shouting")
                case "long":
                    return "x" * 5_000
            return "" if model.startswith("ok") else f"no {model}"

    picky = Picky("picky")
    assert model_refusal(picky, "ok-1") == ""
    assert model_refusal(picky, "bad") == "no bad"
    for model in ("raise", "exit", "number"):  # a plugin's fault: the step finds out at its run
        assert model_refusal(picky, model) == "", model
    shouted = model_refusal(picky, "shout")
    assert (type(shouted), shouted) == (str, "no shouting")
    assert len(model_refusal(picky, "long")) == 300
    assert model_refusal(Block("plain"), "anything:at-all") == ""  # the default: any model
