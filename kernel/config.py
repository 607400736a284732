"""Daemon configuration: one loader, ``Config.from_toml`` → ``Config.from_mapping``, that validates
every key and names the file, the key and the reason when one is wrong."""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import stat
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypedDict

from foundry.kernel.core.gate_policy import GatePolicy
from foundry.kernel.core.planner import MAX_RUN_BYTES, MAX_STEP_BYTES
from foundry.kernel.errors import ConfigError

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_HTTP_LISTEN = "127.0.0.1:50052"
# Browser origins besides the daemon's own pages (``edge/http/cors.py``): none by default, so a
# page of another local server cannot drive the daemon through the browser.
DEFAULT_CORS_ORIGINS: tuple[str, ...] = ()
GRPC_EXPORTER = "opentelemetry.exporter.otlp.proto.grpc"  # the foundry[otel-grpc] extra


MIN_HTTP_BODY_TIMEOUT = 0.1  # seconds ([http] and [daemon] body_timeout)


@dataclass(frozen=True)
class EngineConfig:
    max_chain_depth: int = 32
    max_chain_events: int = 10_000
    recent_workflows: int = 1_000
    # JSON bytes of a payload a block emits, at most: a 6 MB emission ended every default gRPC
    # client's Watch with RESOURCE_EXHAUSTED. 4 MiB (their limit) less room for the rest of a
    # WatchResponse (ids, type, project, times: a few hundred bytes).
    max_event_bytes: int = 4 * 1024 * 1024 - 64 * 1024


@dataclass(frozen=True)
class StoreConfig:
    max_batch_rows: int = 5_000
    # Days finished workflows and runs stay in the live tables before they move to the Parquet
    # archive ($FOUNDRY_HOME/archive); 0 keeps everything. Checked at start and every
    # retention_interval seconds.
    retain_days: float = 0.0
    retention_interval: int = 3_600
    # DuckDB's memory for queries, its cache of the database file's blocks included (else 80% of
    # RAM). The cache alone stays small: once it passes 8 MB and no query runs, the store reopens
    # the database to let it go (store/actor.py, CACHE_BYTES). Sorts and joins that need more
    # spill to the temporary directory; some aggregates cannot (a saved question over 1M rows
    # needs ~100 MB), so the limit stays well above the cache.
    memory_limit: str = "256MB"
    # Seconds a journaled write may wait before it is applied to DuckDB when no query asks for
    # it (queries always see every acknowledged write); larger batches cost less per row.
    materialize_delay: float = 0.2
    # Bytes after which the journal starts a new segment ($FOUNDRY_HOME/journal).
    journal_segment_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True)
class TapConfig:
    subscriber_buffer: int = 10_000  # more than one group commit publishes at once


@dataclass(frozen=True)
class SchedulerConfig:
    max_concurrent_steps: int = 16
    recent_runs: int = 1_000
    recent_run_bytes: int = 128 * 1024 * 1024  # JSON bytes of the outputs of the runs kept
    # JSON bytes of a step's resolved inputs and of its output; of all a run's step outputs
    max_step_bytes: int = MAX_STEP_BYTES
    max_run_bytes: int = MAX_RUN_BYTES


@dataclass(frozen=True)
class LlmConfig:
    provider: str = "mock"  # for models given without a "provider:" prefix
    model: str = "mock-small"  # for steps that name no model
    base_url: str = ""  # OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 120.0
    price_per_1k_input: float = 0.0005
    price_per_1k_output: float = 0.0015


# The largest number a setting takes (seconds, days, tolerances, prices): nan passed every
# comparison (shutdown_grace = nan failed the stop with a traceback), and retain_days = 1e30
# overflowed a date at every retention pass.
MAX_NUMBER = 1e6
# An integer setting's largest (2**53: every count, size and interval is far below; 10**26
# passed, and a limit no value reaches is no limit).
MAX_INTEGER = 2**53


def _past(value: object) -> str:
    """What the refusal of a whole number past ``MAX_INTEGER`` adds: the largest."""
    return " (at most 2**53)" if type(value) is int and value > MAX_INTEGER else ""


MAX_MESSAGE = 2**31 - 1  # [daemon] max_message_bytes: gRPC's largest message
MAX_RETAIN_DAYS = 36_500  # a century


