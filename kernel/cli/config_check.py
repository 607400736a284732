"""``foundry config check``: load the configuration as ``foundry serve`` would — the file, the
plugins and ``[[blocks]]`` it names, the gate policy's rules — without starting anything, and
print a summary. Exit 0 when it would start; 2 with the file, key and reason when not."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from typing import Any

from foundry.kernel.config import Config, check_listener_ports, parse_listen


def add_config_commands(commands: Any) -> None:
    config = commands.add_parser("config", help="check a configuration")
    verbs = config.add_subparsers(dest="verb", required=True, metavar="VERB")
    check = verbs.add_parser(
        "check", help="load and validate a foundry.toml and the blocks and plugins it names"
    )
    check.add_argument("--config", help="foundry.toml to check (default: ./foundry.toml)")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.set_defaults(handler=cmd_config_check)


def cmd_config_check(args: argparse.Namespace) -> int:
    summary = check(Config.load(args.config))  # a ConfigError: one line on stderr, exit 2
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    for line in summary_lines(summary):
        print(line)
    return 0


def check(config: Config) -> dict[str, Any]:
    """Load what ``serve`` would load; a summary of it (a ConfigError when it would not start)."""
    from foundry.kernel.actors.supervisor import check_home
    from foundry.kernel.blocks.registry import load_config_blocks

    registry = load_config_blocks(config)
    _check_listeners(config)
    archives = config.store.retain_days > 0  # as ``serve`` does, without making it
    check_home(config.home, config.home_from, archives=archives)
    kinds = Counter(b.kind.value for b in registry)
    return {
        "config": config.source,
        "ok": True,
        "listen": config.listen,
        "home": str(config.home),
        "plugin_modules": list(config.plugin_modules),
        "declared_blocks": [str(t["name"]) for t in config.declared_blocks],
        "blocks": len(registry),
        "observers": kinds.get("observer", 0),
        "mutators": kinds.get("mutator", 0),
        "event_types": sorted(registry.by_sink),
        "tools": sorted(registry.tools),
        "gate_rules": [r.name for r in registry.gate_rules],
    }


def _check_listeners(config: Config) -> None:
    """As ``serve`` checks them before listening: the token, TLS files, and no address beyond
    this machine without a token (``config check`` passed ``listen = "0.0.0.0:1"``)."""
    from foundry.kernel.edge.security import edge_security, refuse_open_bind

    key = f"{config.source}: [daemon].listen"
    host, _ = parse_listen(config.listen, key=key)
    security = edge_security(config, host, key, config.source)
    if config.http.listen != "off":
        http_key = f"{config.source}: [http].listen"
        http_host, _ = parse_listen(config.http.listen, key=http_key)
        refuse_open_bind(http_host, http_key, security.token)
        check_listener_ports(config)


def summary_lines(summary: dict[str, Any]) -> list[str]:
    def listed(values: list[str]) -> str:
        return ", ".join(values) or "(none)"

    return [
        f"{summary['config']}: OK",
        f"  listen           {summary['listen']}",
        f"  home             {summary['home']}",
        f"  plugin modules   {listed(summary['plugin_modules'])}",
        f"  blocks           {summary['blocks']} ({summary['observers']} observers, "
        f"{summary['mutators']} mutators); declared in the file: "
        f"{listed(summary['declared_blocks'])}",
        f"  event types sunk {listed(summary['event_types'])}",
        f"  tools            {listed(summary['tools'])}",
        f"  gate rules       {listed(summary['gate_rules'])}",
    ]
