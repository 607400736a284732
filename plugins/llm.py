"""The ``llm`` step type: one chat completion.

Inputs: ``prompt`` (a string) or ``messages`` (chat messages), optional ``temperature``. The model
is the step's ``model`` (else ``[llm].model``); a ``provider:`` prefix picks the provider
(``mock:small``, ``openai:gpt-4o-mini``), else ``[llm].provider``.

Providers: ``mock`` answers offline and deterministically from (messages, model, seed) — the
same spec and seed give the same output; ``openai`` calls any OpenAI-compatible
``/chat/completions`` endpoint at ``[llm].base_url`` with the key from ``[llm].api_key_env``,
under the egress policy (``[http] allow``; a local endpoint must be allowed there).
Usage (tokens in/out, cost at the configured prices) is recorded next to the output.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import trio
from foundry.kernel import (
    Block,
    BlockContext,
    BlockError,
    BlockKind,
    ConfigError,
    EgressPolicy,
    guarded_client,
    hookimpl,
    request_bounded,
)
from foundry.kernel.config import Config, LlmConfig

# An endpoint's answer is read up to this (a chat completion is kilobytes; a hostile or broken
# endpoint's gigabyte is refused as it comes, not held whole).
MAX_ANSWER_BYTES = 16 * 1024 * 1024

_WORDS = [
    "agent",
    "plan",
    "step",
    "tool",
    "result",
    "check",
    "retry",
    "answer",
    "context",
    "memory",
    "signal",
    "draft",
    "review",
    "summary",
    "detail",
    "source",
    "claim",
    "evidence",
    "next",
    "final",
    "note",
    "risk",
    "budget",
    "model",
    "token",
]


@dataclass(frozen=True)
class Completion:
    text: str
    tokens_in: int
    tokens_out: int
    finish_reason: str = "stop"


# (settings, egress policy, model, messages, seed, temperature, traceparent) -> completion;
# traceparent: the step attempt's W3C span, sent on by a provider that makes requests
Provider = Callable[
    [LlmConfig, EgressPolicy, str, list[dict[str, Any]], int, float, str], Awaitable[Completion]
]


async def mock_provider(
    settings: LlmConfig,
    egress: EgressPolicy,
    model: str,
    messages: list[dict[str, Any]],
    seed: int,
    temperature: float,
    traceparent: str = "",  # it makes no request
) -> Completion:
    material = json.dumps([model, seed, messages], sort_keys=True).encode()
    digest = hashlib.sha256(material).digest()
    words = [_WORDS[b % len(_WORDS)] for b in digest[: 8 + digest[0] % 16]]
    tokens_in = sum(len(str(m.get("content", "")).split()) for m in messages)
    return Completion(" ".join(words), tokens_in, len(words))


async def openai_provider(
    settings: LlmConfig,
    egress: EgressPolicy,
    model: str,
    messages: list[dict[str, Any]],
    seed: int,
    temperature: float,
    traceparent: str = "",
) -> Completion:
    if not settings.base_url:
        raise BlockError("[llm].base_url is not set: the openai provider needs an endpoint")
    headers = {"traceparent": traceparent} if traceparent else {}
    key = _api_key(settings.api_key_env)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    body = {"model": model, "messages": messages, "seed": seed, "temperature": temperature}
    url = settings.base_url.rstrip("/") + "/chat/completions"
    # the whole request within the timeout (httpx's bounds each read: an endpoint sending a
    # byte a second held the step for minutes)
    with trio.move_on_after(settings.timeout) as waited:
        async with guarded_client(egress, timeout=settings.timeout) as client:
            response, content = await request_bounded(
                client, "POST", url, MAX_ANSWER_BYTES, json=body, headers=headers
            )
    if waited.cancelled_caught:
        raise BlockError(f"the LLM endpoint took more than [llm] timeout ({settings.timeout:g} s)")
    if 300 <= response.status_code < 400:  # (its body was read as a completion)
        raise BlockError(f"LLM endpoint answered {response.status_code}: a redirect, which is "
                         "not followed (set [llm] base_url to where it leads)")  # fmt: skip
    if not 200 <= response.status_code < 300:
        text = _redacted(_answer_text(content), key)[:200]
        raise BlockError(f"LLM endpoint answered {response.status_code}: {text}")
    if "text/event-stream" in response.headers.get("content-type", ""):
        raise BlockError("the LLM endpoint streamed its answer (text/event-stream); a whole "
                         "chat completion was asked for")  # fmt: skip
    return completion_of(content, key)


def _answer_text(content: bytes) -> str:
    """An error answer's text for a message: its JSON re-encoded (escapes undone: a key quoted
    as ``sk-ab\\"cd`` or ``sk-ab\\/cd`` is found), else its bytes as text."""
    try:
        return json.dumps(json.loads(content), ensure_ascii=False)
    except (ValueError, RecursionError):
        return content.decode(errors="replace")