MAX_CONFIG_BYTES = 16 * 1024 * 1024


def _config_text(path: Path) -> str:
    """A config file's text: a regular file (a FIFO would block the start), UTF-8, at most
    ``MAX_CONFIG_BYTES``; ConfigError naming what it is not."""
    if not stat.S_ISREG(path.stat().st_mode):
        raise ConfigError(f"{path}: not a regular file")
    with path.open("rb") as file:
        data = file.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
    try:  # (a byte-order mark, as Notepad's "UTF-8 with BOM" writes: "Invalid statement")
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None


@dataclass(frozen=True)
class HttpConfig:
    """Outbound HTTP from steps (the egress policy, kernel/egress.py), and the daemon's HTTP
    listener (Connect, gRPC-Web, WebSocket: README.md, "Calling the daemon over HTTP")."""

    # URL prefixes, hosts or CIDRs reachable although not public (loopback, private, …)
    allow: tuple[str, ...] = ()
    listen: str = DEFAULT_HTTP_LISTEN  # HOST:PORT (port 0 = any), or "off"
    # Browser origins allowed to call (CORS) and open streams: "*", or scheme://host[:port|:*]
    cors_origins: tuple[str, ...] = DEFAULT_CORS_ORIGINS
    # Seconds a request's body may take to arrive, from its headers: a body trickled a byte at a
    # time held its connection for good, and a thousand of them the whole listener.
    body_timeout: float = 60.0


@dataclass(frozen=True)
class ReplayConfig:
    """Drift tolerances (see kernel/drift.py)."""

    token_tolerance: float = 0.0
    cost_tolerance: float = 0.0
    output_similarity: float = 1.0


@dataclass(frozen=True)
class AttestConfig:
    """Signed attestations (README.md, "Attestations")."""

    enabled: bool = True  # attest steps, runs, tools, artifacts, capability tokens, governance


@dataclass(frozen=True)
class AnalyticsConfig:
    """Analysts' SQL through the daemon (README.md, "SQL")."""

    query_timeout: float = 10.0  # seconds a query may run before it is interrupted
    max_rows: int = 10_000  # rows a query returns at most (the reply says truncated)
    max_reply_bytes: int = 4 * 1024 * 1024  # JSON text of a reply's rows, at most (as max_rows)


@dataclass(frozen=True)
class EvalsConfig:
    """Eval results (README.md, "Eval packs")."""

    assertion_timeout: float = 30.0  # seconds judging a run may take (a plugin's assertions)


OTEL_PROTOCOLS = ("http/protobuf", "grpc")


@dataclass(frozen=True)
class OtelConfig:
    """OpenTelemetry export of workflows, block executions, runs and step attempts as spans
    (README.md, "OpenTelemetry export"). Off while ``endpoint`` is empty."""

    endpoint: str = ""  # the collector's base URL, e.g. http://127.0.0.1:4318
    protocol: str = "http/protobuf"  # or "grpc" (the foundry[otel-grpc] extra)
    service_name: str = "foundry"
    queue_size: int = 4_096  # spans waiting for export; more are dropped and counted
    timeout: float = 5.0  # seconds an export may take, retries included


