"""Loading blocks with pluggy: built-ins, foundry.toml modules, declared blocks, loud failures."""

import enum
import importlib
import re
import subprocess
import sys
import textwrap
import types
import uuid
from datetime import UTC, date, datetime
from pathlib import Path

import foundry.kernel
import pytest
from foundry.kernel import Block, BlockKind, ConfigError, Emission, block
from foundry.kernel.blocks.registry import (
    DEFAULT_PLUGINS,
    BlockRegistry,
    add_to_sys_path,
    load_blocks,
    load_config_blocks,
)
from foundry.kernel.cli.main import main
from foundry.kernel.config import Config, EngineConfig
from foundry.kernel.testing import run_block

from tests.kernel.harness import running_kernel

BUILT_IN_FIRST = ["Compose Greeting", "Deliver Greeting"]


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    """``plugin_module(source)`` writes a uniquely named module on sys.path; returns its name."""
    made = []
    monkeypatch.syspath_prepend(str(tmp_path))

    def make(source):
        name = f"foundry_test_plugin_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        made.append(name)
        return name

    try:
        yield make
    finally:
        for name in made:
            sys.modules.pop(name, None)


def test_built_ins_load_first_and_in_order():
    names = [b.name for b in load_blocks()]

    assert names[:2] == BUILT_IN_FIRST
    assert DEFAULT_PLUGINS[0] == "foundry.plugins.greeting"


def test_declared_blocks_come_after_every_plugin_block():
    declared = [
        {"name": "Escalate", "type": "relay", "sinks": ["alert"], "emits": "page"},
        {"name": "Archive", "type": "shell", "sinks": ["page"], "command": ["true"]},
    ]

    names = [b.name for b in load_blocks(declared=declared, entry_points=False)]

    assert names[:2] == BUILT_IN_FIRST
    assert names[-2:] == ["Escalate", "Archive"]


@pytest.mark.parametrize(
    ("table", "said"),
    [
        ({"set": {"when": datetime(1979, 5, 27, 7, 32, tzinfo=UTC)}},
         "set.when: datetime values are not JSON (quote it)"),
        ({"set": {"v": float("inf")}}, "set.v: inf is not a finite number"),
        ({"set": {"deep": {"list": [1, float("nan")]}}}, "set.deep.list[1]: nan is not a finite"),
        ({"when": {"day": date(2026, 1, 2)}}, "when.day: date values are not JSON"),
        ({"emits": "a\0b"}, "emits: the event type holds a NUL character"),
        ({"emits": "e" * 257}, "emits: the event type is longer than 256 characters"),
    ],
    ids=["set-datetime", "set-inf", "set-nested-nan", "when-date", "emits-nul", "emits-long"],
)  # fmt: skip
def test_a_relay_setting_what_json_cannot_hold_is_refused_at_start(table, said):
    # "Object of type datetime is not JSON serializable" failed every run the relay reached
    declared = [{"name": "Relay", "type": "relay", "sinks": ["a"], "emits": "b", **table}]
    with pytest.raises(ConfigError, match=re.escape(said)):
        load_blocks(declared=declared, entry_points=False)


def test_register_blocks_in_a_module_named_in_the_config_contributes_blocks(plugin_module):
    name = plugin_module(
        """
        from foundry.kernel import block, hookimpl

        @block("Count Words", sinks=["text_received"])
        def count_words(ctx):
            return len(ctx.payload["text"].split())

        @block("Shout", sinks=["text_received"], kind="mutator")
        def shout(ctx):
            return ctx.payload["text"].upper()

        @hookimpl
        def register_blocks():
            return [count_words, shout]
        """
    )

    registry = load_blocks([name], entry_points=False)

    names = [b.name for b in registry]
    assert names[:2] == BUILT_IN_FIRST
    assert names[-2:] == ["Count Words", "Shout"]
    assert [b.name for b in registry.sinking("text_received", {"text": "x"})] == [
        "Count Words",
        "Shout",
    ]
    assert registry.by_name["Shout"].kind is BlockKind.MUTATOR


def test_register_blocks_may_take_the_config_and_the_tools(plugin_module):
    name = plugin_module(
        """
        from foundry.kernel import Block, Tool, hookimpl

        class Seen(Block):
            async def run(self, ctx):
                return {}

        @hookimpl
        def register_tools():
            return [Tool("upper", lambda args: args)]

        @hookimpl
        def register_blocks(config, tools):
            return [Seen(f"model {config.llm.model}"), Seen("tools " + ",".join(sorted(tools)))]
        """
    )

    names = [b.name for b in load_blocks([name], entry_points=False, config=Config())]

    assert "model mock-small" in names  # the config passed to load_blocks
    [tools] = [n for n in names if n.startswith("tools ")]
    assert "upper" in tools.removeprefix("tools ").split(",")  # every contributed tool, by name


