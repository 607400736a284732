"""The signing process itself (``signer.py`` starts it and says why): ``python -I THIS_FILE
KEY_FILE``. Run by its path, in isolated mode, it imports the standard library, ``cryptography``
(to read the key), PyNaCl (to sign) and three modules of ours — ``core/attest.py``,
``core/attest_records.py`` and ``drafting.py`` (standard library only), loaded under empty
``foundry.kernel`` packages, without the rest of ``foundry.kernel``: it starts in ~80 ms, where
importing ``foundry.kernel`` took ~300 ms of CPU.

It signs with libsodium's Ed25519 (PyNaCl) rather than OpenSSL's through ``cryptography``: Ed25519
is deterministic, so the signatures are the same bytes, for ~30% less CPU each (57 against 80 µs
measured here; ``cryptography`` pays for an OpenSSL context per signature).

It reads the private key from its file, refusing (exit 2, one line on stderr) a key others may
read or a folder others may write, as the daemon does at start. Then it writes the raw public
key (32 bytes) to stdout, and for each request on stdin — ``length`` (4 bytes, big-endian), then
that many bytes: ``drafting.dumps((heads, jobs, to_spool))`` — it drafts and signs the batch
(``drafting.draft_batch``, with its key's id), writes the rows to the daemon's spool file if
``to_spool`` names one (``(path, metas)``: ``drafting.spool``), and answers ``length`` and
``drafting.dumps((results, heads, spooled))``, or ``dumps(None)`` for a request it cannot read.
stdin's end ends it.
"""

from __future__ import annotations

import os
import signal
import stat
import struct
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl.bindings import crypto_sign, crypto_sign_seed_keypair

HEAD = struct.Struct(">I")


def load(key_file: Path) -> Ed25519PrivateKey:
    """The key, checked as the daemon checked it before it started this process (``keys.py``,
    ``read_key_file``): a regular file, owner-only, in a folder others may not write."""
    folder_mode = stat.S_IMODE(os.stat(Path(os.path.realpath(key_file)).parent).st_mode)
    fd = os.open(key_file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO: no wait
    with os.fdopen(fd, "rb") as file:
        status = os.fstat(file.fileno())
        mode = stat.S_IMODE(status.st_mode)
        if not stat.S_ISREG(status.st_mode) or folder_mode & 0o022 or mode & 0o077:
            raise SystemExit(
                f"{key_file}: not a regular owner-only file in a folder only its "
                f"owner writes (mode {mode:04o}, folder {folder_mode:04o})"
            )
        pem = file.read()
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise SystemExit(f"{key_file}: not an Ed25519 private key")
    return key


def signer(private: Ed25519PrivateKey) -> tuple[Callable[[bytes], bytes], bytes]:
    """libsodium's Ed25519 signature function of the key, and the raw public key (libsodium
    derives it from the seed, as OpenSSL does: a mismatch, never expected, signs with OpenSSL)."""
    raw = serialization.Encoding.Raw
    seed = private.private_bytes(raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    public = private.public_key().public_bytes(raw, serialization.PublicFormat.Raw)
    derived, secret = crypto_sign_seed_keypair(seed)
    if derived != public:  # pragma: no cover - both implement RFC 8032
        return private.sign, public
    return lambda message: crypto_sign(message, secret)[:64], public


def drafting() -> Any:
    """``foundry.kernel.actors.attestor.drafting``, imported under empty parent packages (their
    ``__init__`` not run: ``foundry.kernel``'s imports the whole plugin API)."""
    kernel = Path(__file__).resolve().parents[2]  # foundry.kernel's folder
    for name, path in (
        ("foundry", None),
        ("foundry.kernel", kernel),
        ("foundry.kernel.core", kernel / "core"),
        ("foundry.kernel.actors", kernel / "actors"),
        ("foundry.kernel.actors.attestor", kernel / "actors" / "attestor"),
    ):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [] if path is None else [str(path)]
            sys.modules[name] = package
    from foundry.kernel.actors.attestor import drafting as module

    return module


def spooled(
    spool: Callable[..., list[Any]], to_spool: Any, jobs: list[Any], results: list[Any], after: Any
) -> tuple[list[Any], Any, bool]:
    """The answer to a batch: its results (as ``drafting.spool`` left them, if the rows went
    to the daemon's spool file), its chain heads after, and whether they went. A spool file that
    cannot be written (a full disk; a batch it cannot spool) sends the rows back instead."""
    if to_spool is None:
        return results, after, False
    path, metas = to_spool
    try:
        return spool(path, metas, jobs, results), after, True
    except Exception as exc:
        print(f"foundry signer: could not write {path} ({exc}): the rows go back", file=sys.stderr)
        return results, after, False


def serve(key_file: Path) -> None:
    sign, public = signer(load(key_file))
    module = drafting()
    draft_batch, dumps, loads = module.draft_batch, module.dumps, module.loads
    from foundry.kernel.core.attest import key_id  # loaded with drafting's, under its packages

    keyid = key_id(public)
    read, write, flush = sys.stdin.buffer.read, sys.stdout.buffer.write, sys.stdout.buffer.flush
    write(public)
    flush()
    unpack = HEAD.unpack
    while len(head := read(4)) == 4:
        (length,) = unpack(head)
        request = read(length)
        if len(request) != length:
            raise EOFError  # the daemon died mid-frame
        try:
            heads, jobs, to_spool = loads(request)
        except Exception:  # never expected: the daemon drafts this batch itself
            answer = dumps(None)
        else:
            results, after = draft_batch(heads, jobs, sign, keyid)
            answer = dumps(spooled(module.spool, to_spool, jobs, results, after))
        write(HEAD.pack(len(answer)) + answer)
        flush()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon ends it by closing stdin
    try:
        serve(Path(sys.argv[1]))
    except SystemExit as refused:
        print(f"foundry signer: {refused}", file=sys.stderr)
        sys.exit(2)
    except (BrokenPipeError, EOFError):
        # The daemon died (kill -9) mid-frame or before reading our answer: nobody is left to
        # tell, and its log must not get a traceback. stdout goes nowhere, so the interpreter's
        # flush at exit cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