@dataclass(frozen=True)
class Config:
    source: str = "<defaults>"
    listen: str = DEFAULT_LISTEN
    home: Path = field(default_factory=lambda: default_home())
    shutdown_grace: float = 10.0
    max_message_bytes: int = 4 * 1024 * 1024  # as gRPC's default
    max_connections: int = 1_024  # per listener (edge/connections.py)
    body_timeout: float = 60.0  # seconds a gRPC request's message may take to arrive
    # Auth and TLS on both listeners (README.md, "Authentication and TLS"): the name of the
    # environment variable holding the bearer token ("" = no token), and a PEM cert/key pair.
    token_env: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    engine: EngineConfig = EngineConfig()
    store: StoreConfig = StoreConfig()
    tap: TapConfig = TapConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    llm: LlmConfig = LlmConfig()
    replay: ReplayConfig = ReplayConfig()
    http: HttpConfig = HttpConfig()
    analytics: AnalyticsConfig = AnalyticsConfig()
    attest: AttestConfig = AttestConfig()
    otel: OtelConfig = OtelConfig()
    evals: EvalsConfig = EvalsConfig()
    plugin_modules: tuple[str, ...] = ()
    # What set the home, the listen address and the HTTP one, as an error about them names it
    # ("" for listen: the file's key): a home set in the file was blamed on FOUNDRY_HOME, a
    # --listen flag on the file.
    home_from: str = "FOUNDRY_HOME"
    listen_from: str = ""
    http_listen_from: str = ""
    # [plugins] paths: folders (resolved against the config file's folder) put on sys.path
    # before the [plugins] modules are imported, so a module beside the config needs no PYTHONPATH.
    plugin_paths: tuple[Path, ...] = ()
    # [[blocks]] tables, validated by the factory of each block's ``type`` when blocks load.
    declared_blocks: tuple[Mapping[str, Any], ...] = ()
    # The [gate] table as written (validated by GatePolicy.from_mapping when loaded; the rules
    # it names are checked once the plugin rules are known, see blocks.registry).
    gate: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def gate_policy(self) -> GatePolicy:
        """The change-gate policy of the ``[gate]`` table."""
        return GatePolicy.from_mapping(self.gate)

    @classmethod
    def load(cls, path: str | None) -> Config:
        """``--config PATH``, else ``./foundry.toml`` if present, else built-in defaults."""
        if path == "":  # (Path("") is the working directory: ".: not a regular file")
            raise ConfigError("--config: expected a path, got an empty one")
        if path is not None:
            return cls.from_toml(Path(path))
        if Path("foundry.toml").is_file():
            return cls.from_toml(Path("foundry.toml"))
        return cls()

    @classmethod
    def from_toml(cls, path: Path) -> Config:
        try:
            data = tomllib.loads(_config_text(path))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        except RecursionError:  # tomllib recurses per level of arrays and inline tables
            raise ConfigError(f"{path}: not valid TOML: nested too deeply") from None
        return cls.from_mapping(data, source=str(path), base=path.parent)

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], *, source: str = "<mapping>", base: Path | None = None
    ) -> Config:
        reader = _Reader(source)
        reader.only(data, "", {*SECTIONS, "daemon", "plugins", "blocks", "gate"})
        daemon = reader.table(data, "daemon", DAEMON_KEYS)
        plugins = reader.table(data, "plugins", {"modules", "paths"})
        home_value = daemon.get("home")
        home = default_home()
        if home_value is not None:
            home = expanded(reader.string(daemon, "daemon", "home"), f"{source}: [daemon].home")
            if not home.is_absolute() and base is not None:
                home = base / home
        # Absolute once, here: a relative one reached a block's FOUNDRY_ARTIFACT_DIR as it was,
        # which a command with a `cwd` of its own found nowhere.
        home = Path(os.path.abspath(home))
        listen = daemon.get("listen", DEFAULT_LISTEN)
        if listen != DEFAULT_LISTEN:
            listen = reader.string(daemon, "daemon", "listen")
            parse_listen(listen, key=f"{source}: [daemon].listen")
        body_timeout = reader.positive(daemon, "daemon", "body_timeout", 60.0)
        if body_timeout < MIN_HTTP_BODY_TIMEOUT:  # (1e-9 s: most calls' messages came too late)
            raise reader.fail("[daemon].body_timeout",
                              f"expected seconds, at least {MIN_HTTP_BODY_TIMEOUT}")  # fmt: skip
        return cls(
            source=source,
            listen=listen,
            home=home,
            home_from=f"{source}: [daemon].home" if home_value is not None else _home_origin(),
            shutdown_grace=reader.positive(daemon, "daemon", "shutdown_grace", 10.0),
            max_message_bytes=reader.whole(
                daemon, "daemon", "max_message_bytes", 4 * 1024 * 1024, limit=MAX_MESSAGE
            ),
            max_connections=reader.whole(daemon, "daemon", "max_connections", 1_024),
            body_timeout=body_timeout,
            **reader.security(daemon, base),
            **{name: reader.section(data, name, kind) for name, kind in SECTIONS.items()},
            plugin_modules=tuple(reader.strings(plugins, "plugins", "modules")),
            plugin_paths=reader.folders(plugins, "plugins", "paths", base),
            declared_blocks=reader.blocks(data),
            gate=reader.gate(data),
        )


