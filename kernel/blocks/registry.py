"""Loading blocks: built-ins, the ``foundry`` entry-point group, modules named in foundry.toml, and
blocks declared as ``[[blocks]]`` tables."""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pluggy
from foundry.kernel import hookspecs
from foundry.kernel.blocks.api import Block, BlockFactory, BlockKind
from foundry.kernel.blocks.tables import MAX_RETRIES, MAX_SECONDS
from foundry.kernel.blocks.tools import Tool
from foundry.kernel.config import Config
from foundry.kernel.core.evals import AssertionType, merge_assertion_types
from foundry.kernel.core.failures import described
from foundry.kernel.core.gate_policy import BUILTIN_RULES, Rule
from foundry.kernel.core.ids import MAX_ID_LENGTH, block_slug
from foundry.kernel.errors import ConfigError, InvalidArgument

ENTRY_POINT_GROUP = "foundry"

DEFAULT_PLUGINS: tuple[str, ...] = (
    "foundry.plugins.greeting",
    "foundry.plugins.shell",
    "foundry.plugins.relay",
    "foundry.plugins.llm",
    "foundry.plugins.tool",
    "foundry.plugins.transform",
    "foundry.plugins.http",
    "foundry.plugins.gate_rules",
)


def build_plugin_manager(
    modules: Sequence[str] = (), *, entry_points: bool = True, paths: Sequence[Path] = ()
) -> Any:
    """Specs, built-ins, the entry-point group, then foundry.toml modules; misspelled hooks fail.
    ``paths`` (``[plugins] paths``) go on ``sys.path`` first, as ``PYTHONPATH`` would put them."""
    add_to_sys_path(paths)
    pm = pluggy.PluginManager("foundry")
    pm.add_hookspecs(hookspecs)
    for name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(name), name=name)
    if entry_points:
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        except pluggy.PluginValidationError as exc:
            raise ConfigError(f"an installed plugin ({_failed_entry_point(pm)}): "
                              f"{_one_line(exc)}") from None  # fmt: skip
        except KeyboardInterrupt:  # Ctrl-C while it loads: the operator's stop
            raise
        except BaseException as exc:  # its own code failed at import  # noqa: BLE001
            raise ConfigError(f"importing an installed plugin ({_failed_entry_point(pm)}) "
                              f"failed: {described(exc)}") from None  # fmt: skip
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"[plugins].modules: cannot import {name!r}: {exc}") from None
        except KeyboardInterrupt:
            raise
        # its own code failed (a SyntaxError, sys.exit(), a BaseException of its own)
        except BaseException as exc:  # noqa: BLE001
            raise ConfigError(
                f"[plugins].modules: importing {name!r} failed: {described(exc)}"
            ) from None
        if not pm.is_registered(module):
            try:
                pm.register(module, name=name)
            except pluggy.PluginValidationError as exc:  # a hookimpl the spec does not match
                raise ConfigError(f"[plugins].modules: {name!r}: {_one_line(exc)}") from None
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise ConfigError(f"plugin {exc.plugin!r}: {_one_line(exc)}") from None
    return pm


def _one_line(exc: BaseException) -> str:
    """pluggy's words, its lines joined: a configuration error is one line."""
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def add_to_sys_path(paths: Sequence[Path]) -> None:
    """Put ``paths`` at the front of ``sys.path``, in order (one already there stays put)."""
    new = [str(p) for p in paths if str(p) not in sys.path]
    sys.path[:0] = dict.fromkeys(new)
    if new:
        importlib.invalidate_caches()