def test_register_block_types_in_a_module_contributes_a_declarable_type(plugin_module):
    name = plugin_module(
        """
        from foundry.kernel import Block, hookimpl

        class Echo(Block):
            async def run(self, ctx):
                return dict(ctx.payload)

        @hookimpl
        def register_block_types():
            return {"echo": lambda table: Echo(table["name"], sinks=table.get("sinks", []))}
        """
    )
    declared = [{"name": "My Echo", "type": "echo", "sinks": ["ping"]}]

    registry = load_blocks([name], declared, entry_points=False)

    assert registry.by_name["My Echo"].sinks == ("ping",)


def test_a_misspelled_hook_fails_loudly(plugin_module):
    name = plugin_module(
        """
        from foundry.kernel import hookimpl

        @hookimpl
        def register_blokcs():
            return []
        """
    )

    with pytest.raises(ConfigError, match="register_blokcs"):
        load_blocks([name], entry_points=False)


def test_a_module_that_cannot_be_imported_is_named():
    with pytest.raises(ConfigError, match=r"\[plugins\]\.modules.*no_such_module_xyz"):
        load_blocks(["no_such_module_xyz"], entry_points=False)


@pytest.mark.parametrize(
    ("source", "said"),
    [
        ("raise RuntimeError('MY_TOKEN is not set')", "failed: RuntimeError: MY_TOKEN is not set"),
        ("def broken(:\n    pass", "failed: SyntaxError"),
        ("import sys\nsys.exit(3)", "failed: SystemExit: 3"),
        ("class Odd(BaseException):\n    pass\nraise Odd('mine')", "failed: Odd: mine"),
        ("raise GeneratorExit('early')", "failed: GeneratorExit: early"),
    ],
    ids=["raises", "syntax", "exits", "base exception", "generator exit"],
)
def test_a_module_whose_own_code_fails_at_import_is_one_line(plugin_module, source, said):
    # only ImportError was caught: a traceback and exit 1 (sys.exit(3): exit 3, nothing said)
    name = plugin_module(source)
    with pytest.raises(ConfigError, match=rf"\[plugins\]\.modules: importing {name!r} {said}"):
        load_blocks([name], entry_points=False)


def test_a_ctrl_c_while_a_module_imports_stops_the_load(plugin_module):
    name = plugin_module("raise KeyboardInterrupt")
    with pytest.raises(KeyboardInterrupt):
        load_blocks([name], entry_points=False)


@pytest.mark.parametrize(
    ("source", "said"),
    [
        ("def register_blocks():\n    raise KeyError('region')", "KeyError: 'region'"),
        ("def register_tools():\n    return ['not a tool']", "'not a tool' is not a Tool"),
        ("def register_block_types():\n    return 5", "register_block_types: a plugin answered"),
        ("def register_blocks():\n    return 5", "register_blocks: a plugin answered '5', not a"),
        # tracebacks, or accepted and failing only when used (found by a plugin hunt)
        (
            "def register_blocks(cfg):\n    return []",
            "register_blocks(cfg); Argument(s) {'cfg'} are declared in the hookimpl",
        ),
        (
            "def register_tools():\n    from foundry.kernel import Tool\n    return [Tool(5, str)]",
            "a tool's name must be a non-empty string, not 5",
        ),
        (
            "def register_tools():\n    from foundry.kernel import Tool\n    return [Tool('x', 5)]",
            "tool 'x': its function is not callable",
        ),
        (  # a 43-line traceback
            "def register_blocks():\n    raise type('Abort', (BaseException,), {})('no')",
            "Abort: no",
        ),
        (
            "def register_tools():\n    from foundry.kernel import Tool\n"
            "    return [Tool('word_count', len)]",
            "two tools are named 'word_count' (foundry.plugins.tool and builtins)",
        ),
        # pluggy leaves a None answer out: the plugin's blocks were silently missing
        ("def register_blocks():\n    []", "register_blocks: plugin 'foundry_test_plugin_"),
        ("def register_gate_rules():\n    pass", "answered None, not what the hook returns"),
    ],
    ids=[
        "raises",
        "not-a-tool",
        "not-a-mapping",
        "not-a-list",
        "unknown-argument",
        "tool-int-name",
        "tool-not-callable",
        "raises-base-exception",
        "tool-named-as-a-built-in",
        "blocks-none",
        "gate-rules-none",
    ],
)
def test_a_hook_that_fails_is_one_line_naming_it(plugin_module, source, said):
    name = plugin_module("from foundry.kernel import hookimpl\n\n@hookimpl\n" + source)
    with pytest.raises(ConfigError, match=re.escape(said)) as refused:
        load_blocks([name], entry_points=False)
    if "raise" in source:  # where: the plugin's own line
        assert f"{name}.py:5)" in str(refused.value)