class SecurityKeys(TypedDict):
    token_env: str
    tls_cert: str
    tls_key: str


def _file_path(value: str, base: Path | None) -> str:
    """A path as written, relative to the config file's folder; "" stays ""."""
    if not value:
        return ""
    path = expanded(value, "a TLS file's path")
    return str(base / path if base is not None and not path.is_absolute() else path)


DAEMON_KEYS = {
    "listen", "home", "shutdown_grace", "max_message_bytes", "max_connections", "body_timeout",
    "token_env", "tls_cert", "tls_key",
}  # fmt: skip

SECTIONS: dict[str, type] = {
    "engine": EngineConfig,
    "store": StoreConfig,
    "tap": TapConfig,
    "scheduler": SchedulerConfig,
    "llm": LlmConfig,
    "replay": ReplayConfig,
    "http": HttpConfig,
    "analytics": AnalyticsConfig,
    "attest": AttestConfig,
    "otel": OtelConfig,
    "evals": EvalsConfig,
}


# A size as DuckDB reads it (ASCII digits: it refused "１０GB" at the daemon's start)
_MEMORY_SIZE = re.compile(r"\s*\d+(\.\d+)?\s*([KMGT]i?)?B\s*", re.IGNORECASE | re.ASCII)
MIN_MEMORY_BYTES = 16_000_000
MAX_MEMORY_BYTES = 2**64 - 1  # DuckDB's largest memory_limit


def default_home() -> Path:
    return expanded(os.environ.get("FOUNDRY_HOME") or "~/.foundry", "FOUNDRY_HOME")


def expanded(value: str, what: str) -> Path:
    """``value`` as a path, ``~`` and ``~user`` expanded; ConfigError naming ``what`` for a
    user with no home (``Path.expanduser`` raised RuntimeError: a traceback, every command) or
    an empty value (the working directory: ``export parquet "$UNSET"`` wrote its tables there)."""
    if not value:
        raise ConfigError(f"{what}: expected a path, got an empty one")
    try:
        return Path(value).expanduser()
    except RuntimeError:
        raise ConfigError(f"{what}: {value[:200]!r}: no such user's home to expand") from None


def _home_origin() -> str:
    """What set :func:`default_home`'s folder, as an error about it names it."""
    return "FOUNDRY_HOME" if os.environ.get("FOUNDRY_HOME") else "the default home"


# Float settings that must be more than 0, and ratios (at most 1), by their key.
_ABOVE_ZERO = frozenset(
    {"[llm].timeout", "[analytics].query_timeout", "[otel].timeout", "[evals].assertion_timeout"}
)
_FRACTIONS = frozenset({"[replay].output_similarity"})