class BlockRegistry:
    """Every loaded block, by name and by the event types it sinks (in registration order); and
    what plugins contribute to governance: the change-gate rules (the built-ins when not given)
    and the eval assertion types."""

    def __init__(
        self,
        blocks: Iterable[Block],
        *,
        gate_rules: Sequence[Rule] | None = None,
        assertion_types: Mapping[str, AssertionType] | None = None,
        tools: Mapping[str, Tool] | None = None,
    ) -> None:
        self.tools: Mapping[str, Tool] = dict(tools or {})  # for the Admin service's ListTools
        self.gate_rules: tuple[Rule, ...] = tuple(
            BUILTIN_RULES if gate_rules is None else gate_rules
        )
        self.assertion_types: Mapping[str, AssertionType] = dict(assertion_types or {})
        self.by_name: dict[str, Block] = {}
        self.by_sink: dict[str, list[Block]] = {}
        slugs: dict[tuple[str, str], str] = {}  # (event type, artifact slug) → a block's name
        for block in blocks:
            if not isinstance(block, Block):
                raise ConfigError(f"a plugin returned {block!r}, which is not a Block")
            _plain_declaration(block)
            fault = block_fault(block)
            if fault:
                raise ConfigError(f"block {str(block.name)[:100]!r}: {fault}")
            if block.name in self.by_name:
                first, second = _block_origin(self.by_name[block.name]), _block_origin(block)
                raise ConfigError(f"two blocks are named {block.name!r} ({first} and {second}); "
                                  "block names are unique")  # fmt: skip
            # Two blocks an event reaches whose names make one slug wrote their audit
            # artifacts to one folder (EVENT_ID.SLUG), the second overwriting the first's.
            for event_type in block.sinks:
                other = slugs.setdefault((event_type, block_slug(block.name)), block.name)
                if other != block.name:
                    raise ConfigError(f"blocks {other!r} and {block.name!r} both sink "
                                      f"{event_type!r} and would share an artifact folder "
                                      f"({block_slug(block.name)!r}): rename one")  # fmt: skip
            self.by_name[block.name] = block
            object.__setattr__(block, "_registered", True)  # its declaration is fixed now
            for event_type in dict.fromkeys(block.sinks):  # (a subclass's own tuple, too;
                # block_fault refused a sink that is no str)
                self.by_sink.setdefault(event_type, []).append(block)

    def sinking(self, event_type: str, payload: Mapping[str, Any]) -> list[Block]:
        """The blocks an event reaches: those that sink its type and accept its payload."""
        return [b for b in self.by_sink.get(event_type, ()) if b.accepts(payload)]

    def sinks(self, event_type: str) -> bool:
        return event_type in self.by_sink

    def __iter__(self) -> Any:
        return iter(self.by_name.values())

    def __len__(self) -> int:
        return len(self.by_name)


def _plain_declaration(block: Block) -> None:
    """A block's name, sinks and description given as ``str`` subclasses (a ``StrEnum``'s
    members) made plain strings: the store's trace rows take no subclass (a block named by one
    ran, its chain was answered completed, and its end was never stored)."""
    for key in ("name", "description"):
        value = getattr(block, key)
        if isinstance(value, str) and type(value) is not str:
            object.__setattr__(block, key, str.__str__(value))
    sinks = block.sinks
    if isinstance(sinks, tuple | list) and any(type(s) is not str for s in sinks):
        plain = tuple(str.__str__(s) if isinstance(s, str) else s for s in sinks)
        if all(type(s) is str for s in plain):  # (others: block_fault names them)
            plain = tuple(dict.fromkeys(plain))
        object.__setattr__(block, "sinks", plain)


def block_fault(block: Block) -> str:
    """Why a plugin's block cannot run ("" when it can): its name is what traces, Status and
    the store show (an int name failed every Status listing its workflow was in), and its
    retries, backoff and timeout drive its attempts (``retries = -1`` made no attempt at all and
    failed its workflow with an UnboundLocalError)."""
    name = block.name
    if not isinstance(name, str) or not name.strip() or "\0" in name:
        return "name: expected a non-empty string without NUL"
    sinks = block.sinks
    if not isinstance(sinks, tuple | list):
        return f"sinks: expected a list or tuple of event types, got {sinks!r:.100}"
    for sink in sinks:
        if not isinstance(sink, str) or not sink:  # (the list was blamed for an empty one)
            return f"sinks: expected event types (non-empty strings), got {sink!r:.100}"
    if len(name) > MAX_ID_LENGTH:
        return f"name: longer than {MAX_ID_LENGTH} characters"
    # (a subclass whose __init__ skips Block's keeps its class's values as they are: "mutator"
    # for kind failed `foundry config check` and the daemon's start with a traceback, a hunt)
    if not isinstance(block.kind, BlockKind):
        return f"kind: expected BlockKind.OBSERVER or BlockKind.MUTATOR, got {block.kind!r:.100}"
    if not isinstance(block.description, str):
        return f"description: expected a string, got {block.description!r:.100}"
    allow_env = block.allow_env
    if not isinstance(allow_env, frozenset | set | tuple | list) or not all(
        isinstance(n, str) for n in allow_env
    ):
        return f"allow_env: expected a set of env names, got {allow_env!r:.100}"
    retries = block.retries
    if type(retries) is not int or not 0 <= retries <= MAX_RETRIES:
        return f"retries: expected a whole number from 0 to {MAX_RETRIES}, got {retries!r}"
    if not _seconds(block.backoff):
        return f"backoff: expected seconds, from 0 to {MAX_SECONDS}, got {block.backoff!r}"
    if block.timeout is not None and not (_seconds(block.timeout) and block.timeout > 0):
        return f"timeout: expected seconds, from more than 0 to {MAX_SECONDS}, or None, got " \
            f"{block.timeout!r}"  # fmt: skip
    return ""


