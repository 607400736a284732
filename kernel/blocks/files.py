"""Reading what a step left in its artifact folder: regular files only, never through a link
(standard library only: the CLI's ``attest verify`` uses it without the plugin API)."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path

ARTIFACT_READ = 1 << 20  # bytes read at once when an artifact is hashed
_NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)


def regular_file(path: str | Path) -> bool:
    """A regular file itself (``lstat``: not a link to one, nor a pipe or a device)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False  # gone meanwhile


def artifact_sha256(path: str | Path) -> str:
    """sha256 (hex) of the regular file at ``path``, read without following a link to it and
    without blocking on a pipe put in its place (OSError then), a piece at a time: what a
    command left in its artifact folder may have been swapped since it was listed."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | _NO_FOLLOW
    fd = os.open(path, flags)
    with open(fd, "rb") as file:  # closes fd, whatever happens
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        digest = hashlib.sha256()
        while chunk := file.read(ARTIFACT_READ):
            digest.update(chunk)
    return digest.hexdigest()