def test_a_block_made_with_sinks_that_are_no_event_types_is_refused_naming_them():
    # they were made unique first: "unhashable type: 'list'", naming nothing
    odd = block("Odd", sinks=["a", ["b"]])(lambda ctx: None)
    with pytest.raises(ConfigError, match=r"sinks: expected event types .*, got \['b'\]"):
        BlockRegistry([odd])
    empty = block("Empty", sinks=["", "x"])(lambda ctx: None)  # the list was blamed
    with pytest.raises(ConfigError, match="sinks: expected event types .*, got ''"):
        BlockRegistry([empty])


@pytest.mark.parametrize(
    ("options", "said"),
    [
        ({"name": 42}, "name: expected a non-empty string"),
        ({"name": " "}, "name: expected a non-empty string"),
        ({"name": "n" * 257}, "name: longer than 256 characters"),
        ({"retries": -1}, "retries: expected a whole number from 0 to 99, got -1"),
        ({"retries": 2.5}, "retries: expected a whole number"),
        ({"timeout": float("nan")}, "timeout: expected seconds"),
        ({"timeout": 0}, "timeout: expected seconds"),
        ({"backoff": float("inf")}, "backoff: expected seconds"),
        ({"sinks": ("a", 7)}, "sinks: expected event types (non-empty strings), got 7"),
        ({"sinks": {"a"}}, "sinks: expected a list or tuple of event types"),
        # (what a subclass whose __init__ skips Block's keeps: "mutator" failed `config
        # check` and the daemon's start with a traceback, a hunt)
        (
            {"kind": "mutator"},
            "kind: expected BlockKind.OBSERVER or BlockKind.MUTATOR, got 'mutator'",
        ),
        ({"description": 42}, "description: expected a string, got 42"),
        ({"allow_env": "PATH"}, "allow_env: expected a set of env names, got 'PATH'"),
        ({"allow_env": frozenset({1})}, "allow_env: expected a set of env names"),
    ],
)
def test_a_block_that_cannot_run_is_refused_at_load(options, said):
    # an int name failed every Status listing its workflow was in; retries -1 made no attempt
    odd = block("Odd", sinks=["a"])(lambda ctx: None)
    for key, value in options.items():
        setattr(odd, key, value)
    with pytest.raises(ConfigError, match=re.escape(said)):
        BlockRegistry([odd])


