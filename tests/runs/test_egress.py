"""The egress policy end to end: ``http`` steps (and the ``openai`` provider) of a real daemon
against HTTP servers of this test on 127.0.0.1. Every URL here is loopback: a refusal must come
before anything is sent, which the servers' request logs show."""

from __future__ import annotations

import gzip
import json
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from foundry.proto import runtime_api as api

from tests.helpers import rss_mb
from tests.runs.helpers import dag, run_and_wait, value

SECRET = "s3cret-token-value"


@dataclass
class Server:
    url: str = ""
    port: int = 0
    paths: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def seen(self) -> list[str]:
        with self.lock:
            return list(self.paths)


def _handler(server: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

        def do_GET(self) -> None:
            with server.lock:
                server.paths.append(self.path)
            parts = urllib.parse.urlsplit(self.path)
            if parts.path.endswith("/redirect"):
                self.send_response(302)
                self.send_header("Location", urllib.parse.parse_qs(parts.query)["to"][0])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if parts.path.endswith(("/gzip-bomb", "/gzip-json", "/gzip-twice")) or (
                parts.path.startswith(
                    ("/gzip-trailing", "/gzip-members", "/gzip-padded", "/gzip-empty")
                )
            ):
                plain = (b"x" * (64 << 20) if not parts.path.endswith("json")
                         else json.dumps({"zipped": True}).encode())  # fmt: skip
                body = gzip.compress(plain, compresslevel=9)
                coding = parts.query or "gzip"  # ?gzip,%20identity: the header as it comes
                if parts.path.endswith("twice"):  # 64 MB in ~400 bytes
                    body, coding = gzip.compress(body, compresslevel=9), "gzip, gzip"
                if parts.path.endswith("json") and "trailing" in parts.path:  # then 20 MB
                    body += bytes(20 << 20)
                if parts.path.endswith("json") and "members" in parts.path:  # two: {..}{..}
                    body += gzip.compress(b" ")
                if parts.path.endswith("json") and "padded" in parts.path:  # zeros: padding
                    body += bytes(512)
                if parts.path.endswith("json") and "empty" in parts.path:  # 5 MB, nothing in
                    body += gzip.compress(b"") * 250_000
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Encoding", urllib.parse.unquote(coding))
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            if parts.path.endswith("/heavy-redirect"):  # a hop whose body is 64 MB
                self.send_response(302)
                self.send_header("Location", urllib.parse.parse_qs(parts.query)["to"][0])
                self.send_header("Content-Length", str(64 << 20))
                self.end_headers()
                try:
                    for _ in range(64):
                        self.wfile.write(b"x" * (1 << 20))
                except OSError:  # the client went on without reading it: what it should do
                    pass
                return
            if parts.path.endswith("/huge"):  # 64 MB, sent as it is made
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(64 << 20))
                self.end_headers()
                try:
                    for _ in range(64):
                        self.wfile.write(b"x" * (1 << 20))
                except OSError:  # the client stopped reading: what it should do
                    pass
                return
            if parts.path.endswith("/typed"):  # ?type=<content type>&hex=<the body's bytes>
                asked = urllib.parse.parse_qs(parts.query)
                body = bytes.fromhex(asked["hex"][0])
                self.send_response(200)
                self.send_header("Content-Type", asked["type"][0])
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            body = json.dumps({"served": parts.path}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[Server, Server]]:
    """Two servers on 127.0.0.1: ``near`` (the allowed one) and ``far``."""
    made, threads = [], []
    for _ in range(2):
        server = Server()
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(server))
        httpd.daemon_threads = True
        server.port = httpd.server_address[1]
        server.url = f"http://127.0.0.1:{server.port}"
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        made.append((server, httpd))
        threads.append(thread)
    try:
        yield made[0][0], made[1][0]
    finally:
        for (_, httpd), thread in zip(made, threads, strict=True):
            httpd.shutdown()
            httpd.server_close()
            thread.join(5)


@pytest.fixture(scope="module")
def denying(shared_daemon):
    return shared_daemon("[http]\nallow = []\n")


@pytest.fixture(scope="module")
def allowing(shared_daemon):
    return shared_daemon('[http]\nallow = ["127.0.0.1"]\n')


@pytest.fixture(scope="module")
def prefixed(shared_daemon, servers):
    near, _ = servers
    return shared_daemon(f'[http]\nallow = ["{near.url}/ok", "localhost"]\n')


def fetch(daemon, url: str, **inputs: Any) -> api.RunDetail:
    return run_and_wait(
        daemon, dag({"id": "fetch", "type": "http", "inputs": {"url": url, **inputs}})
    )


def error(run: api.RunDetail) -> str:
    assert run.status == api.RunStatus.FAILED, run.status
    return str(value(run.steps[0].error)["message"])


