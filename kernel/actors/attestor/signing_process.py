"""The signing process itself (``signer.py`` starts it and says why): ``python -I THIS_FILE
KEY_FILE``. Run by its path, in isolated mode, it imports only the standard library and
``cryptography``: it starts in ~50 ms, where importing ``foundry.kernel`` took ~300 ms of CPU.

It reads the private key from its file, refusing (exit 2, one line on stderr) a key others may
read or a folder others may write, as the daemon does at start. Then it writes the raw public
key (32 bytes) to stdout, and for each request on stdin — ``count`` (4 bytes, big-endian), then
per message its ``length`` (4 bytes) and its bytes — the ``count`` Ed25519 signatures (64 bytes
each) of those messages, in order. stdin's end ends it.
"""

from __future__ import annotations

import os
import signal
import stat
import struct
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def load(key_file: Path) -> Ed25519PrivateKey:
    folder_mode = stat.S_IMODE(os.stat(key_file.parent).st_mode)
    mode = stat.S_IMODE(os.stat(key_file).st_mode)
    if folder_mode & 0o022 or mode & 0o077:
        raise SystemExit(f"{key_file}: mode {mode:04o} (folder {folder_mode:04o}) is too loose")
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise SystemExit(f"{key_file}: not an Ed25519 private key")
    return key


def serve(key_file: Path) -> None:
    private = load(key_file)
    sign = private.sign
    read, write, flush = sys.stdin.buffer.read, sys.stdout.buffer.write, sys.stdout.buffer.flush
    write(
        private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
    )
    flush()
    unpack = struct.Struct(">I").unpack
    while len(head := read(4)) == 4:
        (count,) = unpack(head)
        write(b"".join([sign(read(unpack(read(4))[0])) for _ in range(count)]))
        flush()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon ends it by closing stdin
    try:
        serve(Path(sys.argv[1]))
    except SystemExit as refused:
        print(f"foundry signer: {refused}", file=sys.stderr)
        sys.exit(2)
    except (BrokenPipeError, struct.error):
        # The daemon died (kill -9) mid-frame or before reading our answer: nobody is left to
        # tell, and its log must not get a traceback. stdout goes nowhere, so the interpreter's
        # flush at exit cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
