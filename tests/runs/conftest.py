"""Fixtures of the FleetForge runs suite.

- ``fake_http`` (session): a local HTTP server on 127.0.0.1:0 that speaks the OpenAI
  ``/v1/chat/completions`` API (answers configurable per model, every request recorded) and serves
  plain JSON under ``/json/...`` for the ``http`` step.
- ``scripts`` (session): small shell programs the declared ``[[blocks]]`` run as step types.
- ``daemon_config_text`` (session) overrides the root one: every daemon of this suite
  (``shared_daemon`` for tests that key runs by their own ids, ``make_daemon`` for one that
  restarts or kills its daemon; both from ``tests/conftest.py``) gets the declared blocks, the
  fake endpoint as ``[llm] base_url`` and ``[http] allow`` for 127.0.0.1.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

# --- a fake OpenAI-compatible endpoint (and a plain JSON server) ---------------------------------


@dataclass
class FakeHttp:
    """What the fake server answers and what it was asked."""

    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    # model -> {"text": ..., "prompt_tokens": ..., "completion_tokens": ...}
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def chat_requests(self, model: str) -> list[dict[str, Any]]:
        with self.lock:
            return [
                r["body"]
                for r in self.requests
                if r["path"].endswith("/chat/completions") and r["body"].get("model") == model
            ]

    def answer(
        self,
        model: str,
        text: str,
        prompt_tokens: int = 7,
        completion_tokens: int = 5,
        document: Any = None,
        status: int = 200,
        content_type: str = "application/json",
    ) -> None:
        """What a chat completion for ``model`` answers; ``document``: that JSON instead (an
        endpoint that answers what a chat completion is not), with ``status`` and
        ``content_type``."""
        with self.lock:
            self.answers[model] = {
                "text": text,
                "status": status,
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "document": document,
                "content_type": content_type,
            }


DEEP_JSON = b"[" * 5_000 + b"]" * 5_000


def _handler(fake: FakeHttp) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

        def _reply(self, status: int, document: Any, kind: str = "application/json") -> None:
            # bytes: sent as they are (JSON Python's own json could not write, say)
            body = document if isinstance(document, bytes) else json.dumps(document).encode()
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _record(self) -> dict[str, Any]:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            entry = {
                "method": self.command,
                "path": self.path,
                "body": body,
                "headers": dict(self.headers),
            }
            with fake.lock:
                fake.requests.append(entry)
            return entry

        def do_GET(self) -> None:
            self._record()
            if self.path.startswith("/drip"):  # a byte a second: each read is quick
                self.send_response(200)
                self.send_header("Content-Length", "60")
                self.end_headers()
                for _ in range(60):
                    try:
                        self.wfile.write(b"x")
                        self.wfile.flush()
                    except OSError:  # the client gave up
                        return
                    time.sleep(1)
            elif self.path.startswith("/deep"):  # JSON nested 5,000 levels
                self._reply(200, DEEP_JSON)
            elif self.path.startswith("/status/"):
                self._reply(int(self.path.rsplit("/", 1)[1]), {"error": "as asked"})
            else:
                self._reply(200, {"hello": "world", "path": self.path})

        def do_POST(self) -> None:
            entry = self._record()
            if not self.path.endswith("/chat/completions"):
                self._reply(200, {"echo": entry["body"], "path": self.path})
                return
            body = entry["body"] if isinstance(entry["body"], dict) else {}
            with fake.lock:
                answer = fake.answers.get(body.get("model", ""))
            if answer is None:
                last = (body.get("messages") or [{}])[-1].get("content", "")
                answer = {"text": f"echo: {last}", "prompt_tokens": 3, "completion_tokens": 2}
            if answer.get("document") is not None:
                self._reply(answer["status"], answer["document"], answer["content_type"])
                return
            self._reply(
                200,
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "model": body.get("model"),
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": answer["text"]},
                        }
                    ],
                    "usage": {
                        "prompt_tokens": answer["prompt_tokens"],
                        "completion_tokens": answer["completion_tokens"],
                        "total_tokens": answer["prompt_tokens"] + answer["completion_tokens"],
                    },
                },
            )

    return Handler


@pytest.fixture(scope="session")
def fake_http() -> Iterator[FakeHttp]:
    fake = FakeHttp()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.daemon_threads = True
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# --- shell programs the declared blocks run ------------------------------------------------------

SCRIPTS = {
    # Sleeps $FOUNDRY_INPUT_SECONDS (default 0.5), then reports which step it was.
    "sleeper.sh": 'sleep "${FOUNDRY_INPUT_SECONDS:-0.5}"\n'
    'printf \'{"slept":"%s"}\\n\' "$FOUNDRY_STEP_ID"\n',
    # Counts its calls in $FOUNDRY_INPUT_COUNTER; fails until the count reaches
    # $FOUNDRY_INPUT_UNTIL.
    "flaky.sh": 'n=$(cat "$FOUNDRY_INPUT_COUNTER" 2>/dev/null || echo 0)\n'
    "n=$((n + 1))\n"
    'echo "$n" > "$FOUNDRY_INPUT_COUNTER"\n'
    'if [ "$n" -lt "$FOUNDRY_INPUT_UNTIL" ]; then echo "not yet ($n)"; exit 1; fi\n'
    'printf \'{"calls":%s}\\n\' "$n"\n',
    # Always fails.
    "fail.sh": 'echo "boom from $FOUNDRY_STEP_ID"\nexit 3\n',
    # A side effect: appends "RUN STEP" to $FOUNDRY_INPUT_LOG.
    "logger.sh": 'echo "$FOUNDRY_RUN_ID $FOUNDRY_STEP_ID" >> "$FOUNDRY_INPUT_LOG"\n'
    'printf \'{"logged":"%s","value":%s}\\n\' "$FOUNDRY_STEP_ID" '
    '"${FOUNDRY_INPUT_VALUE:-0}"\n',
    # Shows the step's env var TONE.
    "envecho.sh": 'printf \'{"tone":"%s"}\\n\' "$TONE"\n',
}


@pytest.fixture(scope="session")
def scripts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("scripts")
    for name, body in SCRIPTS.items():
        (folder / name).write_text("set -u\n" + body if name != "sleeper.sh" else body)
    return folder


def blocks_config(scripts: Path) -> str:
    """``[[blocks]]`` declaring each script as a step type of the same name (without .sh)."""
    kinds = {"logger": "mutator", "fail": "mutator", "flaky": "mutator"}
    tables = []
    for name in SCRIPTS:
        block = name.removesuffix(".sh")
        tables.append(
            f'[[blocks]]\nname = "{block}"\ntype = "shell"\n'
            f'kind = "{kinds.get(block, "observer")}"\n'
            f'command = ["sh", "{scripts / name}"]\ntimeout = 30\n'
            + ('allow_env = ["TONE"]\n' if block == "envecho" else "")
        )
    return "\n".join(tables)


def daemon_config(scripts: Path, fake: FakeHttp, extra: str = "") -> str:
    """The blocks, ``[llm] base_url`` at the fake endpoint, and ``[http] allow`` for
    127.0.0.1 (the egress policy refuses loopback otherwise), unless ``extra`` sets them."""
    if "[http]" not in extra:
        extra = f'{extra}\n[http]\nallow = ["127.0.0.1"]\n'
    return (
        f'{extra}\n[llm]\nbase_url = "{fake.url}/v1"\n\n{blocks_config(scripts)}'
        if "[llm]" not in extra
        else f"{extra}\n\n{blocks_config(scripts)}"
    )


@pytest.fixture(scope="session")
def daemon_config_text(scripts: Path, fake_http: FakeHttp) -> Callable[[str], str]:
    """Every daemon of this suite (``make_daemon``, ``shared_daemon``) gets :func:`daemon_config`:
    a test's config text goes before the declared blocks."""
    return lambda text: daemon_config(scripts, fake_http, text)