def test_loopback_is_refused_by_default_before_anything_is_sent(denying, servers, fake_http):
    near, _ = servers
    before = near.seen()
    message = error(fetch(denying, f"{near.url}/json?token={SECRET}"))
    assert "egress to 127.0.0.1 refused: loopback address (allow it with [http] allow)" in message
    assert SECRET not in message
    assert near.seen() == before  # refused before connecting

    llm = run_and_wait(
        denying,
        dag(
            {"id": "ask", "type": "llm", "model": "openai:egress-model", "inputs": {"prompt": "hi"}}
        ),
    )
    assert "egress to 127.0.0.1 refused: loopback address" in error(llm)
    assert fake_http.chat_requests("egress-model") == []
    assert SECRET not in denying.stderr()


def test_an_allowed_address_is_reached_and_its_url_not_logged(allowing, servers):
    near, _ = servers
    run = fetch(allowing, f"{near.url}/json?token={SECRET}")
    assert run.status == api.RunStatus.SUCCEEDED, value(run.steps[0].error)
    assert value(run.steps[0].output)["body"] == {"served": "/json"}
    assert f"/json?token={SECRET}" in near.seen()
    log = allowing.stderr()
    # httpx's line per request is kept at debug level only (a webhook's token is in its path)
    assert f"{near.url}/json" not in log
    assert SECRET not in log


def test_a_scheme_in_capitals_is_the_same_url_and_the_same_check(denying, allowing, servers):
    # "HTTP://…" was refused as not an http URL (a scheme is case-insensitive, RFC 3986)
    near, _ = servers
    shouted = "HTTP://" + near.url.removeprefix("http://")
    run = fetch(allowing, f"{shouted}/json")
    assert run.status == api.RunStatus.SUCCEEDED, value(run.steps[0].error)
    assert value(run.steps[0].output)["body"] == {"served": "/json"}
    assert "egress to 127.0.0.1 refused: loopback" in error(fetch(denying, f"{shouted}/json"))


def test_a_hostname_resolving_to_loopback_is_refused_unless_allowed(denying, prefixed, servers):
    near, _ = servers
    before = near.seen()
    message = error(fetch(denying, f"http://localhost:{near.port}/json"))
    assert "egress to localhost refused: it resolves to " in message
    assert "a loopback address" in message
    assert near.seen() == before

    run = fetch(prefixed, f"http://localhost:{near.port}/by-name")  # [http] allow has localhost
    assert run.status == api.RunStatus.SUCCEEDED, value(run.steps[0].error)
    assert "/by-name" in near.seen()


def test_a_url_prefix_allows_only_its_paths(prefixed, servers):
    near, _ = servers
    run = fetch(prefixed, f"{near.url}/ok/inside")
    assert run.status == api.RunStatus.SUCCEEDED, value(run.steps[0].error)
    for outside in ["/outside", "/ok/../outside", "/oksuffix"]:
        assert "egress to 127.0.0.1 refused: loopback" in error(fetch(prefixed, near.url + outside))
    assert not any(p.startswith(("/outside", "/oksuffix")) for p in near.seen())


def test_each_redirect_hop_is_checked_again(prefixed, allowing, servers):
    near, far = servers
    to_far = f"{near.url}/ok/redirect?to={urllib.parse.quote(far.url + '/far-side')}"

    # Not followed unless asked: the 302 is the step's output.
    run = fetch(prefixed, to_far)
    assert run.status == api.RunStatus.SUCCEEDED, value(run.steps[0].error)
    assert value(run.steps[0].output)["status"] == 302

    # Followed: the hop to another (loopback, not allowed) origin is refused before connecting.
    message = error(fetch(prefixed, to_far, follow_redirects=True))
    assert "egress to 127.0.0.1 refused: loopback address" in message
    assert far.seen() == []

    # The same origin, out of the allowed prefix: refused too.
    back = f"{near.url}/ok/redirect?to={urllib.parse.quote(near.url + '/secret-admin')}"
    assert "refused: loopback" in error(fetch(prefixed, back, follow_redirects=True))
    assert "/secret-admin" not in near.seen()

    # Where both hops are allowed, the redirect is followed.
    run = fetch(allowing, to_far, follow_redirects=True)
    assert run.status == api.RunStatus.SUCCEEDED, value(run.steps[0].error)
    assert value(run.steps[0].output)["body"] == {"served": "/far-side"}
    assert far.seen() == ["/far-side"]


