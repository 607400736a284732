"""A tool: ``fn(args) -> JSON value``, called by the ``tool`` step type with ``inputs.args``."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from typing import Any


def slugify(args: Mapping[str, Any]) -> dict[str, str]:
    """``{"text": "Hello, World"}`` → ``{"slug": "hello-world"}``. A bad argument raises:
    the step attempt fails with the message (and is retried if the step allows it)."""
    text = args.get("text")
    if not isinstance(text, str):
        raise ValueError(f"args.text: expected a string, got {type(text).__name__}")
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return {"slug": re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")}
