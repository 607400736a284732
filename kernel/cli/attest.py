"""``foundry attest …``: the daemon's public key, its attestations, checking and exporting them.

``verify`` checks an attestation's DSSE signature against the public key (``--pubkey FILE``, else
``$FOUNDRY_HOME/keys/attestor.pub``) and its key id, the in-toto statement's shape, for a run
attestation the run's hash chain (the run's step attestations, fetched by the ids the run events
announcing them name: ``step_completed``, ``attested``), and — where the subject is still stored
— that what is stored now digests to what was signed: a step's or tool call's output (GetRun), a
run's step outputs, an artifact file on this machine. A FILE holds one envelope (JSON) or
``attest export`` lines, each checked, and the chain of every run attestation among them; a FILE
needs no daemon. Exit 0 when everything holds, 1 with the reasons when not.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import betterproto2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from foundry.kernel.actors.attestor.keys import (
    PUBLIC_KEY,
    keys_dir,
    load_public_pem,
    public_raw,
)
from foundry.kernel.blocks.files import artifact_sha256
from foundry.kernel.cli.common import read_text_file
from foundry.kernel.cli.output import message_dict, reported, short_json, stamp
from foundry.kernel.config import default_home, expanded
from foundry.kernel.core.attest import (
    dsse_b64decode,
    key_id,
    verify_chain,
    verify_envelope,
)
from foundry.kernel.core.attest_records import (
    EVAL_RESULT,
    GATE_DECISION,
    announced,
    custom_attestation_id,
    json_digest,
)
from foundry.kernel.core.governance import HISTORY_LIMIT, MAX_GATE_LIMIT
from foundry.kernel.core.json_input import each_key_once
from foundry.kernel.core.numbers import restore_ints
from foundry.kernel.errors import ConfigError, FoundryError
from foundry.proto import runtime_api as api
from grpclib import GRPCError
from grpclib.const import Status

TERMINAL = {api.RunStatus.SUCCEEDED, api.RunStatus.FAILED, api.RunStatus.CANCELED}
PER_REQUEST = 1_000  # ids a GetAttestations takes (the attestor's MAX_IDS)
REUSE_HOPS = 64  # branches of branches followed back to the run that executed a step


def add_attest_commands(commands: Any) -> None:
    from foundry.kernel.cli.main import _client, _client_options

    attest = commands.add_parser("attest", help="signed attestations: key, get, verify, export")
    verbs = attest.add_subparsers(dest="verb", required=True, metavar="VERB")

    pubkey = verbs.add_parser("pubkey", help="the public key (PEM) and its key id (offline)")
    pubkey.add_argument("--home", help="FOUNDRY_HOME (default: $FOUNDRY_HOME, else ~/.foundry)")
    pubkey.add_argument("--json", action="store_true", help="machine-readable output")
    pubkey.set_defaults(handler=cmd_pubkey)

    get = verbs.add_parser("get", help="attestations by id")
    get.add_argument("attestation_ids", nargs="+", metavar="ID")
    _client_options(get)
    get.set_defaults(handler=_client(cmd_get))

    verify = verbs.add_parser("verify", help="check an attestation (id) or envelopes (file)")
    verify.add_argument("target", metavar="ID|FILE")
    default_key = "$FOUNDRY_HOME/keys/attestor.pub"
    verify.add_argument("--pubkey", help=f"public key PEM (default: {default_key})")
    _client_options(verify)
    verify.set_defaults(handler=_verify_handler(_client))

    export = verbs.add_parser("export", help="a finished run's envelopes as JSON lines")
    export.add_argument("run_id")
    _client_options(export)
    export.set_defaults(handler=_client(cmd_export))


# --- the key ------------------------------------------------------------------------------------


def _public_key(path: str | None) -> tuple[Ed25519PublicKey, str, str]:
    """(key, PEM, key id) from ``path`` or ``$FOUNDRY_HOME/keys/attestor.pub``."""
    file = Path(path) if path else keys_dir(default_home()) / PUBLIC_KEY
    try:
        pem = read_text_file(str(file))  # a FIFO blocked, /dev/zero filled the memory
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read the public key: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"{file}: cannot read the public key: {exc}") from None
    try:
        key = load_public_pem(pem)
    except ValueError as exc:
        raise ConfigError(f"{file}: not an Ed25519 public key PEM: {exc}") from None
    return key, pem, key_id(public_raw(key))


def cmd_pubkey(args: argparse.Namespace) -> int:
    home = expanded(args.home, "--home") if args.home is not None else default_home()
    _, pem, kid = _public_key(str(keys_dir(home) / PUBLIC_KEY))
    if args.json:
        print(json.dumps({"public_key_pem": pem, "key_id": kid}))
    else:
        print(pem, end="" if pem.endswith("\n") else "\n")
        print(f"key id: {kid}")
    return 0


def _verifier(key: Ed25519PublicKey) -> Callable[[bytes, bytes], bool]:
    def verify(signature: bytes, message: bytes) -> bool:
        try:
            key.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    return verify


# --- get and export -----------------------------------------------------------------------------


async def fetch(runtime: Any, ids: Sequence[str]) -> list[api.Attestation]:
    """The attestations ``ids`` name, in order, a request of at most ``PER_REQUEST`` at a time
    (GetAttestations' limit: a run of 1,000 steps has 1,001 attestations, and its export and
    verify failed with INVALID_ARGUMENT)."""
    found: list[api.Attestation] = []
    for start in range(0, len(ids), PER_REQUEST):
        part = list(ids[start : start + PER_REQUEST])
        reply = await runtime.get_attestations(api.GetAttestationsRequest(attestation_ids=part))
        found.extend(reply.attestations)
    return found


async def run_attestation_ids(runtime: Any, run_id: str) -> list[tuple[str, str, str]]:
    """(id, kind, step id) of a finished run's attestations, from the events announcing them
    (``core.attest_records.announced``), in order."""
    try:
        run = (await runtime.get_run(api.GetRunRequest(run_id=run_id))).run
    except GRPCError as exc:
        if exc.status is not Status.NOT_FOUND:
            raise
        raise FoundryError(
            f"no run {run_id} is stored (retention archives finished runs): its attestations "
            "are kept, in `foundry sql \"SELECT * FROM attestations WHERE run_id = '…'\"`"
        ) from None
    if run is None or run.status not in TERMINAL:
        status = run.status.name if run is not None else "unknown"
        raise FoundryError(f"run {run_id} is {status.lower()}: export a finished run")
    found = []
    async for event in runtime.tap_run(api.TapRunRequest(run_id=run_id)):
        if event.kind in ("attested", "step_completed") and event.payload is not None:
            announcement = announced(event.kind, event.payload.to_dict())
            if announcement is not None:
                found.append((str(announcement[0]), str(announcement[1]), event.step_id))
    return found


def _kind(a: api.Attestation) -> str:
    subject = a.subject
    if subject is None:
        return "?"
    name, _ = betterproto2.which_one_of(subject, "kind")
    return name or "?"


async def cmd_get(args: argparse.Namespace, stubs: Any) -> int:
    _, runtime = stubs
    found = await fetch(runtime, args.attestation_ids)
    if args.json:
        print(json.dumps([_as_dict(a) for a in found], indent=2))
        return 0
    for a in found:
        print(f"{a.attestation_id}  {_kind(a):<16} issued {stamp(a.issued_at)}")
        # (short_json shows a Struct's whole doubles as whole: 1, not 1.0, as the rest of the CLI)
        subject = a.subject.to_dict() if a.subject is not None else {}
        print(f"    subject       {short_json(subject, None)}")
        print(f"    artifact_hash {a.artifact_hash}")
        claims = a.claims.to_dict() if a.claims is not None else {}
        print(f"    claims        {short_json(claims, None, sort_keys=True)}")
    return 0


def _as_dict(a: api.Attestation) -> dict[str, Any]:
    data = message_dict(a)  # 64-bit integers as JSON numbers
    for key in ("subject", "claims"):  # a Struct's numbers are doubles: 1, not 1.0
        data[key] = restore_ints(data[key])
    data["envelope"] = json.loads(a.signature or "null")
    return data


async def cmd_export(args: argparse.Namespace, stubs: Any) -> int:
    _, runtime = stubs
    ids = [i for i, _, _ in await run_attestation_ids(runtime, args.run_id)]
    for a in await fetch(runtime, ids) if ids else []:
        print(a.signature)
    return 0


# --- verify -------------------------------------------------------------------------------------


def _verify_handler(client: Any) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        key, _, kid = _public_key(args.pubkey)
        verify = _verifier(key)
        target = Path(args.target)
        if _is_file(target):
            problems = verify_lines(_read_envelopes(target), verify, kid)
            return _report(args, problems, args.target)
        if _exists(target):  # a FIFO, a folder, a device: not taken for an attestation id
            raise ConfigError(f"{args.target}: not a regular file")
        if "/" in args.target or target.suffix in (".jsonl", ".json"):  # no id is spelled so
            raise ConfigError(f"{args.target}: no such file")

        async def by_id(_: argparse.Namespace, stubs: Any) -> int:
            problems = await verify_stored(stubs[1], args.target, verify, kid)
            return _report(args, problems, args.target)

        result: int = client(by_id)(args)
        return result

    return handler


def _is_file(path: Path) -> bool:
    """``path.is_file()``, False for what cannot be a path here (a long attestation id: a
    name over 255 bytes raised ENAMETOOLONG)."""
    try:
        return path.is_file()
    except OSError:
        return False


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:
        return False


# Reasons a verdict lists at most, and the characters of each: a file of a million malformed
# lines printed 84 MB of them.
MAX_REASONS = 1_000
REASON_CHARS = 1_000


def _report(args: argparse.Namespace, problems: list[str], target: str) -> int:
    code = reported(1 if problems else 0)
    shown = [p if len(p) <= REASON_CHARS else f"{p[:REASON_CHARS]}…"
             for p in problems[:MAX_REASONS]]  # fmt: skip
    if len(problems) > MAX_REASONS:
        shown.append(f"… and {len(problems) - MAX_REASONS:,} more")
    if args.json:
        print(json.dumps({"target": target, "valid": not problems, "problems": shown}))
    elif problems:
        print(f"INVALID {target}")
        for line in shown:
            print(f"  - {line}")
    else:
        print(f"valid {target}")
    return code


MAX_EXPORT_BYTES = 1 << 30  # an export of a run of ~400,000 steps
MAX_ENVELOPES = 1_500_000  # the smallest envelope is ~760 bytes: as many as such a file holds


def _read_envelopes(path: Path) -> list[str]:
    """The envelopes of a file: one JSON envelope, ``{"envelope": …}`` or a list of those (as
    ``attest get --json`` writes them), or JSON lines. Bytes that are not UTF-8 stay in,
    replaced: in a signed part they fail its checks by name, as anything malformed there does;
    in a field no signature covers they are ignored with it (noted). A duplicate key anywhere
    makes the file lines, each checked as ``verify_envelope`` checks one (a whole file read
    with the last of two "payload" keys verified the genuine one, while other readers took the
    first, forged)."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_EXPORT_BYTES + 1)
    except OSError as exc:  # (a link to /proc/self/mem: a regular file whose read fails)
        raise ConfigError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    if len(data) > MAX_EXPORT_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_EXPORT_BYTES} bytes")
    text = data.decode("utf-8", errors="replace")
    del data
    try:
        whole = json.loads(text, object_pairs_hook=each_key_once)
    except (ValueError, RecursionError):  # lines, or one of them too deep: checked by name
        whole = None
    if isinstance(whole, dict | list) and whole:
        if isinstance(whole, list) and len(whole) > MAX_ENVELOPES:
            raise ConfigError(f"{path}: more than {MAX_ENVELOPES:,} envelopes")
        found = [_unwrapped(item) for item in (whole if isinstance(whole, list) else [whole])]
        return [json.dumps(item) for item in found if item is not None]
    # line by line (splitlines' list of a gigabyte of newlines alone took 8 GB), and no more of
    # them than an export of a run that fits the size has (a million of one byte took minutes)
    lines: list[str] = []
    for line in io.StringIO(text, newline=None):  # \r, \n or both end a line
        if not line.isspace():
            if len(lines) == MAX_ENVELOPES:
                raise ConfigError(f"{path}: more than {MAX_ENVELOPES:,} lines of envelopes")
            lines.append(line.rstrip("\r\n"))
    return lines