def test_an_answer_past_the_step_size_limit_is_refused_as_it_comes(allowing, servers):
    """An 800 MB answer was read whole into the daemon (RSS 129 → 2,284 MB) before the step's
    size check refused it. It is read up to ``[scheduler] max_step_bytes`` (4 MiB) now."""
    near, _ = servers
    before = rss_mb(allowing.process.pid)
    message = error(fetch(allowing, f"{near.url}/huge"))
    assert f"answered more than {4 << 20} bytes" in message
    assert rss_mb(allowing.process.pid) - before < 40


def test_a_header_value_with_a_line_break_is_refused_unquoted(allowing, servers):
    """httpx quoted the value it refused in its error: a bearer token in the step's error and
    the daemon's log."""
    near, _ = servers
    token = "header-token-" + "9" * 12
    headers = {"Authorization": f"Bearer {token}\r\nX-Injected: 1"}
    message = error(fetch(allowing, f"{near.url}/header-probe", headers=headers))
    assert "inputs.headers.Authorization" in message
    assert token not in message
    assert token not in allowing.stderr()
    assert "/header-probe" not in near.seen()


@pytest.mark.parametrize("cut", ["/", "?", "#"])
def test_a_url_httpx_cannot_send_is_refused_without_quoting_its_parts(allowing, servers, cut):
    """A password holding an unencoded "/" read as the port: httpx's "Invalid port: '…'" put
    the password in the step's error and the daemon's log (a hunt)."""
    near, _ = servers
    password = "Pw9sEcReT-" + "7" * 8
    url = near.url.replace("http://", f"http://alice:{password}{cut}x7@") + "/p"
    message = error(fetch(allowing, url))
    assert "a URL (the request's or a redirect's) httpx cannot send" in message, message
    assert password not in message
    assert password not in allowing.stderr()


@pytest.mark.parametrize("ending", ["\x0b", " ", "\t", "\x7f", "\u00e9"])
def test_a_header_value_httpx_would_refuse_is_refused_unquoted(allowing, servers, ending):
    """A control character, a space at an end or a non-ASCII letter: httpx (h11) quoted the
    whole value in its error — a bearer token in the step's error and the log."""
    near, _ = servers
    token = "header-token-" + "8" * 12
    headers = {"Authorization": f"Bearer {token}{ending}"}
    message = error(fetch(allowing, f"{near.url}/header-probe", headers=headers))
    assert "inputs.headers.Authorization" in message
    assert token not in message
    assert token not in allowing.stderr()


@pytest.mark.parametrize(
    "headers",
    [{"Content-Length": "4", "Transfer-Encoding": "chunked"}, {"Host": "admin.internal"},
     {"connection": "close"}],
)  # fmt: skip
def test_a_step_cannot_set_the_requests_framing_or_host(prefixed, servers, headers):
    """Content-Length beside Transfer-Encoding smuggled a second request, to a path the
    allow-list refused, behind an allowed one; Host reached another virtual host."""
    near, _ = servers
    smuggled = "POST /admin/secret HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\n"
    run = fetch(prefixed, f"{near.url}/ok/x", method="POST", headers=headers, body=smuggled)
    message = error(run)
    assert "set by the daemon" in message
    assert "/admin/secret" not in near.seen()
    assert "/ok/x" not in near.seen()  # refused before anything was sent


def test_a_redirect_hops_body_is_not_read(allowing, servers):
    """httpx reads every redirect hop's whole body before it follows: a 64 MB hop body went
    into the daemon, past the size limit. The hops are followed without reading them."""
    near, _ = servers
    before = rss_mb(allowing.process.pid)
    target = urllib.parse.quote(f"{near.url}/landed", safe="")
    run = fetch(allowing, f"{near.url}/heavy-redirect?to={target}", follow_redirects=True)
    assert run.status == api.RunStatus.SUCCEEDED, value(run.steps[0].error)
    assert value(run.steps[0].output)["body"] == {"served": "/landed"}
    assert rss_mb(allowing.process.pid) - before < 40


def test_a_gzip_answer_is_inflated_only_up_to_the_limit(allowing, servers):
    """httpx inflates each network chunk whole: a 64 MB answer in ~64 KB of gzip was made in
    memory before it was counted. It is inflated up to the limit now; a small one as ever."""
    near, _ = servers
    peak = rss_mb(allowing.process.pid, "VmHWM")
    message = error(fetch(allowing, f"{near.url}/gzip-bomb"))
    assert f"answered more than {4 << 20} bytes" in message
    assert rss_mb(allowing.process.pid, "VmHWM") - peak < 32
    run = fetch(allowing, f"{near.url}/gzip-json")
    assert value(run.steps[0].output)["body"] == {"zipped": True}


