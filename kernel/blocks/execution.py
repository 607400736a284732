"""Running one block once: timeout, retries with backoff, captured output. Shared by the engine
(task blocks) and the scheduler (DAG steps)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import trio
from foundry.kernel.blocks.api import (
    MAX_USAGE,
    Block,
    BlockContext,
    Emission,
    NeedsAwait,
    Usage,
    event_type_fault,
    in_artifact_folder,
    resolves_within,
)
from foundry.kernel.blocks.registry import BlockRegistry, block_fault
from foundry.kernel.core.chain import runs_now as _runs_now
from foundry.kernel.core.dag import StepSpec
from foundry.kernel.core.failures import MAX_DESCRIBED, described, text_of
from foundry.kernel.core.ids import MAX_ID_LENGTH
from foundry.kernel.core.json_input import cut_middle, json_values_past
from foundry.kernel.core.throttle import Action


@dataclass(slots=True)
class Outcome:
    """How one block execution ended, across all its attempts. (Not frozen: it never leaves the
    actor that ran the block, and a frozen init costs 7x as much — 3.4 vs 0.45 µs measured.)"""

    success: bool
    output: Any
    summary: str
    error: str
    emissions: tuple[Emission, ...]
    usage: Usage
    raw_output: str
    exit_code: int
    artifacts: tuple[str, ...]
    attempts: int
    duration_ms: int
    timed_out: bool = False
    ran_command: bool = False  # else its trace shows null raw_output and exit_code
    context: BlockContext | None = field(default=None, compare=False, repr=False)


async def execute(
    block: Block,
    action: Action,
    new_context: Callable[[int], BlockContext],
    *,
    on_retry: Callable[[int, str, float], None] | None = None,
) -> Outcome:
    """Run ``block`` per ``action``; a failed RUN attempt is retried up to ``block.retries`` times.

    ``new_context(attempt)`` gives each attempt a fresh context, so a failed attempt's emissions
    never leak. ``on_retry(attempt, error, delay)`` is told before each backoff sleep.
    """
    started = time.perf_counter()
    attempts = 1 + (block.retries if action is Action.RUN else 0)
    ctx = new_context(1)
    output: Any = None
    error = ""
    timed_out = False
    for attempt in range(1, attempts + 1):
        if attempt > 1:
            delay = block.backoff * 2 ** (attempt - 2)
            if on_retry:
                on_retry(attempt - 1, error, delay)
            await trio.sleep(delay)
            ctx = new_context(attempt)
        output, error, timed_out = await _attempt(block, action, ctx)
        if not error:
            break
    artifacts = await ctx.collect_artifacts()
    return _outcome(ctx, output, error, attempt, started, timed_out, artifacts)


def runs_now(block: Block, action: Action) -> bool:
    """Can :func:`execute_now` run this block? Synchronous, and no retry (with its backoff
    sleep) possible (the engine's walk decides it in ``core.chain.plan_turn``)."""
    return _runs_now(block.synchronous, block.retries, action)


def execute_now(block: Block, action: Action, ctx: BlockContext) -> Outcome | None:
    """:func:`execute` for a block :func:`runs_now` accepts, without awaiting: one attempt, on
    the caller's stack. None when the block turned out to need awaiting after all."""
    started = time.perf_counter()
    try:
        output, error = block.call(action, ctx), ""
    except NeedsAwait:
        return None
    except BaseException as exc:  # a block's failure (SystemExit too) is data for its trace
        output, error = None, described(exc)
    return _outcome(ctx, output, error, 1, started, False, ctx.listed_artifacts())


def _outcome(
    ctx: BlockContext,
    output: Any,
    error: str,
    attempts: int,
    started: float,
    timed_out: bool,
    artifacts: list[str],
) -> Outcome:
    fault = reported_fault(ctx)  # (first: it makes text of a str subclass plain text)
    raw_output, exit_code = ctx.raw_output, ctx.exit_code
    if fault:  # a failed block's own error stays the error; what it set is not recorded as set
        error = error or fault
        raw_output = raw_output if isinstance(raw_output, str) else ""
        exit_code = exit_code if type(exit_code) is int else -1
        artifacts = [path for path in artifacts if type(path) is str]
    return Outcome(
        success=not error,
        output=output,
        # A failure's summary is its error: the trace has no other place that says why.
        summary=error or ctx.summary or _summarize(output),
        error=error,
        emissions=tuple(ctx.emissions) if not error else (),
        usage=ctx.usage,
        raw_output=raw_output,
        exit_code=exit_code,
        ran_command=ctx.ran_command,
        artifacts=tuple(artifacts),
        attempts=attempts,
        duration_ms=round((time.perf_counter() - started) * 1000),
        timed_out=timed_out,
        context=ctx,
    )


# Characters of a block's own summary kept (its middle goes past them), as of an error's.
MAX_SUMMARY = MAX_DESCRIBED
_NO_USAGE = BlockContext.__dataclass_fields__["usage"].default  # every context's until it costs


def usage_fault(usage: object) -> str:
    """Why a block's own ``ctx.usage`` cannot be recorded ("" when it can): as
    ``record_usage`` takes them (an int as ctx.usage left its run running, forever; a NaN cost
    lost the step's completion)."""
    if type(usage) is not Usage:
        kind = type(usage).__name__
        return f"ctx.usage must be a Usage (ctx.record_usage adds to it), not {kind}"
    for name in ("tokens_in", "tokens_out"):
        count = getattr(usage, name)
        if type(count) is not int or not 0 <= count <= MAX_USAGE:
            return f"ctx.usage.{name} must be a whole number from 0 to {MAX_USAGE}"
    cost = usage.cost
    if type(cost) not in (int, float) or not 0 <= cost <= MAX_USAGE:  # (NaN fails too)
        return f"ctx.usage.cost must be a number from 0 to {MAX_USAGE}"
    return ""


def reported_fault(ctx: BlockContext) -> str:
    """Why what a block set on its context cannot be recorded ("" when it can): the store and
    the trace take text, a whole exit code, artifact paths and emissions of a usable event type
    (bytes from a subprocess as ``raw_output`` broke the chain's trace; an ``Emission`` of an int
    type failed its workflow without recording the execution). Text of a ``str`` subclass (a
    ``StrEnum`` member, say) is made plain text here: the trace's ``marshal`` refuses it, and
    the chain's whole commit failed with it."""
    # (type() first: this runs for every execution, and isinstance costs more)
    summary, raw_output, exit_code = ctx.summary, ctx.raw_output, ctx.exit_code
    if type(summary) is not str:
        if not isinstance(summary, str):
            return f"ctx.summary must be a str, not {type(summary).__name__}"
        ctx.summary = summary = str.__str__(summary)
    if len(summary) > MAX_SUMMARY:  # (50 MB of it was stored whole, in the trace file too)
        ctx.summary = cut_middle(summary, MAX_SUMMARY)
    if type(raw_output) is not str:
        if not isinstance(raw_output, str):
            return f"ctx.raw_output must be a str, not {type(raw_output).__name__}"
        ctx.raw_output = str.__str__(raw_output)
    if type(exit_code) is not int:
        return f"ctx.exit_code must be an int, not {type(exit_code).__name__}"
    if ctx.usage is not _NO_USAGE and (fault := usage_fault(ctx.usage)):
        return fault
    written = ctx.artifacts_written
    if type(written) is not list or (written and not all(type(p) is str for p in written)):
        return "ctx.artifacts_written must be a list of str paths"
    if written:  # a path of its own choosing had the daemon sign any file's digest as an artifact
        folder, checked = ctx.artifact_folder(), ctx.api_written
        for path in written:
            if not in_artifact_folder(folder, path) or (
                path not in checked and not resolves_within(folder, path)
            ):
                return (f"ctx.artifacts_written holds {path[:200]!r}, not a file in this "
                        f"execution's artifact folder")  # fmt: skip
    emissions = ctx.emissions
    if type(emissions) is not list:
        return f"ctx.emissions must be a list, not {type(emissions).__name__}"
    for index, emission in enumerate(emissions):
        if type(emission) is not Emission or (
            type(emission.payload) is not dict and not isinstance(emission.payload, Mapping)
        ):
            return "ctx.emissions must hold what ctx.emit() makes (Emission, a mapping payload)"
        kind = emission.event_type
        if type(kind) is not str and isinstance(kind, str):
            kind = str.__str__(kind)
            emissions[index] = Emission(kind, emission.payload, emission.taken)
        if type(kind) is not str or not kind or len(kind) > MAX_ID_LENGTH or "\0" in kind:
            return f"an emission's event type {event_type_fault(kind)}"
    return ""


def model_refusal(block: Block, model: str) -> str:
    """``block.model_refused(model)``, cut to 300 characters: "" when the plugin's answer
    raised (SystemExit too) or is no text — the step then finds out when it runs, as before."""
    try:
        reason = block.model_refused(model)
        if not isinstance(reason, str):
            return ""
        return str.__str__(reason)[:300]
    except BaseException as exc:  # noqa: BLE001 - a plugin's fault: not the client's
        if cancellation(exc):
            raise
        return ""


def step_model_refusal(registry: BlockRegistry, step: StepSpec) -> str:
    """:func:`model_refusal` of the block of ``step``'s type ("" for a type not registered:
    the DAG's parse refuses that)."""
    block = registry.by_name.get(step.type)
    return model_refusal(block, step.model) if block is not None else ""


def settings_of(block: Block, inputs: Mapping[str, Any]) -> Block:
    """The block a DAG step's timeout, retries and backoff default to (``Block.runs_as``, given
    the step's resolved inputs): ``block`` itself when the plugin's answer raised (SystemExit
    too: it ended the daemon, at every start after), is no block, or one whose settings are
    not (a ``timeout`` of "5" stopped the run's driver)."""
    try:
        found = block.runs_as(inputs)
        if found is block or not isinstance(found, Block) or block_fault(found):
            return block
    except BaseException as exc:  # noqa: BLE001 - a plugin's fault: the block's own stand
        if cancellation(exc):  # (block_fault reads the answer's attributes: plugin code too)
            raise
        return block
    return found


async def attempt_once(
    block: Block, action: Action, ctx: BlockContext, limit: float | None = None
) -> tuple[Any, str, bool]:
    """One attempt: ``(output, error, timed_out)``; ``error`` is "" on success. ``limit``
    (seconds) overrides the block's own timeout."""
    return await _attempt(block, action, ctx, limit)


async def _attempt(
    block: Block, action: Action, ctx: BlockContext, timeout_override: float | None = None
) -> tuple[Any, str, bool]:
    limit = timeout_override if timeout_override is not None else block.timeout
    if block.synchronous:
        # Plain functions never yield to trio, so no deadline could interrupt them: skip the
        # cancel scope (a tenth of the engine's time per execution).
        try:
            return await _dispatch(block, action, ctx), "", False
        except BaseException as exc:
            if cancellation(exc):
                raise
            return None, described(exc), False
    deadline = math.inf if limit is None else trio.current_time() + limit
    # A bare CancelScope: trio.fail_after is a generator context manager, several times the cost.
    try:
        with trio.CancelScope(deadline=deadline):
            output = await _dispatch(block, action, ctx)
            # past its deadline without a checkpoint (a sync function a tool block calls): its
            # late answer is no success (it succeeded, after its capability token expired)
            if trio.current_time() < deadline:
                return output, "", False
    except BaseException as exc:  # a block's failure (SystemExit too) is data for its trace
        if cancellation(exc):  # the run's or the daemon's, not the block's deadline: it goes on
            raise
        return None, described(exc), False
    return None, f"timed out after {limit:g}s", True  # the deadline cancelled it, or passed


def cancellation(exc: BaseException) -> bool:
    """``exc`` is trio cancelling the caller (alone or in a group from a block's nursery). A
    Cancelled a block raises while nothing cancels its caller (one it caught under a timeout of
    its own and raised again later, say) is the block's failure: passed on, it ended the engine's
    task without a word (every Emit then UNAVAILABLE) or a run's step without its completion."""
    if not isinstance(exc, trio.Cancelled) and not (
        isinstance(exc, BaseExceptionGroup) and exc.subgroup(trio.Cancelled) is not None
    ):
        return False
    return trio.current_effective_deadline() == -math.inf


async def _dispatch(block: Block, action: Action, ctx: BlockContext) -> Any:
    if action is Action.RUN:
        return await block.run(ctx)
    if action is Action.AUDIT:
        await block.audit(ctx)
    else:
        await block.simulate(ctx)
    return None


SUMMARY_CHARS = 200
SUMMARY_VALUES = 100  # an output of more is encoded only as far as its summary


def _summarize(output: Any) -> str:
    """A block's answer as its summary: text as it is, JSON values as compact JSON (as the CLI
    shows JSON everywhere: they were Python reprs, ``{'score': 1}``), anything else its repr."""
    if output is None:
        return ""
    try:
        if isinstance(output, str):
            text = output[: SUMMARY_CHARS + 1]
        elif json_values_past((output,), SUMMARY_VALUES):
            text = _json_start(output)
        else:  # (the C encoder: a small output's whole JSON is quicker made than its start)
            text = _ENCODER.encode(output)
    except BaseException:  # noqa: BLE001 - not JSON (an object, a loop; a dict subclass whose
        # items() raises SystemExit ended the daemon): its repr (a broken one stops no chain)
        text = text_of(output)
    return text if len(text) <= SUMMARY_CHARS else text[: SUMMARY_CHARS - 3] + "..."


def _json_start(value: Any) -> str:
    """The start of ``value``'s compact JSON, past ``SUMMARY_CHARS`` characters when it has
    them: encoded only that far (the whole JSON of an output of a million values, made on the
    trio thread for its first 197 characters, held every other client 3 s: a hunt)."""
    parts: list[str] = []
    length = 0
    for part in _ENCODER.iterencode(value):  # (the encoder written in Python: it yields)
        parts.append(part)
        length += len(part)
        if length > SUMMARY_CHARS:
            break
    return "".join(parts)


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