def _seconds(value: object) -> bool:
    """A finite number of seconds from 0 to ``MAX_SECONDS``, as a declared block's."""
    return type(value) in (int, float) and 0 <= value <= MAX_SECONDS  # type: ignore[operator]


def load_blocks(
    modules: Sequence[str] = (),
    declared: Sequence[Mapping[str, Any]] = (),
    *,
    entry_points: bool = True,
    config: Config | None = None,
    paths: Sequence[Path] = (),
) -> BlockRegistry:
    pm = build_plugin_manager(modules, entry_points=entry_points, paths=paths)
    with _hook_failures():
        tools = _tools(pm)
        # pluggy calls the most recently registered plugin first; blocks run in registration
        # order.
        results = _answers(pm, "register_blocks", config=config or Config(), tools=tools)
        contributed = [b for result in results for b in _answer(result, list, "blocks")]
        factories: dict[str, BlockFactory] = {}
        for result in _answers(pm, "register_block_types"):
            for type_name, factory in _answer(result, dict, "block_types").items():
                if type(type_name) is not str or not type_name.strip() or not callable(factory):
                    raise ConfigError(f"register_block_types: expected {{type name: factory}}, "
                                      f"got {type_name!r:.100}: {factory!r:.100}")  # fmt: skip
                if type_name in factories:  # the last one won: a plugin's "shell" ran its code
                    raise ConfigError(f"two plugins register a block type named {type_name!r}; "
                                      "block type names are unique")  # fmt: skip
                factories[type_name] = factory
        gate_rules, assertion_types = _gate_rules(pm), _assertion_types(pm)
    return BlockRegistry(
        [*contributed, *(_declared_block(t, factories) for t in declared)],
        gate_rules=gate_rules,
        assertion_types=assertion_types,
        tools=tools,
    )


@contextlib.contextmanager
def _hook_failures() -> Iterator[None]:
    """A plugin hook that raised, or answered what is not the hook's (a None, a non-Tool): one
    line naming it, as every other configuration error, not a traceback."""
    try:
        yield
    except (ConfigError, KeyboardInterrupt):  # (a Ctrl-C while plugins load stops the start)
        raise
    except BaseException as exc:  # noqa: BLE001 - SystemExit, a plugin's own BaseException
        where = ""  # the plugin's line that raised: the deepest frame outside the kernel
        frame = exc.__traceback__
        while frame is not None:
            name = frame.tb_frame.f_code.co_filename
            if not name.startswith((_KERNEL, _PLUGGY)):
                where = f" ({name}:{frame.tb_lineno})"
            frame = frame.tb_next
        raise ConfigError(f"a plugin's hook failed{where}: {described(exc)}") from None


_KERNEL = str(Path(__file__).resolve().parent.parent)
_PLUGGY = str(Path(pluggy.__file__).resolve().parent)


def _answers(pm: Any, hook: str, **kwargs: Any) -> list[Any]:
    """Each plugin's answer to ``hook``, in registration order (pluggy calls the most recently
    registered plugin first). A ConfigError names a plugin that answered None: pluggy leaves
    Nones out, so a hook that forgot its ``return`` added nothing, and nothing said so."""
    caller = getattr(pm.hook, hook)
    results = list(reversed(caller(**kwargs)))
    impls = [i for i in caller.get_hookimpls() if not (i.hookwrapper or i.wrapper)]
    if len(results) < len(impls):  # who: asked again, one at a time (a start that fails)
        for impl in impls:
            if impl.function(*(kwargs[name] for name in impl.argnames)) is None:
                raise ConfigError(f"{hook}: plugin {impl.plugin_name!r} answered None, not "
                                  "what the hook returns (a missing return?)")  # fmt: skip
    return results


def _answer(result: Any, kind: type, hook: str) -> Any:
    """A hook's answer, if it is of the ``kind`` the hook returns (a list, a dict), else a
    ConfigError naming the hook (``for b in 5`` said only "'int' object is not iterable")."""
    if isinstance(result, kind | (tuple if kind is list else kind)):
        return result
    raise ConfigError(
        f"register_{hook}: a plugin answered {str(result)[:100]!r}, not a {kind.__name__}"
    )


def load_config_blocks(config: Config, *, entry_points: bool = True) -> BlockRegistry:
    """The configuration's blocks and governance plugins; the ``[gate]`` policy's rule names
    are checked against the registered rules here (a ConfigError naming the file)."""
    try:
        # What a plugin prints while it loads goes to stderr: it came before the daemon's ready
        # line, which whoever started it reads as its address, and broke --json answers.
        with contextlib.redirect_stdout(sys.stderr):
            registry = load_blocks(
                config.plugin_modules,
                config.declared_blocks,
                entry_points=entry_points,
                config=config,
                paths=config.plugin_paths,
            )
    except ConfigError as exc:  # one line naming the file, as every other config error
        text = str(exc)
        named = text if text.startswith(config.source) else f"{config.source}: {text}"
        raise ConfigError(named) from None
    try:
        config.gate_policy().check_rules(registry.gate_rules)
    except ConfigError as exc:
        raise ConfigError(f"{config.source}: {exc}") from None
    return registry


