"""The attestor's Ed25519 key pair under ``$FOUNDRY_HOME/keys/``.

Created on first start: the directory 0700, the private key ``attestor.key`` (PKCS#8 PEM) opened
with ``O_CREAT | O_EXCL`` and mode 0600 — never readable by anyone else, not even for an instant —
and the public key ``attestor.pub`` (SubjectPublicKeyInfo PEM). On every start the private key must
be a regular file, owner-only (no group/other bits) and owned by the daemon's user or root, and
the directory (and a linked key's real one) not writable by group or others and owned likewise;
otherwise the daemon refuses to start with one line naming the file (a ConfigError: exit 2).
The attestor's signing process (``signer.py``) reads the private key from its file itself, with
the same check: the key never leaves the file but for the processes that sign with it.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from foundry.kernel.errors import ConfigError

KEYS_DIR = "keys"
PRIVATE_KEY = "attestor.key"
PUBLIC_KEY = "attestor.pub"


@dataclass(frozen=True)
class KeyPair:
    private: Ed25519PrivateKey
    public: Ed25519PublicKey
    public_pem: str
    public_raw: bytes  # the 32 bytes the key id is computed over
    path: Path | None = None  # the private key's file (the signing process reads it there)


def keys_dir(home: Path) -> Path:
    return home / KEYS_DIR


def check_permissions(folder: Path) -> None:
    """Refuse a key folder others may write, or one owned by another user (ConfigError); the
    key file itself is checked as it is read (:func:`read_key_file`)."""
    _check_folder(folder)


def _check_folder(folder: Path) -> None:
    status = folder.stat()
    mode = stat.S_IMODE(status.st_mode)
    if mode & 0o022:
        raise ConfigError(
            f"{folder}: mode {mode:04o} lets others write the signing key's folder; "
            f"run chmod 700 {folder}"
        )
    if not _ours(status.st_uid):
        raise ConfigError(
            f"{folder}: owned by uid {status.st_uid}, not by this user ({os.geteuid()}) or root: "
            "its owner could replace the signing key"
        )


def _ours(uid: int) -> bool:
    return uid in (os.geteuid(), 0)


def read_key_file(key: Path) -> bytes:
    """The signing key file's bytes, once it is shown to be a regular file (a FIFO in its place
    held the start for good, with no word) owned by this user or root, owner-only (mode 0600 or
    narrower) — and, when it is a link, in a real folder that passes the folder's checks too
    (one to a 0600 file in a folder anyone may write passed)."""
    with _opened_without_waiting(key) as (file, status):
        if not stat.S_ISREG(status.st_mode):
            raise ConfigError(f"{key}: not a regular file; the signing key must be one")
        mode = stat.S_IMODE(status.st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"{key}: mode {mode:04o} is looser than 0600; the signing key must be owner-only "
                f"(run chmod 600 {key})"
            )
        if not _ours(status.st_uid):
            raise ConfigError(
                f"{key}: owned by uid {status.st_uid}, not by this user ({os.geteuid()}) or "
                "root: the signing key must be"
            )
        if key.is_symlink():
            _check_folder(Path(os.path.realpath(key)).parent)
        return file.read()


def load_or_create(home: Path) -> KeyPair:
    """The key pair of ``$FOUNDRY_HOME/keys/``, created on first start."""
    folder = keys_dir(home)
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{folder}: cannot be the keys folder: {exc.strerror}") from None
    try:
        return _load_or_create(folder)
    except OSError as exc:  # a folder it may not search or write (a home first used by root)
        where = exc.filename or folder
        raise ConfigError(f"{where}: the signing key cannot be used: {exc.strerror}") from None


def _load_or_create(folder: Path) -> KeyPair:
    check_permissions(folder)
    key_path = folder / PRIVATE_KEY
    if not key_path.exists():
        if (folder / PUBLIC_KEY).exists():
            # a new pair would overwrite the public key every earlier attestation verifies with
            raise ConfigError(
                f"{key_path}: missing, while {folder / PUBLIC_KEY} is there: the key that signed "
                "earlier attestations is gone. Restore it, or move the public key aside to "
                "start with a new pair (keep it to verify what the old key signed)"
            )
        _create(folder)
    pem = read_key_file(key_path)
    try:
        private = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, UnsupportedAlgorithm) as exc:  # (an EC key on a curve OpenSSL lacks)
        raise ConfigError(f"{key_path}: cannot load the signing key: {exc}") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise ConfigError(f"{key_path}: not an Ed25519 private key")
    public = private.public_key()
    public_text = public_pem(public)
    pub_path = folder / PUBLIC_KEY
    _refuse_another_key(pub_path, public_raw(public), key_path)
    if not pub_path.exists() or _regular_file_bytes(pub_path) != public_text.encode():
        _write_public(pub_path, public_text)  # (re)made from the private key: it cannot disagree
    return KeyPair(private, public, public_text, public_raw(public), key_path)


def _refuse_another_key(pub_path: Path, raw: bytes, key_path: Path) -> None:
    """ConfigError when ``pub_path`` holds another key than the signing key's: a signing key
    replaced in place (a copy from another home) silently overwrote the public key every
    earlier attestation verifies with. A rotation is explicit: move the old public key aside."""
    try:
        kept = public_raw(load_public_pem(_regular_file_bytes(pub_path)))
    except FileNotFoundError:
        return  # none: made from the signing key
    except (OSError, ValueError) as exc:
        # Overwritten from the signing key, a damaged file let any key in (the check above
        # needs the old public key); what was there is the owner's to look at, not ours to lose.
        reason = exc.strerror if isinstance(exc, OSError) else "not an Ed25519 public key in PEM"
        raise ConfigError(
            f"{pub_path}: cannot be read as the public key earlier attestations verify with "
            f"({reason}). Restore it, or move it aside to make it again from the signing key"
        ) from None
    if kept != raw:
        raise ConfigError(
            f"{key_path}: not the key of {pub_path} (it signed earlier attestations): the "
            "signing key was replaced. Restore it, or move the public key aside to rotate "
            "(keep it to verify what the old key signed)"
        )


def _regular_file_bytes(path: Path) -> bytes:
    """A regular file's bytes; OSError for anything else (a named pipe is not waited on)."""
    with _opened_without_waiting(path) as (file, status):
        if not stat.S_ISREG(status.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        return file.read()


@contextmanager
def _opened_without_waiting(path: Path) -> Iterator[tuple[BinaryIO, os.stat_result]]:
    """``path`` opened for reading, and what it is: opened non-blocking, so a named pipe in a
    key's place is seen for what it is (by the caller) instead of waited on for a writer."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as file:
        yield file, os.fstat(file.fileno())


def _create(folder: Path) -> None:
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = folder / PRIVATE_KEY
    # Written whole under another name, then linked into place: a full disk left an empty key
    # file, which every later start refused to load. 0o600 from the first byte (umask only
    # narrows); the link, as O_EXCL did, never replaces a key someone else made meanwhile.
    staged = folder / f"{PRIVATE_KEY}.new"
    staged.unlink(missing_ok=True)  # a start that failed before left it
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            _write_all(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(staged, path)
    finally:
        staged.unlink(missing_ok=True)
    _write_public(folder / PUBLIC_KEY, public_pem(private.public_key()))


def _write_public(path: Path, text: str) -> None:
    """The public key written whole under another name, then renamed into place: a daemon
    killed mid-write of the file itself left it empty, and every later start refused it as
    damaged (it cannot tell that from the key earlier attestations verify with)."""
    staged = path.with_name(f"{path.name}.new")
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_all(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(staged, path)


def _write_all(fd: int, data: bytes) -> None:
    """Every byte, or OSError (a write past a file size limit or quota is short, then fails:
    a short public key renamed into place was refused at every later start)."""
    written = 0
    while written < len(data):
        written += os.write(fd, data[written:])


def public_pem(public: Ed25519PublicKey) -> str:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def public_raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_public_pem(text: str | bytes) -> Ed25519PublicKey:
    """A public key from PEM (ValueError when it is not an Ed25519 one)."""
    data = text.encode() if isinstance(text, str) else text
    try:
        key = serialization.load_pem_public_key(data)
    except UnsupportedAlgorithm as exc:  # an EC key on a curve OpenSSL does not know
        raise ValueError(f"not an Ed25519 public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key