def _unwrapped(item: Any) -> Any:
    """An envelope, from itself or from ``{"envelope": …}``."""
    if isinstance(item, dict) and "payload" not in item and isinstance(item.get("envelope"), dict):
        return item["envelope"]
    return item


def _statement(envelope: str) -> dict[str, Any]:
    """The statement an envelope carries, read as ``verify_envelope`` reads it (standard or
    URL-safe base64); {} when there is none to read."""
    return _read_envelope(envelope)[0]


_ENVELOPE_FIELDS = frozenset({"payloadType", "payload", "signatures"})
_SIGNATURE_FIELDS = frozenset({"keyid", "sig"})


def _read_envelope(envelope: str) -> tuple[dict[str, Any], list[str]]:
    """An envelope's statement (:func:`_statement`) and the fields in it no signature covers,
    which DSSE has a verifier ignore (an ``"approved_by"`` beside the payload is no claim)."""
    try:
        parsed = json.loads(envelope)
    except (ValueError, RecursionError):
        return {}, []
    if not isinstance(parsed, dict):
        return {}, []
    unsigned = [f"{k!r:.100}" for k in parsed if k not in _ENVELOPE_FIELDS]
    signatures = parsed.get("signatures")
    for n, sig in enumerate(signatures if isinstance(signatures, list) else []):
        if isinstance(sig, dict):
            unsigned += [f"signatures[{n}].{k!r:.100}" for k in sig if k not in _SIGNATURE_FIELDS]
    try:
        payload = dsse_b64decode(parsed.get("payload"))
        statement = json.loads(payload) if payload is not None else None
    except (ValueError, TypeError, RecursionError):
        statement = None
    return (statement if isinstance(statement, dict) else {}), unsigned