def parse_listen(listen: str, *, key: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    # (isdigit() alone took "²", which int() refused with a traceback)
    if not sep or not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ConfigError(f"{key}: expected HOST:PORT, got {listen!r}")
    return host.strip("[]"), int(port)


def check_listener_ports(config: Config) -> None:
    """Refuse, naming both keys, ``[daemon].listen`` and ``[http].listen`` on one port of one
    address (``config check`` said OK; ``serve`` then failed on "Address already in use", the
    port its own). Each host is taken as the listener binds it: the first address it resolves
    to."""
    if config.http.listen == "off":
        return
    grpc_key = config.listen_from or f"{config.source}: [daemon].listen"
    http_key = config.http_listen_from or f"{config.source}: [http].listen"
    host, port = parse_listen(config.listen, key=grpc_key)
    http_host, http_port = parse_listen(config.http.listen, key=http_key)
    if not port or port != http_port:
        return
    bound, http_bound = _bound_address(host, port), _bound_address(http_host, port)
    clash = (host == http_host if bound is None or http_bound is None
             else _one_place(bound, http_bound))  # fmt: skip
    if clash:
        raise ConfigError(f"{http_key}: port {port} is the gRPC listener's too ({grpc_key}); "
                          "give each listener a port of its own")  # fmt: skip


def _bound_address(host: str, port: int) -> tuple[int, str] | None:
    """The family and address a listener on ``host`` binds (``edge.grpc.server.bind``'s first
    answer of getaddrinfo); None when it does not resolve (the bind then says why)."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError):
        return None
    return int(info[0][0]), str(info[0][4][0])


def _one_place(a: tuple[int, str], b: tuple[int, str]) -> bool:
    """Two bound addresses no port can serve both of: the same, IPv6's wildcard (dual-stack:
    IPv4's addresses too), or IPv4's wildcard and an IPv4 address."""
    if "::" in (a[1], b[1]):
        return True
    return a[0] == b[0] and (a[1] == b[1] or "0.0.0.0" in (a[1], b[1]))


class _Reader:
    """Typed reads from a parsed TOML document; each failure names the source and the key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, reason: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key}: {reason}")

    def only(self, table: Mapping[str, Any], where: str, allowed: set[str]) -> None:
        for key in table:
            if key not in allowed:
                name = f"[{where}].{key}" if where else key
                raise self.fail(
                    name, f"unknown key (expected one of: {', '.join(sorted(allowed))})"
                )

    def table(self, data: Mapping[str, Any], name: str, allowed: set[str]) -> Mapping[str, Any]:
        table = data.get(name, {})
        if not isinstance(table, Mapping):
            raise self.fail(f"[{name}]", "expected a table")
        self.only(table, name, allowed)
        return table

    def string(self, table: Mapping[str, Any], where: str, key: str) -> str:
        value = table[key]
        if not isinstance(value, str) or not value:
            raise self.fail(f"[{where}].{key}", f"expected a non-empty string, got {value!r}")
        if "\x00" in value:  # TOML's \u0000: a path with one was a traceback at start
            raise self.fail(f"[{where}].{key}", "must not hold a NUL character")
        return value

    def strings(self, table: Mapping[str, Any], where: str, key: str) -> list[str]:
        value = table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(f"[{where}].{key}", f"expected a list of strings, got {value!r}")
        return value

    def security(self, daemon: Mapping[str, Any], base: Path | None) -> SecurityKeys:
        """``token_env``, ``tls_cert`` and ``tls_key`` (paths relative to the file); the cert
        and key come together. The files themselves are checked when the daemon starts."""

        def text(key: str) -> str:
            value: str = self._scalar(f"[daemon].{key}", daemon.get(key, ""), str)
            if "\x00" in value:
                raise self.fail(f"[daemon].{key}", "must not hold a NUL character")
            return value

        cert, key = _file_path(text("tls_cert"), base), _file_path(text("tls_key"), base)
        if bool(cert) != bool(key):
            raise self.fail("[daemon].tls_cert", "tls_cert and tls_key go together: set both")
        return {"token_env": text("token_env"), "tls_cert": cert, "tls_key": key}

    def folders(
        self, table: Mapping[str, Any], where: str, key: str, base: Path | None
    ) -> tuple[Path, ...]:
        """A list of existing directories, each relative to ``base`` (the config's folder)."""
        found = []
        for index, value in enumerate(self.strings(table, where, key)):
            path = expanded(value, f"{self.source}: [{where}].{key}[{index}]")
            if base is not None and not path.is_absolute():
                path = base / path
            if not path.is_dir():
                raise self.fail(f"[{where}].{key}[{index}]", f"no such directory: {str(path)!r}")
            found.append(path.resolve())
        return tuple(found)

    def whole(
        self, table: Mapping[str, Any], where: str, key: str, default: int, *, limit: int = 0
    ) -> int:
        """A positive integer, at most ``limit`` (0: no limit). A fraction is refused: 0.5
        message bytes passed as a positive number and became 0, and every request was refused."""
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_INTEGER:
            raise self.fail(f"[{where}].{key}", f"expected a positive integer, got {value!r:.40}"
                            f"{_past(value)}")  # fmt: skip
        if limit and value > limit:
            raise self.fail(f"[{where}].{key}", f"expected at most {limit:,}, got {value!r}")
        return value

    def positive(
        self,
        table: Mapping[str, Any],
        where: str,
        key: str,
        default: float,
        *,
        limit: float = MAX_NUMBER,
    ) -> float:
        value = table.get(key, default)
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not 0 < value <= limit:  # nan fails too
            raise self.fail(
                f"[{where}].{key}", f"expected a number above 0, at most {limit:g}, got {value!r}"
            )
        return float(value)

    def _retain_days(self, value: Any) -> float:
        """Days from 0 (keep everything) to ``MAX_RETAIN_DAYS``: a cutoff before year 1
        overflowed at every retention pass. The message quotes the value as written."""
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not 0 <= value <= MAX_RETAIN_DAYS:  # (nan fails the comparison)
            raise self.fail(
                "[store].retain_days", f"expected days from 0 to {MAX_RETAIN_DAYS:,}, got {value!r}"
            )
        return float(value)

    def section(self, data: Mapping[str, Any], name: str, kind: type[Any]) -> Any:
        """A table of scalars typed like the dataclass defaults: integers positive, numbers
        non-negative, strings strings."""
        defaults = kind()
        table = self.table(data, name, set(defaults.__dataclass_fields__))
        values: dict[str, Any] = {}
        for key, value in table.items():
            default = getattr(defaults, key)
            if kind is StoreConfig and key == "retain_days":
                values[key] = self._retain_days(value)
                continue
            values[key] = self._scalar(f"[{name}].{key}", value, type(default))
        if kind is HttpConfig:
            self._allow_entries(values.get("allow", ()))
            self._http_listener(values)
        if kind is OtelConfig:
            self._otel(values)
        if kind is StoreConfig and "memory_limit" in values:
            self._memory_limit(values["memory_limit"])
        return kind(**values)

    def _memory_limit(self, text: str) -> None:
        """A size as DuckDB reads it, and one it takes: past 2**64 bytes it refused the setting
        at the daemon's start, in a traceback, where ``config check`` had said OK."""
        found = _MEMORY_SIZE.fullmatch(text)
        if not found:
            raise self.fail(
                "[store].memory_limit", f'expected a size such as "256MB" or "1GiB", got {text!r}'
            )
        unit = (found.group(2) or "").upper()
        size = Decimal(text.strip().split()[0].rstrip("KMGTIBkmgtib"))  # exact, not a float
        scale = (1024 if unit.endswith("I") else 1000) ** " KMGT".index(unit[:1] or " ")
        # (digits counted first: a million of them overflowed Decimal's multiplication)
        if size.adjusted() > 30 or size * scale > MAX_MEMORY_BYTES:
            largest = "at most 2**64 - 1 bytes (DuckDB's largest)"
            raise self.fail("[store].memory_limit", f"{largest}, got {text[:40]!r}")
        if size * scale < MIN_MEMORY_BYTES:  # 1MB: the store fell behind its journal for good;
            raise self.fail(  # 0B-100KB: DuckDB refused it, and ran with 80% of RAM instead
                "[store].memory_limit", f'at least "16MB" (DuckDB works in no less), got {text!r}'
            )

    def _scalar(self, key: str, value: Any, kind: type) -> Any:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if kind is bool and not isinstance(value, bool):
            raise self.fail(key, f"expected true or false, got {value!r}")
        if kind is int and (
            not number or not isinstance(value, int) or not 0 < value <= MAX_INTEGER
        ):
            raise self.fail(key, f"expected a positive integer, got {value!r:.40}{_past(value)}")
        if kind is float and (not number or not 0 <= value <= MAX_NUMBER):  # nan fails too
            raise self.fail(key, f"expected a number from 0 to {MAX_NUMBER:g}, got {value!r}")
        if kind is float and key in _ABOVE_ZERO and value == 0:  # every call would time out
            raise self.fail(key, f"expected seconds, more than 0, got {value!r}")
        if kind is float and key in _FRACTIONS and value > 1:  # 1 is "the same": always drift
            raise self.fail(key, f"expected a ratio from 0 to 1, got {value!r}")
        if kind is str and not isinstance(value, str):
            raise self.fail(key, f"expected a string, got {value!r}")
        if kind is tuple:
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise self.fail(key, f"expected a list of non-empty strings, got {value!r}")
            return tuple(value)
        return float(value) if kind is float else value

    def _http_listener(self, values: Mapping[str, Any]) -> None:
        from foundry.kernel.edge.http.cors import parse_origin_entry  # stdlib only

        if not values.get("body_timeout", 1.0) >= MIN_HTTP_BODY_TIMEOUT:
            # its watch of stalled sends wakes every half of it: 1 µs kept a core busy, idle
            raise self.fail("[http].body_timeout",
                            f"expected seconds, at least {MIN_HTTP_BODY_TIMEOUT}")  # fmt: skip
        listen = values.get("listen", DEFAULT_HTTP_LISTEN)
        if listen != "off":
            parse_listen(listen, key=f"{self.source}: [http].listen")
        for index, entry in enumerate(values.get("cors_origins", ())):
            try:
                parse_origin_entry(entry)
            except ValueError as exc:
                raise self.fail(f"[http].cors_origins[{index}]", f"{entry!r}: {exc}") from None

    def _allow_entries(self, entries: tuple[str, ...]) -> None:
        from foundry.kernel.blocks.egress import (
            parse_allow_entry,  # httpx is imported only when this is used
        )

        for index, entry in enumerate(entries):
            try:
                parse_allow_entry(entry)
            except ValueError as exc:
                raise self.fail(f"[http].allow[{index}]", f"{entry!r}: {exc}") from None

    def _otel(self, values: Mapping[str, Any]) -> None:
        """The [otel] table: a collector URL, a known protocol whose exporter is installed."""
        endpoint, protocol = values.get("endpoint", ""), values.get("protocol", OTEL_PROTOCOLS[0])
        if protocol not in OTEL_PROTOCOLS:
            raise self.fail(
                "[otel].protocol", f'expected "http/protobuf" or "grpc", got {protocol!r}'
            )
        if values.get("timeout", 1.0) <= 0:
            raise self.fail(
                "[otel].timeout", f"expected a positive number, got {values['timeout']!r}"
            )
        if not values.get("service_name", "x"):
            raise self.fail("[otel].service_name", "expected a non-empty string")
        if not endpoint:
            return
        try:
            url = urllib.parse.urlsplit(endpoint)
        except ValueError as exc:  # an unclosed "[" of an IPv6 host: a traceback in four commands
            raise self.fail("[otel].endpoint", f"not a valid URL: {exc}") from None
        # (credentials and a query first: the later errors quote the URL; an "@" anywhere,
        # as "user:secret@host:4318" without a scheme leaves urlsplit no user to find)
        if url.username is not None or url.password is not None or "@" in endpoint:
            raise self.fail(
                "[otel].endpoint", "no credentials in the URL: set OTEL_EXPORTER_OTLP_HEADERS"
            )
        if url.query or url.fragment:  # (not quoted: a query may hold a token)
            raise self.fail(
                "[otel].endpoint",
                "no query or fragment in the URL: set OTEL_EXPORTER_OTLP_HEADERS for a token",
            )
        if any(c.isspace() or not c.isprintable() for c in endpoint):  # "…:4318\n": every
            raise self.fail(  # span was lost, the host "contains invalid characters"
                "[otel].endpoint",
                f"no spaces or control characters in the URL, got {endpoint[:100]!r}",
            )
        try:
            url.port  # noqa: B018 (raises on a port out of range)
        except ValueError:
            url = url._replace(netloc="")
        if url.scheme not in ("http", "https") or not url.hostname:
            raise self.fail(
                "[otel].endpoint", f"expected an http:// or https:// URL, got {endpoint[:100]!r}"
            )
        if protocol == "grpc" and importlib.util.find_spec(GRPC_EXPORTER) is None:
            raise self.fail(
                "[otel].protocol",
                "grpc needs the OTLP/gRPC exporter: pip install 'foundry[otel-grpc]'",
            )

    def gate(self, data: Mapping[str, Any]) -> Mapping[str, Any]:
        """The [gate] table, validated as the change-gate policy (``[gate].key: reason``)."""
        table = data.get("gate", {})
        try:
            GatePolicy.from_mapping(table)
        except ConfigError as exc:
            raise ConfigError(f"{self.source}: {exc}") from None
        return MappingProxyType(dict(table))

    def blocks(self, data: Mapping[str, Any]) -> tuple[Mapping[str, Any], ...]:
        blocks = data.get("blocks", [])
        if not isinstance(blocks, list) or not all(isinstance(b, Mapping) for b in blocks):
            raise self.fail("[[blocks]]", "expected an array of tables")
        for index, table in enumerate(blocks):
            for key in ("name", "type"):
                if not isinstance(table.get(key), str) or not table.get(key):
                    raise self.fail(
                        f"[[blocks]] #{index + 1}.{key}", "a non-empty string is required"
                    )
        return tuple({**table, "__source__": self.source} for table in blocks)