def _gate_rules(pm: Any) -> list[Rule]:
    """``register_gate_rules`` results in registration order (the built-ins first); each rule
    has a unique string ``name`` and an ``evaluate``."""
    rules: list[Rule] = []
    names: set[str] = set()
    for result in _answers(pm, "register_gate_rules"):
        for rule in result or ():
            name = getattr(rule, "name", None)
            if (
                not isinstance(name, str)
                or not name
                or not callable(getattr(rule, "evaluate", None))
            ):
                raise ConfigError(f"gate rule {rule!r}: needs a name and an evaluate method")
            if name in names:
                raise ConfigError(f"two gate rules are named {name!r}; rule names are unique")
            names.add(name)
            rules.append(rule)
    return rules


def _assertion_types(pm: Any) -> dict[str, AssertionType]:
    try:
        return merge_assertion_types(_answers(pm, "register_eval_assertions"))
    except InvalidArgument as exc:
        raise ConfigError(f"register_eval_assertions: {exc}") from None


def _tools(pm: Any) -> dict[str, Tool]:
    tools: dict[str, Tool] = {}
    for result in _answers(pm, "register_tools"):
        for tool in result:
            if not isinstance(tool, Tool):
                raise ConfigError(f"register_tools: {str(tool)[:100]!r} is not a Tool")
            # (an int name failed the listing with a TypeError; an empty one or a function
            # that is none failed only when a step used it)
            if not isinstance(tool.name, str) or not tool.name.strip() or "\0" in tool.name:
                raise ConfigError(f"register_tools: a tool's name must be a non-empty string, "
                                  f"not {tool.name!r:.100}")  # fmt: skip
            if not callable(tool.fn):
                raise ConfigError(f"register_tools: tool {tool.name!r}: its function is not "
                                  "callable")  # fmt: skip
            if tool.name in tools:
                first, second = _module_of(tools[tool.name]), _module_of(tool)
                raise ConfigError(f"two tools are named {tool.name!r} ({first} and {second}); "
                                  "tool names are unique")  # fmt: skip
            tools[tool.name] = tool
    return tools


def _failed_entry_point(pm: Any) -> str:
    """The entry point pluggy was loading when it failed: the first of the group it has not
    registered (it loads them in order, registering each as it goes)."""
    found: Sequence[importlib.metadata.EntryPoint] = ()
    with contextlib.suppress(Exception):  # a broken installation: the group alone is said
        found = tuple(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    for ep in found:
        if pm.get_plugin(ep.name) is None and not pm.is_blocked(ep.name):
            dist = getattr(ep.dist, "name", None) or "an unknown distribution"
            return f"{ENTRY_POINT_GROUP} entry point {ep.name!r} = {ep.value!r} of {dist}"
    return f"{ENTRY_POINT_GROUP} entry point"


def _block_origin(block: Block) -> str:
    """Where a block comes from, for a message: its function's or class's module (a plugin's),
    or the daemon's own (a built-in, or one foundry.toml declares)."""
    declared = block.__dict__.get("_declared_in")
    if isinstance(declared, str):
        return declared
    made_of = getattr(block, "_fn", None) or type(block)
    module = getattr(made_of, "__module__", None)
    if not isinstance(module, str):
        return "an unknown module"
    return "a built-in block" if module.startswith("foundry.") else module


def _module_of(tool: Tool) -> str:
    module = getattr(tool.fn, "__module__", None)
    return module if isinstance(module, str) else "an unknown module"


def _declared_block(table: Mapping[str, Any], factories: Mapping[str, BlockFactory]) -> Block:
    source = table.get("__source__", "foundry.toml")
    where = f"{source}: [[blocks]] {table['name']!r}"
    factory = factories.get(table["type"])
    if factory is None:
        known = ", ".join(sorted(factories))
        raise ConfigError(f"{where}.type: unknown block type {table['type']!r} (known: {known})")
    options = {k: v for k, v in table.items() if k != "__source__"}
    try:
        made = factory(options)
        if isinstance(made, Block):  # (what else a factory answers, the registry names)
            object.__setattr__(made, "_declared_in", f"{source}'s [[blocks]]")
        return made
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except KeyboardInterrupt:  # the operator's Ctrl-C while it builds the block
        raise
    # a plugin's factory failed otherwise (SystemExit too: a clean exit, with nothing said)
    except BaseException as exc:  # noqa: BLE001
        raise ConfigError(f"{where}: its type's factory failed: {described(exc)}") from None