def _run_of(statement: dict[str, Any]) -> str | None:
    """The ``run_id`` of a statement's predicate (None when it has none that is text: a forged
    one may hold a list)."""
    predicate = statement.get("predicate")
    run_id = predicate.get("run_id") if isinstance(predicate, dict) else None
    return run_id if isinstance(run_id, str) else None


def verify_lines(
    envelopes: Sequence[str], verify: Callable[[bytes, bytes], bool], kid: str
) -> list[str]:
    """Each envelope's signature and shape; then the chain of each run attestation among them
    (its run's step attestations in the order given), and of each run whose step attestations
    are here without its run attestation, as far as they go."""
    if not envelopes:  # an export that failed writes nothing: nothing is not valid
        return ["no envelope in it: nothing to verify"]
    problems: list[str] = []
    kinds: list[str | None] = []
    for n, env in enumerate(envelopes, 1):
        result = verify_envelope(env, verify, kid)
        problems.extend(f"envelope {n}: {e}" for e in result.errors)
        kinds.append(result.kind)
    read = [_read_envelope(e) for e in envelopes]
    statements = [statement for statement, _ in read]
    _note_unsigned([unsigned for _, unsigned in read])
    steps_of: dict[str | None, list[str]] = {}  # each run's step attestations, in order, once
    for env, kind, statement in zip(envelopes, kinds, statements, strict=True):
        if kind == "step":
            steps_of.setdefault(_run_of(statement), []).append(env)
    for env, kind, statement in zip(envelopes, kinds, statements, strict=True):
        if kind != "run":
            continue
        run_id = _run_of(statement)
        steps = steps_of.get(run_id, [])
        predicate = statement.get("predicate")
        length = predicate.get("chain_length") if isinstance(predicate, dict) else None
        if not steps and type(length) is int and length > 0:
            # A run attestation alone (``attest get --json`` of it, its line of an export): as
            # step attestations without their run's, a note, not a verdict on a chain not given
            print(f"note: run {run_id}: none of its {length} step attestations is here: its "
                  "chain is not checked (`foundry attest export` writes them all)",
                  file=sys.stderr)  # fmt: skip
            continue
        problems.extend(f"chain of run {run_id}: {e}" for e in verify_chain(steps, env))
    closed = {_run_of(s) for s, k in zip(statements, kinds, strict=True) if k == "run"}
    for run_id, steps in steps_of.items():
        if run_id in closed or not isinstance(run_id, str):
            continue
        # No run attestation (a run not finished, or one taken out): its step attestations'
        # links still hold from the first, or a step attestation went missing among them.
        print(f"note: run {run_id} has no run attestation here: the links between its step "
              "attestations given are checked, not what came before or after them",
              file=sys.stderr)  # fmt: skip
        problems.extend(
            f"chain of run {run_id}: {e}" for e in verify_chain(steps, None, run_id=run_id)
        )
    return problems