def test_a_body_compressed_twice_is_refused_without_inflating_it(allowing, servers):
    """httpx inflated any Content-Encoding but a lone gzip or deflate (``gzip, gzip``,
    ``gzip, identity``) whole: a 980-byte answer became 512 MB in the daemon before the size
    check. One gzip layer is inflated up to the limit whatever else the header lists; two are
    refused."""
    near, _ = servers
    peak = rss_mb(allowing.process.pid, "VmHWM")
    message = error(fetch(allowing, f"{near.url}/gzip-twice"))
    assert "compressed 2 times ('gzip, gzip')" in message
    message = error(fetch(allowing, f"{near.url}/gzip-bomb?gzip,%20identity"))
    assert f"answered more than {4 << 20} bytes" in message
    assert rss_mb(allowing.process.pid, "VmHWM") - peak < 32
    run = fetch(allowing, f"{near.url}/gzip-json?identity,%20GZIP")
    assert value(run.steps[0].output)["body"] == {"zipped": True}


def test_bytes_past_a_gzip_bodys_end_are_not_read_on_without_limit(allowing, servers):
    """Past the end of its gzip member, a body's bytes went uncounted (20 MB of zeros after
    32 bytes of gzip were read whole; 300 MB took 434 s and 633 MB): they are the next member
    (inflated, and counted), or refused as not inflating."""
    near, _ = servers
    peak = rss_mb(allowing.process.pid, "VmHWM")
    for path in ("/gzip-trailing-json", "/gzip-empty-json"):  # 20 MB of zeros; 4 MB of
        message = error(fetch(allowing, f"{near.url}{path}"))  # empty members
        assert f"answered more than {4 << 20} bytes" in message, (path, message)
    assert rss_mb(allowing.process.pid, "VmHWM") - peak < 32
    for path in ("/gzip-members-json", "/gzip-padded-json"):  # another member; zero padding
        run = fetch(allowing, f"{near.url}{path}")
        assert value(run.steps[0].output)["body"] == {"zipped": True}, path


def test_a_body_or_method_that_is_not_text_is_refused_naming_its_input(allowing, servers):
    """An object body went as its Python repr ({'a': 1}), null as "None", and a method of 5
    onto the request line; a method with a space was "Illegal method characters" (a hunt)."""
    near, _ = servers
    before = len(near.seen())
    body, method = "inputs.body: expected a string", "inputs.method: expected an HTTP method"
    for inputs, said in (({"body": {"a": 1}}, body), ({"body": None}, body),
                         ({"method": 5}, method), ({"method": "PO ST"}, method),
                         ({"method": ["get"]}, method)):  # fmt: skip
        assert said in error(fetch(allowing, f"{near.url}/json", **inputs)), inputs
    assert len(near.seen()) == before  # none was sent
    sent = error(fetch(allowing, f"{near.url}/json", method="post", body='{"a": 1}'))
    assert sent.startswith(f"BlockError: POST {near.url}/json answered 501")  # (no do_POST)


@pytest.mark.parametrize(
    ("content_type", "body", "output"),
    [
        # punycode's decoder is quadratic, on the daemon's loop: 1.5 MB held it for minutes
        ("text/plain; charset=punycode", ("é" * 2_000).encode("punycode"), None),
        ("text/plain; charset=rot13", b"uryyb", "uryyb"),  # LookupError: not a text encoding
        ("text/plain; charset=idna", b"xn--caf-dma", "xn--caf-dma"),  # its errors= refused
        ("text/plain; charset=iso-8859-1", b"caf\xe9", "café"),  # a web charset: read in it
        ("application/json", b'{"a": NaN}', '{"a": NaN}'),  # not JSON the daemon stores: text
        ("application/json", b'{"a": 1e400}', '{"a": 1e400}'),
        ("application/json", b'{"a": [1, 2.5]}', {"a": [1, 2.5]}),
        # a byte-order mark says the encoding, as json.loads of the bytes read it (a review)
        ("application/json", b'\xef\xbb\xbf{"a": 1}', {"a": 1}),
        ("application/json", '{"a": 1}'.encode("utf-16"), {"a": 1}),
        ("text/plain; charset=utf-8", b"\xef\xbb\xbfhi", "hi"),
    ],
    ids=["punycode", "rot13", "idna", "latin-1", "NaN", "1e400", "json", "bom", "utf-16", "text"],
)
def test_a_body_is_text_in_a_web_charset_else_utf8_and_json_only_when_storable(
    allowing, servers, content_type, body, output
):
    """A hunt: these failed the step with Python's words, or held the daemon's loop."""
    near, _ = servers
    query = urllib.parse.urlencode({"type": content_type, "hex": body.hex()})
    run = fetch(allowing, f"{near.url}/typed?{query}")
    assert run.status == api.RunStatus.SUCCEEDED, run.steps[0].error
    expected = body.decode() if output is None else output
    assert value(run.steps[0].output)["body"] == expected
