"""The ``shell`` block type, and the ``shell`` DAG step: run a command named in foundry.toml.

The command is an argv list (or a string split like a shell would, but never run by one). The
payload — or a DAG step's inputs — reaches the program as compact JSON on stdin, in
``FOUNDRY_PAYLOAD``, and as ``FOUNDRY_INPUT_<KEY>`` for each top-level scalar (a value over
64 KiB only on stdin); it is never interpolated into a command line.

As a DAG step, ``{"type": "shell", "inputs": {"command": "NAME", ...}}`` runs the ``[[blocks]]``
shell block called NAME with the step's inputs as its payload — so a run can only ever start the
commands the operator declared.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from foundry.kernel import (
    Block,
    BlockContext,
    BlockError,
    BlockKind,
    common_options,
    compact_json,
    event_type_fault,
    forbidden_reason,
    hookimpl,
    matches,
    payload_filter,
    payload_number,
)

_SHELL_KEYS = {"command", "emits", "env", "cwd", "simulate", "pass_env", "allow_env"}


class ShellBlock(Block):
    def __init__(
        self,
        *,
        command: list[str],
        emits: str = "",
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        simulate: bool = False,
        when: Mapping[str, Any] | None = None,
        pass_env: Sequence[str] = (),
        **options: Any,
    ) -> None:
        options.setdefault("kind", BlockKind.MUTATOR)
        super().__init__(**options)
        self.command, self.emits, self.cwd = command, emits, cwd
        self.static_env = dict(env or {})
        self.pass_env = tuple(pass_env)
        self.offers_simulation, self.when = simulate, dict(when or {})

    def accepts(self, payload: Mapping[str, Any]) -> bool:
        return matches(self.when, payload)

    async def run(self, ctx: BlockContext) -> Any:
        result = await ctx.run_command(
            self.command,
            stdin=compact_json(dict(ctx.payload)).encode(),
            env={**_payload_env(ctx), **self.static_env},  # the operator's table has the last word
            cwd=self.cwd,
            pass_env=self.pass_env,
        )
        if result.exit_code != 0:
            # stderr's last line says why, as a rule (the two are read apart: the output's
            # last line could be stdout's, "sh exited with 3: working")
            last = (result.stderr.strip() or result.output.strip()).splitlines()[-1:]
            said = f": {last[0][:200]}" if last else ""  # (a silent command left a ": ")
            raise BlockError(f"{self.command[0]} exited with {result.exit_code}{said}")
        output = _parse_output(result.stdout)  # (a warning on stderr is not its answer)
        if self.emits:
            ctx.emit(self.emits, output if isinstance(output, dict) else {"output": output})
        ctx.summary = f"{self.command[0]} exited 0"
        return output

    async def simulate(self, ctx: BlockContext) -> None:
        if self.emits and self.offers_simulation:
            ctx.emit(self.emits, {**ctx.payload, "simulated": True})


# Linux refuses to start a program one of whose environment strings passes 128 KiB (E2BIG,
# "Argument list too long": a step with a 300 KB input failed every attempt), or whose whole
# environment and arguments pass ~2 MB. A value past ENV_VALUE_BYTES is left out (the payload is
# always on stdin), and the inputs once they would pass ENV_INPUT_BYTES together.
ENV_VALUE_BYTES = 64 * 1024
ENV_INPUT_BYTES = 512 * 1024


def _payload_env(ctx: BlockContext) -> dict[str, str]:
    payload = compact_json(dict(ctx.payload))
    env = {
        **({"FOUNDRY_PAYLOAD": payload} if _fits(payload) else {}),
        "FOUNDRY_EVENT_TYPE": ctx.event_type,
        "FOUNDRY_EVENT_ID": ctx.event_id,
        "FOUNDRY_PROJECT": ctx.project,
        "FOUNDRY_THROTTLE": ctx.throttle.value,
        "FOUNDRY_RUN_ID": ctx.run_id,
        "FOUNDRY_STEP_ID": ctx.step_id,
        "FOUNDRY_ARTIFACT_DIR": str(ctx.artifact_dir),
    }
    total = 0
    for key, value in ctx.payload.items():
        if isinstance(value, str | int | float | bool) and not isinstance(value, dict):
            name = f"FOUNDRY_INPUT_{re.sub(r'[^A-Za-z0-9]', '_', str(key)).upper()}"
            text = value if isinstance(value, str) else json.dumps(value)
            # "NAME=value\0" is what the program's environment holds of it
            total += len(name) + len(text.encode("utf-8", "surrogatepass")) + 2
            if "\0" in text:  # an environment cannot hold it (every attempt failed): stdin only
                continue
            # (the whole "NAME=value" is one string: a 140 KB key stopped every start)
            if _fits(f"{name}={text}") and total <= ENV_INPUT_BYTES:
                env[name] = text
    return env


def _fits(text: str) -> bool:
    return len(text.encode("utf-8", "surrogatepass")) <= ENV_VALUE_BYTES


def _parse_output(text: str) -> Any:
    """stdout as JSON, its numbers read as Emit reads a payload's (``payload_number``: ``-0``
    was 0 here and -0.0 there, so the same JSON made another event), else as text: JSON the
    daemon stores (``NaN``, ``1e400`` and a lone surrogate's escape are text: Python's reader
    took them, and the block failed to emit)."""
    try:
        value = json.loads(text, parse_int=payload_number, parse_float=payload_number)
        json.dumps(value, allow_nan=False, ensure_ascii=False).encode()
    except (ValueError, OverflowError, RecursionError):  # (~1,000 levels deep: the block
        return text.rstrip("\n")  # failed, not its text)
    return value


def shell_block_from_table(table: Mapping[str, Any]) -> ShellBlock:
    options = common_options(table, _SHELL_KEYS, default_kind=BlockKind.MUTATOR)
    command = table.get("command")
    if isinstance(command, str):
        command = shlex.split(command)
    if not isinstance(command, list) or not command or not all(isinstance(a, str) for a in command):
        raise ValueError("command: expected a non-empty list of strings (argv) or a string")
    if any("\0" in argument for argument in command):
        raise ValueError("command: an argument holds a NUL character")
    emits = table.get("emits", "")
    if not isinstance(emits, str):
        raise ValueError("emits: expected an event type")
    if "\0" in emits:  # every run would fail to emit it (no environment can hold one)
        raise ValueError("emits: the event type holds a NUL character")
    if emits and event_type_fault(emits):  # too long, say: every run would fail to emit it
        raise ValueError(f"emits: the event type {event_type_fault(emits)}")
    simulate = table.get("simulate", False)
    if not isinstance(simulate, bool):  # "no" was read as true
        raise ValueError(f"simulate: expected true or false, got {simulate!r}")
    return ShellBlock(
        command=command,
        emits=emits,
        env=_env(table),
        pass_env=_names(table, "pass_env"),
        allow_env=_allowed_env(table),
        cwd=_cwd(table),
        simulate=simulate,
        when=payload_filter(table),
        **options,
    )


def _env(table: Mapping[str, Any]) -> dict[str, str]:
    """``env``: names and values a program's environment can hold (each was refused at every
    run: a name holding ``=``, a NUL anywhere)."""
    env = table.get("env", {})
    if not isinstance(env, Mapping) or not all(isinstance(v, str) for v in env.values()):
        raise ValueError("env: expected a table of string values")
    for name, value in env.items():
        if not name or "=" in name or "\0" in name:
            raise ValueError(f"env: {name[:100]!r} is not an environment variable name")
        if "\0" in value:
            raise ValueError(f"env.{name}: the value holds a NUL character")
    return dict(env)


def _cwd(table: Mapping[str, Any]) -> str | None:
    """``cwd``: a directory path, or none (the daemon's). An absolute one must exist; a relative
    one is the daemon's working directory's (``config check``, run elsewhere, cannot tell)."""
    cwd = table.get("cwd")
    if cwd is None:
        return None
    if not isinstance(cwd, str) or not cwd or "\0" in cwd:
        raise ValueError(f"cwd: expected a directory path, got {cwd!r}")
    if Path(cwd).is_absolute() and not Path(cwd).is_dir():
        raise ValueError(f"cwd: no such directory: {cwd!r}")
    return cwd


def _names(table: Mapping[str, Any], key: str) -> list[str]:
    names = table.get(key, [])
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"{key}: expected a list of environment variable names")
    return names


def _allowed_env(table: Mapping[str, Any]) -> list[str]:
    """``allow_env``: names a run's step env may set; a forbidden name is a config error."""
    names = _names(table, "allow_env")
    for name in names:
        reason = forbidden_reason(name) if name != "*" else ""
        if reason:
            raise ValueError(f"allow_env: {name[:100]!r} {reason}")
    return names


class ShellStep(Block):
    name = "shell"
    kind = BlockKind.MUTATOR
    description = "runs a [[blocks]] shell command by name: inputs {command, ...}"

    def __init__(self, commands: Mapping[str, ShellBlock]) -> None:
        super().__init__()
        self.commands = dict(commands)

    def env_allowed(self, inputs: Mapping[str, Any]) -> frozenset[str]:
        """The named command's ``allow_env`` (none when the name is not a plain string)."""
        command = self._named(inputs)
        return command.allow_env if command is not None else frozenset()

    def runs_as(self, inputs: Mapping[str, Any]) -> Block:
        """The named command: its timeout, retries and backoff are the step's defaults."""
        return self._named(inputs) or self

    def _named(self, inputs: Mapping[str, Any]) -> ShellBlock | None:
        name = inputs.get("command")
        return self.commands.get(name) if isinstance(name, str) else None

    async def run(self, ctx: BlockContext) -> Any:
        command = self._named(ctx.inputs)
        if command is None:
            name = ctx.inputs.get("command")
            known = ", ".join(sorted(self.commands)) or "none declared"
            raise BlockError(f"inputs.command: no shell block named {name!r} ({known})")
        return await command.run(ctx)


@hookimpl
def register_block_types() -> dict[str, Any]:
    return {"shell": shell_block_from_table}


@hookimpl
def register_blocks(config: Any) -> list[Block]:
    commands = {}
    for table in config.declared_blocks:
        if table.get("type") == "shell":
            options = {k: v for k, v in table.items() if k != "__source__"}
            try:
                commands[table["name"]] = shell_block_from_table(options)
            except (ValueError, TypeError):
                continue  # reported when the declared block itself loads
    return [ShellStep(commands)]