def _note_unsigned(unsigned: Sequence[list[str]], shown: int = 10) -> None:
    """A note on stderr for the envelopes holding fields no signature covers (not invalid: DSSE
    says a verifier ignores them; not vouched for either)."""
    holding = [(n, fields) for n, fields in enumerate(unsigned, 1) if fields]
    for n, fields in holding[:shown]:
        print(f"note: envelope {n}: {', '.join(fields[:shown])}"
              f"{f' and {len(fields) - shown} more' if len(fields) > shown else ''}: not "
              "signed, ignored (as DSSE says)", file=sys.stderr)  # fmt: skip
    if len(holding) > shown:
        print(f"note: {len(holding) - shown} more envelopes hold fields that are not signed",
              file=sys.stderr)  # fmt: skip


async def verify_stored(
    runtime: Any, attestation_id: str, verify: Callable[[bytes, bytes], bool], kid: str
) -> list[str]:
    (found,) = await fetch(runtime, [attestation_id])
    env = found.signature or ""
    result = verify_envelope(env, verify, kid)
    problems = list(result.errors)
    if result.statement is None:
        return problems
    kind, claims = result.kind, result.statement.get("predicate", {})
    identity = await _identity_problems(runtime, found, kind, claims)
    if identity:  # another attestation's statement: its output or chain says nothing of this
        return problems + identity
    if kind == "run":
        problems += await _check_run(runtime, found, result.statement, verify, kid)
    elif kind in ("step", "tool"):
        problems += await _check_output(runtime, claims, kind)
    elif kind == "artifact":
        problems += _check_file(claims)
    elif kind == "custom":
        problems += await _check_record(runtime, claims)
    return problems


_OF_A_RUN = ("run", "step", "tool", "artifact", "capability_token")  # ids att_<run>_<seq>