def test_config_check_of_a_block_whose_init_skips_blocks_is_one_line(
    plugin_module, tmp_path, capsys
):
    name = plugin_module(
        """
        from foundry.kernel import Block, hookimpl

        class Deploy(Block):
            name = "Deploy"
            kind = "mutator"
            sinks = ("deploy_requested",)

            def __init__(self, target="prod"):
                self.target = target

        @hookimpl
        def register_blocks():
            return [Deploy()]
        """
    )
    config = tmp_path / "plugged.toml"
    config.write_text(f'[plugins]\nmodules = ["{name}"]\n')
    assert main(["config", "check", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "block 'Deploy': kind: expected BlockKind.OBSERVER or BlockKind.MUTATOR" in err
    assert err.count("\n") == 1


def test_a_plugin_returning_something_that_is_not_a_block_fails(plugin_module):
    name = plugin_module(
        """
        from foundry.kernel import hookimpl

        @hookimpl
        def register_blocks():
            return ["not a block"]
        """
    )

    with pytest.raises(ConfigError, match="not a Block"):
        load_blocks([name], entry_points=False)


def test_an_installed_plugin_failing_at_import_is_named(tmp_path, monkeypatch):
    # "importing an installed plugin (foundry entry point) failed: RuntimeError: …" named no
    # entry point, distribution or module (a plugin hunt)
    module = f"broken_plugin_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text("raise RuntimeError('no config here')\n")
    dist = tmp_path / "acme_blocks-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-blocks\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[foundry]\nacme = {module}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from foundry.kernel.blocks.registry import build_plugin_manager

    with pytest.raises(ConfigError) as caught:
        build_plugin_manager(entry_points=True)
    said = str(caught.value)
    named = f"(foundry entry point 'acme' = '{module}' of acme-blocks)"
    assert said == f"importing an installed plugin {named} failed: RuntimeError: no config here"


def test_duplicate_block_names_fail():
    first = block("Same", sinks=["a"])(lambda ctx: None)
    second = block("Same", sinks=["b"])(lambda ctx: None)

    with pytest.raises(ConfigError, match="two blocks are named 'Same'") as caught:
        BlockRegistry([first, second])
    assert f"({__name__} and {__name__})" in str(caught.value)  # (a plugin's: its module)

    class Clash(Block):  # a plugin's block named as a built-in: both named (a hunt)
        name = "Compose Greeting"
        sinks = ("x",)

        def run(self, ctx):  # pragma: no cover - never run
            return None

    from foundry.plugins.greeting import compose_greeting

    with pytest.raises(ConfigError) as caught:
        BlockRegistry([compose_greeting, Clash()])
    assert f"(a built-in block and {__name__})" in str(caught.value)
    # one the configuration declares is named by its file (both were "the daemon's own or
    # foundry.toml's", a hunt)
    declared = [{"name": "Compose Greeting", "type": "relay", "sinks": ["x"], "emits": "y",
                 "__source__": "/etc/foundry.toml"}]  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        load_blocks(declared=declared, entry_points=False)
    assert "(a built-in block and /etc/foundry.toml's [[blocks]])" in str(caught.value)


def test_block_names_that_share_an_artifact_folder_fail():
    """'Save Note' and 'save-note' wrote their audit artifacts to one folder, the second
    overwriting the first's."""
    first = block("Save Note", sinks=["a", "b"])(lambda ctx: None)
    second = block("save-note", sinks=["b"])(lambda ctx: None)
    with pytest.raises(ConfigError, match="'Save Note' and 'save-note' both sink 'b' and would"):
        BlockRegistry([first, second])
    # no event reaches both: their folders never meet (EVENT_ID.SLUG)
    BlockRegistry([first, block("save-note", sinks=["c"])(lambda ctx: None)])
    # letters of other scripts are kept: two such names are two folders, not both "block"
    BlockRegistry([block("書く", sinks=["a"])(lambda ctx: None),
                   block("読む", sinks=["a"])(lambda ctx: None)])  # fmt: skip


def test_a_long_name_makes_a_slug_a_file_name_can_hold():
    from foundry.kernel.core.ids import block_slug

    for name in ("書" * 80, "n" * 256):
        slug = block_slug(name)
        assert len(slug.encode()) <= 200
        assert slug != block_slug(name[:-1] + "x")  # the digest of the whole name tells them apart
    assert block_slug("Save Note") == "save-note"  # short names as before


def test_sinks_given_as_one_string_fail_at_once():
    """("ticket_scored") without its comma: the block sank t, i, c, k, … and never ran."""
    with pytest.raises(ValueError, match="sinks: expected a list or tuple of event types, got "
                                         "the string 'ticket_scored'"):  # fmt: skip
        block("Scored", sinks="ticket_scored")(lambda ctx: None)


def test_two_plugins_may_not_register_one_block_type(plugin_module):
    """A plugin's "shell" replaced the built-in one: the operator's declared command never
    ran, the plugin's code did."""
    name = plugin_module(
        """
        from foundry.kernel import Block, hookimpl

        class NotAShell(Block):
            async def run(self, ctx):
                return {}

        @hookimpl
        def register_block_types():
            return {"shell": lambda table: NotAShell(table["name"])}
        """
    )
    with pytest.raises(ConfigError, match="two plugins register a block type named 'shell'"):
        load_blocks([name], entry_points=False)


@pytest.mark.parametrize(
    ("source", "said"),
    [("@hookimpl\ndef register_blocks(cfg):\n    return []\n", "Argument(s) {'cfg'} are"),
     ("from foundry.kernel import block\nodd = block('Odd', sinks='odd_event')(print)\n",
      "sinks: expected a list or tuple of event types, got the string 'odd_event'")],
    ids=["hookimpl-mismatch", "sinks-string"],
)  # fmt: skip
def test_an_installed_plugin_that_fails_is_one_line(tmp_path, monkeypatch, source, said):
    """The [plugins] modules' failures were one line; an installed plugin's (an entry point)
    were a traceback."""
    name = f"foundry_ep_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("from foundry.kernel import hookimpl\n" + source)
    info = tmp_path / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[foundry]\n{name} = {name}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    try:
        with pytest.raises(ConfigError, match=re.escape(said)) as refused:
            load_blocks(entry_points=True)
        assert "\n" not in str(refused.value)
    finally:
        sys.modules.pop(name, None)


def test_a_block_type_factory_that_fails_is_one_line(plugin_module):
    name = plugin_module(
        """
        from foundry.kernel import hookimpl

        @hookimpl
        def register_block_types():
            return {"broken": lambda table: 1 / 0}
        """
    )
    declared = [{"name": "B", "type": "broken", "sinks": ["x"]}]
    with pytest.raises(ConfigError, match="'B': its type's factory failed: ZeroDivisionError"):
        load_blocks([name], declared, entry_points=False)


@pytest.mark.parametrize(
    ("factory", "said"),
    [("raise SystemExit(0)", "its type's factory failed: SystemExit: 0"),
     ("raise type('Abort', (BaseException,), {})('no')", "its type's factory failed: Abort: no")],
    ids=["system-exit", "base-exception"],
)  # fmt: skip
def test_a_block_type_factory_raising_a_base_exception_is_one_line(plugin_module, factory, said):
    """SystemExit(0) from a factory ended `config check` and the daemon's start at exit 0 with
    nothing said; a BaseException of the plugin's own was a traceback."""
    name = plugin_module(f"""
        from foundry.kernel import hookimpl

        def broken(table):
            {factory}

        @hookimpl
        def register_block_types():
            return {{"broken": broken}}
        """)  # fmt: skip
    declared = [{"name": "B", "type": "broken", "sinks": ["x"]}]
    with pytest.raises(ConfigError, match=re.escape(f"'B': {said}")):
        load_blocks([name], declared, entry_points=False)


@pytest.mark.parametrize(
    "answer", ["{1: lambda table: None}", "{'': lambda table: None}", "{'mytype': 5}"]
)
def test_a_block_type_that_is_no_name_and_factory_is_refused_at_load(plugin_module, answer):
    """An int key failed the start with a traceback once a table named an unknown type (the
    known types' sorting), and was accepted otherwise; a factory that is no function failed
    only when a table used it."""
    name = plugin_module(f"""
        from foundry.kernel import hookimpl

        @hookimpl
        def register_block_types():
            return {answer}
        """)  # fmt: skip
    with pytest.raises(ConfigError, match=r"register_block_types: expected \{type name: factory"):
        load_blocks([name], entry_points=False)


class _Names(enum.StrEnum):
    SCORE = "Score"
    SCORED = "thing_scored"
    WANTED = "score_wanted"


async def test_a_block_declared_with_str_subclasses_stores_its_chain(tmp_path):
    """A block named by a StrEnum member ran and its chain was answered completed, but the
    store's trace rows took no str subclass: the chain's end was never stored, and the next
    start recorded the workflow as failed."""

    class Score(Block):
        name = _Names.SCORE
        sinks = (_Names.WANTED,)
        description = _Names.SCORED

        async def run(self, ctx):
            ctx.emit(_Names.SCORED, {"score": 1})
            return {"score": 1}

    score = Score()
    registry = BlockRegistry([score])
    assert type(score.name) is str
    assert type(score.description) is str
    assert [type(s) for s in score.sinks] == [str]
    async with running_kernel(tmp_path / "k", registry) as k:
        emitted = await k.emit("score_wanted")
        trace = await k.finished(emitted.workflow_id)
        assert [x["block_name"] for x in trace["block_executions"]] == ["Score"]
        stored = await k.query(
            "SELECT block_name, state FROM block_executions WHERE workflow_id = ?",
            emitted.workflow_id,
        )
        assert stored == [("Score", "completed")]


def test_a_declared_block_may_not_reuse_a_built_in_name():
    declared = [{"name": "Compose Greeting", "type": "relay", "sinks": ["x"], "emits": "y"}]

    with pytest.raises(ConfigError, match="Compose Greeting"):
        load_blocks(declared=declared, entry_points=False)


def test_the_registry_routes_by_sink_and_payload_filter():
    high = block("High", sinks=["alert"], accepts=lambda p: p.get("severity") == "high")(
        lambda ctx: None
    )
    every = block("Every", sinks=["alert", "notice"])(lambda ctx: None)
    registry = BlockRegistry([high, every])

    assert [b.name for b in registry.sinking("alert", {"severity": "high"})] == ["High", "Every"]
    assert [b.name for b in registry.sinking("alert", {"severity": "low"})] == ["Every"]
    assert [b.name for b in registry.sinking("notice", {})] == ["Every"]
    assert registry.sinks("alert")
    assert not registry.sinks("other")
    assert len(registry) == 2


def test_block_options_from_the_decorator_and_the_class():
    @block("Fn", sinks=["a", "b"], kind="mutator", timeout=None, retries=2, backoff=0.5)
    def fn(ctx):
        """Does a thing."""

    class Custom(Block):
        name = "Custom"
        kind = BlockKind.MUTATOR
        sinks = ("c",)
        retries = 1

    custom, renamed = Custom(), Custom("Renamed", kind="observer", timeout=5)

    assert (fn.name, fn.sinks, fn.kind, fn.timeout, fn.retries, fn.backoff) == (
        "Fn", ("a", "b"), BlockKind.MUTATOR, None, 2, 0.5,
    )  # fmt: skip
    assert fn.description == "Does a thing."
    assert (custom.name, custom.kind, custom.sinks, custom.timeout) == (
        "Custom", BlockKind.MUTATOR, ("c",), 60.0,
    )  # fmt: skip
    assert (renamed.name, renamed.kind, renamed.timeout, renamed.retries) == (
        "Renamed", BlockKind.OBSERVER, 5.0, 1,
    )  # fmt: skip


PUBLIC_API = {
    "AlreadyExists", "AssertionResult", "BUILTIN_GATE_RULES", "Block", "BlockContext",
    "BlockError", "BlockFactory", "BlockKind", "Followup", "RuleResult",
    "ChainLimitExceeded", "CommandResult", "ConfigError", "EgressPolicy", "EgressRefused",
    "Emission", "FailedPrecondition", "FoundryError", "InvalidArgument", "NotFound",
    "ResourceExhausted", "Throttle", "Tool", "Unavailable", "Usage", "block", "common_options",
    "compact_json", "event_type_fault", "forbidden_reason", "guarded_client", "hookimpl",
    "hookspec", "json_table", "matches",
    "payload_filter", "payload_number", "redact_url", "request_bounded",
}  # fmt: skip


def test_the_public_api_is_exactly_what_the_docs_promise():
    """Adding or removing a public name is an API change: update this set and the README."""
    assert set(foundry.kernel.__all__) == PUBLIC_API
    assert len(foundry.kernel.__all__) == len(PUBLIC_API)
    missing = [name for name in PUBLIC_API if not hasattr(foundry.kernel, name)]
    assert missing == []
    exported = {
        name for name, value in vars(foundry.kernel).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }  # fmt: skip
    assert exported == PUBLIC_API, "a public name is defined but not in __all__"


def test_the_package_is_typed():
    assert (Path(foundry.kernel.__file__).parent / "py.typed").is_file()


def test_star_import_gives_the_block_api():
    namespace = {}
    exec("from foundry.kernel import *", namespace)

    assert namespace["Block"] is Block
    assert set(foundry.kernel.__all__) <= set(namespace)


def test_each_public_name_is_its_home_module_s_object_and_typed_alike():
    """``foundry.kernel`` imports its names when first asked (PEP 562): each is the object of
    the module it lives in, and the imports type checkers read (``if TYPE_CHECKING``) name the
    same set as ``__all__``."""
    import ast

    homes = foundry.kernel._HOME_OF  # type: ignore[attr-defined]
    assert set(homes) == set(foundry.kernel.__all__)
    for name, module in homes.items():
        real = {"BUILTIN_GATE_RULES": "BUILTIN_RULES"}.get(name, name)
        assert getattr(foundry.kernel, name) is getattr(importlib.import_module(module), real)
    tree = ast.parse(Path(foundry.kernel.__file__).read_text())
    checked = next(n for n in tree.body if isinstance(n, ast.If))
    typed = {
        (alias.asname or alias.name, node.module)
        for node in checked.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert typed == set(homes.items())
    with pytest.raises(AttributeError, match="no attribute 'Blok'"):
        foundry.kernel.Blok  # noqa: B018


def test_importing_the_kernel_or_the_cli_leaves_the_daemon_s_weight_behind():
    """``import foundry.kernel`` (which every ``foundry.kernel.*`` import runs) and the CLI's
    entry point import neither the plugin API's trio and httpx, nor DuckDB, nor the daemon's
    side of the admin service: a CLI command starts in about half the time."""
    script = (
        "import sys\n"
        "import foundry.kernel\n"
        "assert not {'trio', 'httpx'} & set(sys.modules), 'foundry.kernel'\n"
        "import foundry.kernel.cli.main\n"
        "heavy = {'duckdb', 'httpx', 'foundry.kernel.edge.grpc.admin_service',\n"
        "         'foundry.kernel.blocks.api'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


async def test_register_tools_in_a_module_contributes_a_tool_for_the_tool_step(
    plugin_module, tmp_path
):
    name = plugin_module(
        """
        from foundry.kernel import Tool, hookimpl

        @hookimpl
        def register_tools():
            return [Tool("reverse", lambda args: {"text": str(args["text"])[::-1]}, "reverses")]
        """
    )
    registry = load_blocks([name], entry_points=False)
    tool_step = registry.by_name["tool"]

    done = await run_block(
        tool_step, {"tool": "reverse", "args": {"text": "abc"}}, artifact_dir=tmp_path
    )
    unknown = await run_block(tool_step, {"tool": "nope"}, artifact_dir=tmp_path)

    assert done.output == {"text": "cba"}
    assert not unknown.outcome.success
    assert "reverse" in unknown.outcome.error  # the known tools are named


def test_two_tools_with_one_name_fail(plugin_module):
    source = """
        from foundry.kernel import Tool, hookimpl

        @hookimpl
        def register_tools():
            return [Tool("echo", lambda args: args)]
        """
    with pytest.raises(ConfigError, match="echo"):
        load_blocks([plugin_module(source)], entry_points=False)


# --- [plugins] paths ----------------------------------------------------------------------------


@pytest.fixture
def restore_sys_path(monkeypatch):
    """[plugins] paths change the process's sys.path; each test gets it back as it was."""
    monkeypatch.setattr(sys, "path", list(sys.path))


def _module_beside_a_config(folder, source, paths='paths = ["."]'):
    name = f"foundry_beside_{uuid.uuid4().hex[:8]}"
    (folder / f"{name}.py").write_text(textwrap.dedent(source))
    config = folder / "foundry.toml"
    config.write_text(f'[plugins]\n{paths}\nmodules = ["{name}"]\n')
    return name, config


def test_plugins_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    (tmp_path / "conf" / "lib").mkdir(parents=True)
    (tmp_path / "conf" / "foundry.toml").write_text('[plugins]\npaths = ["lib", "."]\n')
    monkeypatch.chdir(tmp_path)  # not the config's folder

    config = Config.from_toml(Path("conf/foundry.toml"))

    assert config.plugin_paths == ((tmp_path / "conf" / "lib"), (tmp_path / "conf"))


@pytest.mark.parametrize(
    ("paths", "match"),
    [
        (
            'paths = ["missing"]',
            r"foundry\.toml: \[plugins\]\.paths\[0\]: no such directory: '.*missing'",
        ),
        ('paths = [".", "foundry.toml"]', r"\[plugins\]\.paths\[1\]: no such directory"),
        ('paths = "."', r"\[plugins\]\.paths: expected a list of strings"),
        ("paths = [1]", r"\[plugins\]\.paths: expected a list of strings"),
    ],
)
def test_a_bad_plugins_path_is_refused_naming_the_key(tmp_path, paths, match):
    config = tmp_path / "foundry.toml"
    config.write_text(f"[plugins]\n{paths}\n")

    with pytest.raises(ConfigError, match=match):
        Config.from_toml(config)


def test_a_module_beside_the_config_loads_without_pythonpath(tmp_path, restore_sys_path):
    name, config_file = _module_beside_a_config(
        tmp_path,
        """
        from foundry.kernel import block, hookimpl

        @block("Beside", sinks=["ping"])
        def beside(ctx):
            return {"pong": True}

        @hookimpl
        def register_blocks():
            return [beside]
        """,
    )
    assert str(tmp_path) not in sys.path
    try:
        registry = load_config_blocks(Config.from_toml(config_file), entry_points=False)
    finally:
        sys.modules.pop(name, None)

    assert registry.by_name["Beside"].sinks == ("ping",)
    assert sys.path[0] == str(tmp_path)  # in front, as PYTHONPATH would put it


def test_without_plugins_paths_the_module_beside_the_config_is_not_found(
    tmp_path, restore_sys_path
):
    _, config_file = _module_beside_a_config(tmp_path, "", paths="")

    with pytest.raises(ConfigError, match=r"foundry\.toml: \[plugins\]\.modules: cannot import"):
        load_config_blocks(Config.from_toml(config_file), entry_points=False)


def test_a_plugins_path_already_on_sys_path_is_not_added_twice(tmp_path, restore_sys_path):
    sys.path.append(str(tmp_path))

    add_to_sys_path([tmp_path, tmp_path])

    assert sys.path.count(str(tmp_path)) == 1


def test_an_unknown_llm_provider_is_refused_at_load_naming_the_file(tmp_path):
    # `config check` passed "openia", and every llm step then failed
    config_file = tmp_path / "foundry.toml"
    config_file.write_text('[llm]\nprovider = "openia"\n')
    said = "foundry.toml: [llm].provider: unknown provider 'openia' (known: mock, openai)"
    with pytest.raises(ConfigError, match=re.escape(said)):
        load_config_blocks(Config.from_toml(config_file), entry_points=False)


@pytest.mark.parametrize(
    ("table", "said"),
    [
        ('model = "nosuch:gpt"', "[llm].model: unknown provider 'nosuch' before its ':'"),
        ('model = "llama3:8b"', "e.g. openai:llama3:8b"),
        ('provider = "openai"', "[llm].base_url: not set"),
        ('model = "openai:gpt-4o"', "[llm].base_url: not set"),
    ],
)
def test_a_default_model_no_llm_step_could_use_is_refused_at_load(tmp_path, table, said):
    """`config check` passed these, and every llm step that named no model then failed."""
    config_file = tmp_path / "foundry.toml"
    config_file.write_text(f"[llm]\n{table}\n")
    with pytest.raises(ConfigError, match=re.escape(said)):
        load_config_blocks(Config.from_toml(config_file), entry_points=False)


@pytest.mark.parametrize(
    "table", ['model = "mock:mock-small"', 'provider = "openai"\nbase_url = "http://x.test/v1"',
              'model = "openai:gpt-4o"\nbase_url = "http://x.test/v1"'],
)  # fmt: skip
def test_a_default_model_an_llm_step_can_use_loads(tmp_path, table):
    config_file = tmp_path / "foundry.toml"
    config_file.write_text(f"[llm]\n{table}\n")
    registry = load_config_blocks(Config.from_toml(config_file), entry_points=False)
    assert [b.name for b in registry if b.name == "llm"] == ["llm"]


async def test_the_harness_delivers_what_the_kernel_would(tmp_path):
    """A nested payload changed after emit() — by the block's own dict or in its emission —
    was shown by ``run_block`` as changed, while the kernel stores what emit() took."""

    @block("Emits Then Changes", sinks=["go"])
    def emits_then_changes(ctx):
        message = {"item": {"i": 1}, "tags": (1, 2)}
        ctx.emit("item_ready", message)
        message["item"]["i"] = 2
        ctx.emissions[0].payload["item"]["i"] = 3

    done = await run_block(emits_then_changes, {}, artifact_dir=tmp_path)
    assert [e.payload for e in done.delivered] == [{"item": {"i": 1}, "tags": [1, 2]}]


async def test_the_harness_delivers_a_payload_as_its_json_reads_back(tmp_path):
    """An emission appended past emit() was delivered as the block made it: an int key stayed an
    int, while the kernel stores (and downstream blocks receive) the JSON's text key."""

    @block("Int Keys", sinks=["go"])
    def int_keys(ctx):
        ctx.emissions.append(Emission("out", {"v": {1: "one"}}))

    done = await run_block(int_keys, {}, artifact_dir=tmp_path)
    assert [e.payload for e in done.delivered] == [{"v": {"1": "one"}}]


def _nested(levels: int) -> dict:
    payload: dict = {}
    for _ in range(levels):
        payload = {"a": payload}
    return payload


class _Exits(dict):
    def items(self):  # a plugin's value that ends whoever reads it
        raise SystemExit(3)


@pytest.mark.parametrize(
    ("emissions", "said"),
    [
        ([("out", {"v": float("nan")})], "emitted a payload that is not JSON"),
        ([("out", {"v": "\ud800"})], "emitted a payload that is not JSON"),
        ([("out", {"v": object()})], "emitted a payload that is not JSON"),
        ([("out", {"v": {(1, 2): "tuple key"}})], "emitted a payload that is not JSON"),
        ([("out", {"v": b"bytes"})], "emitted a payload that is not JSON"),
        ([("out", {"v": "é" * 800})], "emitted a 'out' payload of 1,608 bytes of JSON"),
        ([("out", _nested(200))], "emitted a 'out' payload nested deeper than 127 levels"),
        ([("out", _nested(5_000))], "emitted a 'out' payload nested deeper than 127 levels"),
        ([("out\udcff", {})], "emitted an event type that is not UTF-8"),
        ([("out", {"v": _Exits(a=1)})], "emitted a payload that could not be read"),
        ([("out", {"i": i}) for i in range(50)], "emitted 50 events, past the chain event limit"),
        ([("out", "TAKEN:" + '{"a":NaN}')], "emitted a payload that is not JSON"),
        ([("out", "TAKEN:" + '{"b":1, "a":2}')], "payload whose JSON emit() did not make"),
        ([("out", "TAKEN:" + '{"a":1,"a":2}')], "payload whose JSON emit() did not make"),
        ([("out", "TAKEN:" + "[1]")], "payload whose JSON emit() did not make"),
    ],
    ids=[
        "nan",
        "surrogate",
        "object",
        "tuple-key",
        "bytes",
        "too-large",
        "too-deep",
        "far-too-deep",
        "type-not-utf8",
        "exits-when-read",
        "too-many",
        "taken-nan",
        "taken-unsorted",
        "taken-twice",
        "taken-not-an-object",
    ],  # fmt: skip
)
async def test_the_harness_refuses_an_emission_as_the_engine_does(tmp_path, emissions, said):
    """``run_block`` delivered NaN, lone surrogates, non-JSON values, oversized, too deep and
    too many emissions, all of which the engine refuses, failing the block: a plugin's tests
    passed for a block that failed every chain in the daemon."""

    @block("Hostile", sinks=["go"])
    def hostile(ctx):
        for event_type, payload in emissions:
            if isinstance(payload, str):  # an Emission with JSON "taken" of the block's own
                text = payload.removeprefix("TAKEN:")
                snapshot = {"forged": True}
                ctx.emissions.append(Emission(event_type, snapshot, (snapshot, text)))
                continue
            ctx.emissions.append(Emission(event_type, payload))  # past emit()'s own copy

    limits = EngineConfig(max_event_bytes=1_500, max_chain_events=50)
    harness = await run_block(hostile, {}, artifact_dir=tmp_path / "h", engine=limits)
    async with running_kernel(tmp_path / "k", [hostile], engine=limits) as k:
        emitted = await k.emit("go")
        trace = await k.finished(emitted.workflow_id)

    [engine] = [x for x in trace["block_executions"] if x["block_name"] == "Hostile"]
    assert said in harness.outcome.error, harness.outcome.error
    assert (harness.state, harness.outcome.success, harness.delivered) == ("failed", False, [])
    assert (engine["state"], engine["summary"]) == ("failed", harness.outcome.error)