MIN_REDACTED = 8  # characters of a key redacted from error texts ("EMPTY", "ollama": not secrets)


def _redacted(text: str, key: str) -> str:
    """``text`` with the API key, as written or JSON-escaped, replaced: an endpoint's error may
    quote it ("Incorrect API key provided: …"), which went into the run's record. Only error
    texts: a completion is the model's, never rewritten."""
    if len(key) < MIN_REDACTED:
        return text
    escaped = json.dumps(key)[1:-1]
    # as written, JSON-escaped (``/`` too, as PHP writes it), and as Python's repr shows it
    forms = (key, escaped, escaped.replace("/", "\\/"), repr(key)[1:-1], repr(key.encode())[2:-1])
    for form in dict.fromkeys(forms):
        text = text.replace(form, "[the API key]")
    return text


_HEADER_TEXT = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no space


def _api_key(env: str) -> str:
    """The key ``[llm] api_key_env`` names, without the whitespace around it (a secret file's
    newline); a BlockError naming the variable, never quoting it, when the rest is no header
    text (httpx refused it, quoting the whole ``Authorization`` value into the step's error)."""
    key = os.environ.get(env, "").strip()
    if key and not _HEADER_TEXT.fullmatch(key):
        raise BlockError(f"${env}: the API key holds a character a header cannot carry (a "
                         "control character, a space or non-ASCII)")  # fmt: skip
    return key


def completion_of(content: bytes, key: str = "") -> Completion:
    """An OpenAI chat completion's text, token counts and finish reason, each checked: what an
    endpoint answers is not trusted (a negative token count left the run unattested; a missing
    ``choices`` failed the step with ``KeyError: 'choices'``). What an error quotes of it has
    the API ``key`` redacted before it is cut (cut first, a key at the cut kept all but its
    last character)."""
    try:
        data = json.loads(content)
        if isinstance(data, dict) and "choices" not in data and "error" in data:
            said = _error_text(data["error"], key)
            raise BlockError(f"the LLM endpoint answered an error: {said}")
        choice = data["choices"][0]
        text = choice["message"]["content"]
        usage = data.get("usage")
        if usage is None:  # not sent (some local servers): nothing counted
            usage = {"prompt_tokens": 0, "completion_tokens": 0}
        counts = [usage.get("prompt_tokens"), usage.get("completion_tokens")]
        reason = choice.get("finish_reason")
        reason = "stop" if reason is None else reason
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, RecursionError) as exc:
        raise BlockError(
            f"the LLM endpoint's answer is not a chat completion "
            f"({_redacted(repr(exc), key)[:100]})"
        ) from None
    if not isinstance(text, str) or not isinstance(reason, str):
        raise BlockError(
            "the LLM endpoint's answer: message.content and finish_reason must be text"
        )
    if not all(type(n) is int and 0 <= n <= MAX_TOKENS for n in counts):
        raise BlockError(f"the LLM endpoint's answer: usage token counts must be whole numbers "
                         f"from 0 to {MAX_TOKENS:,}, got "
                         f"{_redacted(repr(counts), key)[:100]}")  # fmt: skip
    return Completion(text=text, tokens_in=counts[0], tokens_out=counts[1], finish_reason=reason)


def _error_text(error: object, key: str) -> str:
    """An OpenAI error's message (``{"error": {"message": …}}``), else the error as JSON."""
    message = error.get("message") if isinstance(error, dict) else None
    text = message if isinstance(message, str) else json.dumps(error, default=str)
    return _redacted(text, key)[:200]


MAX_TOKENS = 2**53  # a token count, at most (JSON's exact integers)


PROVIDERS: dict[str, Provider] = {"mock": mock_provider, "openai": openai_provider}