async def _identity_problems(
    runtime: Any, found: api.Attestation, kind: str | None, claims: Any
) -> list[str]:
    """What the signed statement says it is of, against what the attestation is stored as: its
    id (``att_<run id>_<seq>`` for a run's; an id of before, a hash, must be one the run
    announced) and its subject. A statement signed for one run, copied into another run's row,
    verified as valid."""
    if not isinstance(claims, dict) or kind is None:
        return []
    problems: list[str] = []
    run_id, stored = claims.get("run_id"), found.attestation_id
    if kind in _OF_A_RUN and isinstance(run_id, str) and not await _names(runtime, run_id, stored):
        problems.append(f"its signed statement is of run {run_id}, which its id {stored} "
                        "does not name: another attestation's statement")  # fmt: skip
    subject = found.subject.step if found.subject is not None else None
    if kind == "step" and subject is not None and claims.get("step_id") != subject.step_id:
        problems.append(f"its signed statement is of step {claims.get('step_id')}, but it is "
                        f"stored as the attestation of step {subject.step_id}")  # fmt: skip
    stored_kind = _kind(found)
    if stored_kind != "?" and stored_kind != kind:
        problems.append(f"its signed statement is a {kind} attestation, but it is stored as a "
                        f"{stored_kind} one")  # fmt: skip
    if kind in _OF_A_STEP and isinstance(run_id, str):  # their subjects name no step
        problems += await _announcement_problems(runtime, run_id, stored, kind, claims)
    if kind == "custom":
        problems += _record_problems(stored, claims)
    return problems


_RECORD_IDS = {GATE_DECISION: "gate_id", EVAL_RESULT: "result_id"}  # a custom label's record id


def _record_problems(stored: str, predicate: dict[str, Any]) -> list[str]:
    """A gate decision's or an eval result's statement against the id it is stored under, the
    hash of its label and record id (``custom_attestation_id``): another decision's genuinely
    signed statement, copied into a DENY's row, verified as valid (a hunt)."""
    label, claims = predicate.get("label"), predicate.get("claims")
    if not isinstance(label, str) or label not in _RECORD_IDS or not isinstance(claims, dict):
        return []
    field = _RECORD_IDS[label]
    record_id = claims.get(field)
    if isinstance(record_id, str) and custom_attestation_id(label, record_id) == stored:
        return []
    return [f"its signed statement is of {label} {record_id}, whose attestation id is not "
            f"{stored}: another attestation's statement"]  # fmt: skip


# What a gate decision's and an eval result's attestation signed that its record as listed now
# must still say (a DENY edited to ALLOW in the database verified as valid).
_RECORD_FIELDS = {
    GATE_DECISION: ("change_id", "revision", "effect", "reasons"),
    EVAL_RESULT: ("scenario_id", "run_id", "commit", "outcome", "metrics"),
}


async def _check_record(runtime: Any, predicate: dict[str, Any]) -> list[str]:
    """A gate decision's or an eval result's signed claims against the record as the daemon
    lists it now (ListChangeGates, ListEvalScenarios' history): each signed field unchanged."""
    label, claims = predicate.get("label"), predicate.get("claims")
    if label not in _RECORD_FIELDS or not isinstance(claims, dict):
        return []
    record_id = claims.get(_RECORD_IDS[label])
    if label == GATE_DECISION:
        stored, listed_since = await _listed_gate(runtime, claims)
    else:
        stored, listed_since = await _listed_result(runtime, claims)
    if stored is None:
        signed_at = _instant(claims.get("decided_at" if label == GATE_DECISION else "executed_at"))
        if listed_since is None or signed_at is None or signed_at > listed_since:
            return [f"{label} {record_id} is not stored as it was signed: not listed any more"]
        print(f"note: {label} {record_id} is past what the daemon lists (the newest ones): what "
              "it stores now is not checked", file=sys.stderr)  # fmt: skip
        return []
    return [
        f"{label} {record_id}: the stored {field} is {short_json(stored[field])}, but its "
        f"attestation signed {short_json(claims.get(field))} — it was changed"
        for field in _RECORD_FIELDS[label]
        if _as_doubles(stored[field]) != _as_doubles(claims.get(field))
    ]


async def _listed_gate(runtime: Any, claims: dict[str, Any]) -> tuple[dict[str, Any] | None, Any]:
    """The decision as ListChangeGates lists it now; else None and since when the list holds
    every decision of its change (None: the list is whole — a change with fewer decisions than
    the limit can still be cut short by the reply's size, so the oldest listed says)."""
    request = api.ListChangeGatesRequest(change_id=str(claims.get("change_id", "")),
                                         limit=MAX_GATE_LIMIT)  # fmt: skip
    decisions = (await runtime.list_change_gates(request)).decisions
    for d in decisions:
        if d.gate_id == claims.get("gate_id"):
            effect = api.ChangeDecisionEffect(d.effect).name.lower()
            listed = {"change_id": d.change_id, "revision": d.revision, "effect": effect,
                      "reasons": list(d.reasons)}  # fmt: skip
            return listed, None
    return None, _oldest(d.decided_at for d in decisions)


async def _listed_result(runtime: Any, claims: dict[str, Any]) -> tuple[dict[str, Any] | None, Any]:
    """The eval result as ListEvalScenarios' history lists it now; else None and since when its
    scenario's history is listed whole (None: all of it, or no such scenario)."""
    scenarios = (await runtime.list_eval_scenarios(api.ListEvalScenariosRequest())).scenarios
    for scenario in scenarios:
        for r in scenario.history:
            if r.result_id == claims.get("result_id"):
                metrics = r.metrics.to_dict() if r.metrics is not None else {}
                listed = {"scenario_id": r.scenario_id, "run_id": r.run_id, "commit": r.commit,
                          "outcome": r.outcome, "metrics": metrics}  # fmt: skip
                return listed, None
    for scenario in scenarios:
        if scenario.scenario_id == claims.get("scenario_id"):
            if len(scenario.history) < HISTORY_LIMIT:
                return None, None
            return None, _oldest(r.executed_at for r in scenario.history)
    return None, None


def _oldest(moments: Any) -> datetime | None:
    found = [m for m in moments if m is not None]
    return min(found) if found else None


def _instant(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if isinstance(text, str) else None
    except ValueError:
        return None


def _as_doubles(value: Any) -> Any:
    """A JSON value with its numbers as doubles: a record listed through a protobuf Struct
    holds doubles, its signed claims the exact integers (a nanosecond count of 19 digits in a
    genuine result's metrics compared as changed)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, dict):
        return {k: _as_doubles(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_as_doubles(v) for v in value]
    return value


_OF_A_STEP = ("tool", "artifact", "capability_token")


async def _announcement_problems(
    runtime: Any, run_id: str, attestation_id: str, kind: str, claims: dict[str, Any]
) -> list[str]:
    """A tool call's, an artifact's or a capability token's statement against the run event
    that announced its attestation (the id's seq): its step, and an artifact's file. Another
    step's statement of the same kind, copied into the row, verified as valid."""
    event = await _announcing_event(runtime, run_id, attestation_id)
    if event is None:  # an id of before (no seq), or a run not stored any more
        return []
    if claims.get("step_id") != event.step_id:
        return [f"its signed statement is of step {claims.get('step_id')}, but it is stored as "
                f"the {kind} attestation of step {event.step_id}"]  # fmt: skip
    uri = event.payload.to_dict().get("uri") if event.payload is not None else None
    if kind == "artifact" and isinstance(uri, str) and Path(uri).as_uri() != claims.get("uri"):
        return [f"its signed statement is of file {claims.get('uri')}, but it is stored as the "
                f"attestation of {Path(uri).as_uri()}"]  # fmt: skip
    return []


async def _announcing_event(runtime: Any, run_id: str, attestation_id: str) -> Any:
    """The run event whose seq ``att_<run id>_<seq>`` names (TapRun sends them in seq order,
    a running run's too: read up to it); None without a seq, or for a run not stored."""
    rest = attestation_id.removeprefix(f"att_{run_id}_")
    if rest == attestation_id or not rest.isdigit():
        return None
    wanted = int(rest)
    try:
        async for event in runtime.tap_run(api.TapRunRequest(run_id=run_id)):
            seq = event.payload.to_dict().get("seq") if event.payload is not None else None
            if seq == wanted:
                return event
            if isinstance(seq, int | float) and seq > wanted:
                return None
    except GRPCError as exc:
        if exc.status is not Status.NOT_FOUND:
            raise
    return None


_HASHED_ID = re.compile(r"att_[0-9a-f]{24}")  # a run's attestation id of before bf0f4f7


async def _names(runtime: Any, run_id: str, attestation_id: str) -> bool:
    """Whether ``attestation_id`` is one of run ``run_id``'s: ``att_<run id>_<seq>``, or, for
    an id a daemon of before made (a hash of the run id and the seq), one the run announces."""
    rest = attestation_id.removeprefix(f"att_{run_id}_")
    if rest != attestation_id and rest.isdigit():
        return True
    if not _HASHED_ID.fullmatch(attestation_id):
        return False
    try:
        run = (await runtime.get_run(api.GetRunRequest(run_id=run_id))).run
    except GRPCError as exc:
        if exc.status is not Status.NOT_FOUND:
            raise
        return _hashed_from(run_id, attestation_id)  # archived by retention, or never stored
    return run is not None and attestation_id in run.attestation_ids


LEGACY_SEQS = 1_000_000  # run events a run of before bf0f4f7 had, at most, for this check


def _hashed_from(run_id: str, attestation_id: str) -> bool:
    """Whether ``attestation_id`` is the hash an older daemon made of ``run_id`` and one of its
    event seqs (``sha256("RUN_ID\\nSEQ")[:24]``): a run retention archived cannot say which
    ids it announced, and a statement copied from another run's row was let through."""
    digest = attestation_id.removeprefix("att_")
    for seq in range(1, LEGACY_SEQS + 1):
        if hashlib.sha256(f"{run_id}\n{seq}".encode()).hexdigest()[:24] == digest:
            return True
    return False


async def _stored_run(runtime: Any, run_id: str) -> Any | None:
    """The run as stored now (GetRun); None for a run not stored any more (retention archives
    finished runs), after a note on stderr saying what is not checked."""
    try:
        return (await runtime.get_run(api.GetRunRequest(run_id=run_id))).run
    except GRPCError as exc:
        if exc.status is not Status.NOT_FOUND:
            raise
        print(f"note: run {run_id} is not stored any more (retention archives finished runs): "
              "what it stores now is not checked, nor its chain", file=sys.stderr)  # fmt: skip
        return None


def _outputs_of(run: Any) -> dict[str, tuple[Any, int, str]]:
    """Each step's (output, attempt, status) as stored now."""
    return {
        s.step_id: (s.output.to_dict() if s.output is not None else None, s.attempt, s.status)
        for s in (run.steps if run is not None else [])
    }


async def _outputs(runtime: Any, run_id: str) -> dict[str, tuple[Any, int, str]] | None:
    """Each step's (output, attempt, status) as stored now; None for a run not stored any more."""
    run = await _stored_run(runtime, run_id)
    return None if run is None else _outputs_of(run)


async def _check_output(runtime: Any, claims: dict[str, Any], kind: str) -> list[str]:
    stored = await _outputs(runtime, claims["run_id"])
    return [] if stored is None else _output_problems(stored, claims, kind)


def _output_problems(
    outputs: dict[str, tuple[Any, int, str]], claims: dict[str, Any], kind: str
) -> list[str]:
    """What differs between a step's or tool call's attested output and the run's ``outputs``
    as stored now (``_outputs``)."""
    stored = outputs.get(claims["step_id"])
    if stored is None:
        return [f"step {claims['step_id']!r}: not in run {claims['run_id']} any more"]
    output, attempt, status = stored
    if kind == "step" and attempt != claims["attempt"]:
        return [
            f"step {claims['step_id']!r}: stored attempt {attempt}, attested {claims['attempt']}"
        ]
    if json_digest(output) != claims["output_hash"]:
        return [
            f"step {claims['step_id']!r}: the stored output digests to {json_digest(output)}, "
            f"but the {kind} attestation signed {claims['output_hash']} — it was changed"
        ]
    return []


async def _check_run(
    runtime: Any,
    found: api.Attestation,
    statement: dict[str, Any],
    verify: Callable[[bytes, bytes], bool],
    kid: str,
) -> list[str]:
    """A run attestation against the run as stored now: its chain of step attestations, each
    one's output, its claims (status, seed, spec, step count, parent), and the digest of its
    step outputs it signed (``outputs_hash``; not the unsigned ``artifact_hash`` column beside
    it: a forged output, with that column rewritten to match, verified)."""
    claims: dict[str, Any] = statement.get("predicate", {})
    run_id = claims["run_id"]
    run = await _stored_run(runtime, run_id)  # once: a GetRun a step made a 1,000-step run's
    if run is None:  # check take minutes
        return []
    stored = _outputs_of(run)
    listed = await run_attestation_ids(runtime, run_id)
    step_ids = [i for i, kind, _ in listed if kind == "step"]
    steps = await fetch(runtime, step_ids) if step_ids else []
    envelopes = [s.signature or "" for s in steps]
    problems = [
        f"chain: {e}"
        for e in verify_chain(envelopes, found.signature or "", verify=verify, expected_keyid=kid)
    ]
    for env in envelopes:
        step = _statement(env).get("predicate", {})
        if step:
            problems += _output_problems(stored, step, "step")
    problems += await _check_reused(runtime, run_id, stored, verify, kid)
    problems += _claim_problems(run, claims)
    outputs = {k: v[0] for k, v in stored.items() if v[2] in ("succeeded", "reused")}
    signed = claims.get("outputs_hash")
    if signed is None:  # an attestation made before the claim was: its artifact_hash is unsigned
        print(f"note: run {run_id}'s attestation signs no outputs_hash (made by a release before "
              "it did): its stored outputs are checked against its unsigned artifact_hash",
              file=sys.stderr)  # fmt: skip
        signed = found.artifact_hash or None
    if signed is not None and json_digest(outputs) != signed:
        problems.append(
            f"run {run_id}: its stored step outputs digest to {json_digest(outputs)}, "
            f"not the attested {signed}"
        )
    return problems


def _claim_problems(run: Any, claims: dict[str, Any]) -> list[str]:
    """What the run stores now that differs from what its run attestation signed."""
    spec = run.spec or api.RunSpec()
    stored = {
        "status": run.status.name,
        "seed": spec.seed,
        "step_count": len(run.steps),
        "parent_run_id": run.parent_run_id or None,
        "branch_step": run.branch_step or None,
    }
    # The spec hashed with the breakpoints it was submitted with (the run's own may have been
    # updated since); an attestation older than that claim has no spec check.
    if isinstance(claims.get("breakpoints"), list):
        stored["spec_hash"] = json_digest({
            "dag_json": spec.dag_json, "inputs": spec.inputs.to_dict() if spec.inputs else {},
            "seed": spec.seed, "labels": dict(spec.labels), "breakpoints": claims["breakpoints"],
        })  # fmt: skip
    return [
        f"run {run.run_id}: stored {key} {value!r}, attested {claims[key]!r}"
        for key, value in stored.items()
        if key in claims and value != claims[key]
    ]


async def _check_reused(
    runtime: Any,
    run_id: str,
    stored: dict[str, tuple[Any, int, str]],
    verify: Callable[[bytes, bytes], bool],
    kid: str,
) -> list[str]:
    """A branch's reused steps, each against the step attestation of the run that executed it
    (its parent's, or its parent's parent's: a branch reuses from the run it branched): a branch
    attests only what it ran, and a reused output changed in the database was covered by an
    unsigned column alone. One GetRun and one look at the attestations of each run on the way,
    whatever its state (a paused parent's steps are attested as they complete). A run no longer
    stored, or attested by nothing, leaves a note on stderr: not checked, not invalid."""
    reused = [step for step, (_, _, status) in stored.items() if status == "reused"]
    if not reused:
        return []
    runs = _Ancestry(runtime)
    problems: list[str] = []
    for step_id in reused:
        signed, source, why = await runs.executed_attestation(run_id, step_id)
        if signed is None:
            print(f"note: step {step_id!r} of run {run_id}: not checked ({why})", file=sys.stderr)
            continue
        checked = verify_envelope(signed.signature or "", verify, kid)
        if checked.errors or checked.statement is None:
            problems += [f"step {step_id!r} (reused from {source}): {e}" for e in checked.errors]
            continue
        claims = checked.statement.get("predicate", {})
        problems += [
            f"{p} (reused from run {source})" for p in _output_problems(stored, claims, "step")
        ]
    return problems


class _Ancestry:
    """The runs a branch descends from, each read once: its parent, its status of each step,
    and its step attestations by step."""

    def __init__(self, runtime: Any) -> None:
        self._runtime = runtime
        self._runs: dict[str, Any] = {}
        self._steps: dict[str, dict[str, api.Attestation]] = {}

    async def executed_attestation(
        self, run_id: str, step_id: str
    ) -> tuple[api.Attestation | None, str, str]:
        """(the step attestation of ``step_id`` by the run that executed it, that run, or why
        there is none)."""
        current = run_id
        for _ in range(REUSE_HOPS):
            run = await self._run(current)
            source = run.parent_run_id if run is not None else ""
            if not source:
                return None, "", f"run {current} has no parent to have reused it from"
            parent = await self._run(source)
            if parent is None:
                return None, source, f"run {source}, which it was reused from, is not stored"
            status = next((s.status for s in parent.steps if s.step_id == step_id), "")
            if status != "reused":
                found = (await self._attested_steps(source, parent)).get(step_id)
                why = "" if found is not None else f"run {source} has no attestation of it"
                return found, source, why
            current = source
        return None, current, f"more than {REUSE_HOPS} branches back"

    async def _run(self, run_id: str) -> Any:
        if run_id not in self._runs:
            try:
                reply = await self._runtime.get_run(api.GetRunRequest(run_id=run_id))
                self._runs[run_id] = reply.run
            except GRPCError as exc:
                if exc.status != Status.NOT_FOUND:
                    raise
                self._runs[run_id] = None  # archived by retention, say
        return self._runs[run_id]

    async def _attested_steps(self, run_id: str, run: Any) -> dict[str, api.Attestation]:
        if run_id not in self._steps:
            found = await fetch(self._runtime, list(run.attestation_ids))
            self._steps[run_id] = {
                str(_subject_step(a)): a for a in found if _kind(a) == "step"
            }  # the last attempt's: the one that completed the step
        return self._steps[run_id]


def _subject_step(a: api.Attestation) -> str:
    claims = a.claims.to_dict() if a.claims is not None else {}
    return str(claims.get("step_id", ""))


def _check_file(claims: dict[str, Any]) -> list[str]:
    uri = urlparse(str(claims.get("uri", "")))
    path = Path(unquote(uri.path))
    if uri.scheme != "file":
        return []  # not a file: the signature is all that can be checked
    if not os.path.lexists(path):  # (a deleted file said nothing, and "valid")
        print(f"note: artifact {path} is not stored any more: its signature is checked, not "
              "its content", file=sys.stderr)  # fmt: skip
        return []
    if not path.is_file():  # a folder or a FIFO in its place passed as valid
        return [f"artifact {path}: cannot be read as a regular file (not one)"]
    try:
        digest = artifact_sha256(path)
    except OSError as exc:
        return [f"artifact {path}: cannot be read as a regular file ({exc.strerror or exc})"]
    if digest != claims.get("sha256"):
        return [f"artifact {path}: its content digests to {digest}, not the attested one"]
    return []