class LlmBlock(Block):
    name = "llm"
    kind = BlockKind.OBSERVER
    timeout = 300.0
    description = "one chat completion (providers: mock, openai-compatible)"
    # It starts no process: a step's env is recorded context only, so any name not forbidden
    # outright may be set.
    allow_env = frozenset({"*"})

    def __init__(self, settings: LlmConfig, egress: EgressPolicy | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.egress = egress if egress is not None else EgressPolicy()

    async def run(self, ctx: BlockContext) -> dict[str, Any]:
        messages = _messages(ctx.inputs)
        provider_name, model = self._model(ctx.model or str(ctx.inputs.get("model", "")))
        provider = PROVIDERS.get(provider_name)
        if provider is None:
            raise BlockError(f"model: unknown provider {provider_name!r} (known: mock, openai)")
        temperature = ctx.inputs.get("temperature", 0.0)
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, int | float)
            or not (math.isfinite(temperature))
        ):  # ("hot" was "could not convert string to float")
            raise BlockError("inputs.temperature: expected a finite number")
        reply = await provider(
            self.settings, self.egress, model, messages, ctx.seed, temperature, ctx.traceparent
        )
        cost = (
            reply.tokens_in * self.settings.price_per_1k_input
            + reply.tokens_out * self.settings.price_per_1k_output
        ) / 1000
        ctx.record_usage(reply.tokens_in, reply.tokens_out, cost)
        ctx.summary = f"{provider_name}:{model} → {reply.tokens_out} tokens"
        return {
            "text": reply.text,
            "model": model,
            "provider": provider_name,
            "finish_reason": reply.finish_reason,
        }

    def model_refused(self, model: str) -> str:
        """A model whose provider is unknown, or the openai provider's with no endpoint set:
        refused when the step is submitted (or patched), not when it runs."""
        provider, _ = self._model(model)
        if provider not in PROVIDERS:
            known = ", ".join(sorted(PROVIDERS))
            return (f"unknown provider {provider[:40]!r} before its ':' (known: {known}; a name "
                    f"with a colon of its own is written PROVIDER:NAME, e.g. "
                    f"{self.settings.provider}:{model[:40]})")  # fmt: skip
        if provider == "openai" and not self.settings.base_url:
            return "the openai provider needs [llm].base_url, which is not set"
        return ""

    def _model(self, name: str) -> tuple[str, str]:
        name = name or self.settings.model
        provider, sep, model = name.partition(":")
        return (provider, model) if sep else (self.settings.provider, name)


def _messages(inputs: Mapping[str, Any]) -> list[dict[str, Any]]:
    if "messages" in inputs:  # (a string was "needs 'prompt' or 'messages'"; [] was sent)
        messages = inputs["messages"]
        if (
            not isinstance(messages, list)
            or not messages
            or not all(isinstance(m, Mapping) and isinstance(m.get("role"), str) for m in messages)
        ):
            raise BlockError("inputs.messages: expected a list of objects with a role")
        return [dict(m) for m in messages]
    if "prompt" in inputs:
        prompt = inputs["prompt"]  # (an object went as its Python repr: as its JSON now)
        text = prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False)
        return [{"role": "user", "content": text}]
    raise BlockError("inputs: an llm step needs 'prompt' or 'messages'")


@hookimpl
def register_blocks(config: Config) -> list[Block]:
    provider, model = config.llm.provider, config.llm.model
    known = ", ".join(sorted(PROVIDERS))
    if provider not in PROVIDERS:  # else `config check` passed it, and every llm step failed
        raise ConfigError(f"[llm].provider: unknown provider {provider!r} (known: {known})")
    prefix, named, _ = model.partition(":")  # as ``LlmBlock._model`` reads it
    if named and prefix not in PROVIDERS:  # (the same: every llm step naming no model failed)
        raise ConfigError(f"[llm].model: unknown provider {prefix[:40]!r} before its ':' "
                          f"(known: {known}; a name with a colon of its own is written "
                          f"PROVIDER:NAME, e.g. openai:{model[:40]})")  # fmt: skip
    if (prefix if named else provider) == "openai" and not config.llm.base_url:
        raise ConfigError("[llm].base_url: not set, and the default model is the openai "
                          "provider's: set its endpoint (…/v1)")  # fmt: skip
    return [LlmBlock(config.llm, EgressPolicy.from_allow(config.http.allow))]
