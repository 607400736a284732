"""The egress policy (kernel/egress.py): the pure checks, the ``[http] allow`` config, and the
guarded client over a fake network (nothing here sends a packet anywhere)."""

import ipaddress
import logging
import textwrap

import httpcore
import httpx
import pytest
from foundry.kernel.blocks.egress import (
    EgressPolicy,
    EgressRefused,
    address_refusal,
    guarded_client,
    parse_allow_entry,
    redact_url,
)
from foundry.kernel.config import Config, HttpConfig
from foundry.kernel.errors import BlockError, ConfigError

DENY = EgressPolicy()

REFUSED = {
    "127.0.0.1": "loopback",
    "127.8.9.10": "loopback",
    "::1": "loopback",
    "10.1.2.3": "private",
    "172.16.0.1": "private",
    "172.31.255.254": "private",
    "192.168.1.1": "private",
    "fc00::1": "private",
    "fd12:3456::1": "private",
    "169.254.1.1": "link-local",
    "fe80::1": "link-local",
    "0.0.0.0": "unspecified",
    "0.1.2.3": "unspecified",
    "::": "unspecified",
    "224.0.0.1": "multicast",
    "239.1.2.3": "multicast",
    "ff02::1": "multicast",
    "240.0.0.1": "reserved",
    "255.255.255.255": "reserved",
    "192.0.2.1": "reserved",  # TEST-NET-1
    "2001:db8::1": "reserved",  # documentation
    "100.64.0.1": "carrier-grade NAT",
    "100.127.255.254": "carrier-grade NAT",
    "169.254.169.254": "cloud metadata",
    "fd00:ec2::254": "cloud metadata",
    "100.100.100.200": "cloud metadata",
    "::ffff:127.0.0.1": "loopback",
    "::ffff:10.0.0.1": "private",
    "::ffff:169.254.169.254": "cloud metadata",
    "::ffff:100.64.0.1": "carrier-grade NAT",
    "64:ff9b::7f00:1": "loopback",  # NAT64 of 127.0.0.1
    "2002:a00:1::": "private",  # 6to4 of 10.0.0.1
    # IANA's non-global blocks Python 3.11.7's own tables count as global (a hunt sent a step's
    # request to 192.0.0.8, and one to fec0::1)
    "192.0.0.8": "reserved",  # IETF protocol assignments
    "192.0.0.255": "reserved",
    "fec0::1": "reserved",  # site-local
    "feff::1": "reserved",
    "3fff::1": "reserved",  # documentation (RFC 9637)
    "5f00::1": "reserved",  # SRv6 SIDs
}
PUBLIC = ["93.184.216.34", "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"]


# --- the pure policy --------------------------------------------------------------------------


@pytest.mark.parametrize(("address", "kind"), REFUSED.items())
def test_every_non_public_address_class_is_refused(address, kind):
    reason = address_refusal(ipaddress.ip_address(address))
    assert reason is not None
    assert reason.startswith(f"{kind} address"), reason
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(EgressRefused, match=f"egress to {address} refused: {kind} address"):
        DENY.check_url(f"http://{host}:8080/x")
    with pytest.raises(EgressRefused, match=f"it resolves to {address}, a {kind} address"):
        DENY.check_address("some.example", address)


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address):
    assert address_refusal(ipaddress.ip_address(address)) is None
    DENY.check_address("public.example", address)
    host = f"[{address}]" if ":" in address else address
    assert not DENY.check_url(f"https://{host}/x").vouched


def test_the_refusal_names_host_and_reason_and_how_to_allow_never_the_query():
    with pytest.raises(EgressRefused) as caught:
        DENY.check_url("http://127.0.0.1:9/v1?token=s3cret#frag")
    assert str(caught.value) == (
        "egress to 127.0.0.1 refused: loopback address (allow it with [http] allow)"
    )
    assert isinstance(caught.value, BlockError)  # a step failure like any other
    with pytest.raises(EgressRefused) as caught:
        DENY.check_url("ftp://files.example/x?token=s3cret")
    assert "s3cret" not in str(caught.value)
    assert "files.example" in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "file:///etc/passwd",
        "gopher://example.com/",
        "javascript:alert(1)",
        "data:text/plain,hi",
        "ws://example.com/",
        "example.com/x",
        "http:///nohost",
        "http://[::1/x",
        "http://example.com:99999/",
    ],
)
def test_only_http_and_https_urls_with_a_host(url):
    with pytest.raises(EgressRefused, match="egress"):
        DENY.check_url(url)


def test_a_hostname_is_left_to_the_address_check():
    target = DENY.check_url("HTTPS://Internal.Example./v1")
    assert (target.scheme, target.host, target.port, target.vouched) == (
        "https",
        "internal.example",
        443,
        False,
    )


def test_allow_by_host_any_port_exact_name_only():
    policy = EgressPolicy.from_allow(["localhost", "Internal.Example"])
    policy.check_address("localhost", "127.0.0.1")
    policy.check_address("LOCALHOST.", "::1")
    policy.check_address("internal.example", "10.0.0.7")
    with pytest.raises(EgressRefused, match="egress to sub.internal.example refused"):
        policy.check_address("sub.internal.example", "10.0.0.7")
    with pytest.raises(EgressRefused, match="egress to 127.0.0.1 refused: loopback"):
        policy.check_url("http://127.0.0.1:8080/")  # the name was allowed, not the address


def test_allow_by_cidr_and_by_address():
    policy = EgressPolicy.from_allow(["10.0.0.0/8", "127.0.0.1", "fd00::/8"])
    policy.check_url("http://10.200.0.1/x")
    policy.check_address("svc.internal", "10.0.0.1")
    policy.check_address("svc.internal", "::ffff:10.0.0.1")  # IPv4-mapped is the same host
    policy.check_address("localhost", "127.0.0.1")  # an address entry covers any name for it
    policy.check_address("v6.internal", "fd00:ec2::1")
    for address, kind in [("127.0.0.2", "loopback"), ("192.168.0.1", "private")]:
        with pytest.raises(EgressRefused, match=f"{kind} address"):
            policy.check_address("svc.internal", address)
    with pytest.raises(EgressRefused, match="loopback"):
        policy.check_address("localhost", "::1")


def test_a_metadata_address_needs_an_entry_of_its_own():
    wide = EgressPolicy.from_allow(["fd00::/8", "169.254.0.0/16", "100.64.0.0/10"])
    wide.check_address("x", "169.254.1.1")
    for address in [
        "fd00:ec2::254",
        "169.254.169.254",
        "100.100.100.200",
        "::ffff:169.254.169.254",
    ]:
        with pytest.raises(EgressRefused, match="cloud metadata"):
            wide.check_address("x", address)
    EgressPolicy.from_allow(["169.254.169.254"]).check_url("http://169.254.169.254/")
    EgressPolicy.from_allow(["169.254.169.254/32"]).check_address("x", "169.254.169.254")
    EgressPolicy.from_allow(["metadata.internal"]).check_address(
        "metadata.internal", "fd00:ec2::254"
    )


def test_allow_by_url_prefix_binds_scheme_host_port_and_path():
    policy = EgressPolicy.from_allow(["http://127.0.0.1:8080/v1", "https://[::1]/api/"])
    assert policy.check_url("http://127.0.0.1:8080/v1").vouched
    assert policy.check_url("http://127.0.0.1:8080/v1/chat/completions?x=1").vouched
    assert policy.check_url("https://[::1]/api/x").vouched
    assert policy.check_url("https://[::1]:443/api").vouched
    assert policy.check_url("http://127.0.0.1:8080/v1/x/..;/y").vouched  # still within /v1
    assert policy.check_url("http://127.0.0.1:8080/v1//x").vouched  # within either way
    refused = [
        "http://127.0.0.1:8080/v10",  # not a path segment boundary
        "http://127.0.0.1:8080/admin",
        "http://127.0.0.1:8080/v1/../admin",
        "http://127.0.0.1:8080/v1/%2e%2e/admin",
        "http://127.0.0.1:8080/v1%2f..%2fadmin",
        # a server that reads a backslash as a slash (found by a hostile-input hunt)
        "http://127.0.0.1:8080/v1/..\\admin",
        "http://127.0.0.1:8080/v1/..%5cadmin",
        # a server that drops a segment's ;parameters (Tomcat, Jetty: a plugin-security hunt)
        "http://127.0.0.1:8080/v1/..;/admin",
        "http://127.0.0.1:8080/v1/..;jsessionid=x/admin",
        "http://127.0.0.1:8080/v1/%2e%2e;/admin",
        "http://127.0.0.1:8080/v1/..%3b/admin",
        "http://127.0.0.1:8080/v1/x/..;/..;/admin",
        # a server that merges slashes first (nginx, Tomcat: a review of the fix above)
        "http://127.0.0.1:8080/v1//../admin",
        "http://127.0.0.1:8080/v1//..;/admin",
        "http://127.0.0.1:8080/v1/%2f..;/admin",
        "http://127.0.0.1:8080/v1/\\/../admin",
        "http://127.0.0.1:8080/v1/;/%2e%2e/admin",  # ;parameters dropped, then merged
        "http://127.0.0.1:8080/v1/;x/%2e%2e/admin",
        "http://127.0.0.1:8080/v1/%3bx/../admin",
        "http://127.0.0.1:8081/v1",
        "https://127.0.0.1:8080/v1",
        "http://127.0.0.2:8080/v1",
        "http://[::1]/api/x",
    ]
    for url in refused:
        with pytest.raises(EgressRefused, match="loopback address"):
            policy.check_url(url)
    # A prefix vouches for the addresses its host resolves to (that host only).
    by_name = EgressPolicy.from_allow(["http://llm.internal:8000/v1"])
    target = by_name.check_url("http://llm.internal:8000/v1/chat/completions")
    assert target.vouched
    by_name.check_address("llm.internal", "10.0.0.9", vouched=True)
    with pytest.raises(EgressRefused):
        by_name.check_address("llm.internal", "10.0.0.9")


@pytest.mark.parametrize(
    ("entry", "kind"),
    [
        ("http://127.0.0.1:8080/v1", "url"),
        ("https://llm.internal", "url"),
        ("127.0.0.1", "cidr"),
        ("::1", "cidr"),
        ("[::1]", "cidr"),
        ("10.0.0.0/8", "cidr"),
        ("fc00::/7", "cidr"),
        ("localhost", "host"),
        ("internal.example", "host"),
    ],
)
def test_allow_entries(entry, kind):
    assert parse_allow_entry(entry)[0] == kind


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ("", "non-empty"),
        ("ftp://files.example/", "http:// or https://"),
        ("http://x.example/v1?key=1", "query"),
        ("http://user:pw@x.example/", "credentials"),
        ("http:///v1", "needs a host"),
        ("http://x.example:99999/", "not a valid URL"),
        ("10.0.0.1/8", "not a CIDR"),
        ("10.0.0.0/33", "not a CIDR"),
        ("127.0.0.1:8080", "expected a URL prefix"),
        ("*.example", "expected a URL prefix"),
        ("a..b", "expected a URL prefix"),
    ],
)
def test_bad_allow_entries_say_why(entry, why):
    with pytest.raises(ValueError, match=why):
        parse_allow_entry(entry)


def test_redact_url_keeps_scheme_host_port_path():
    assert redact_url("https://u:p@Host.example:8443/a/b?token=x#f") == (
        "https://host.example:8443/a/b"
    )
    assert redact_url(httpx.URL("http://[::1]:9/v1?k=v")) == "http://[::1]:9/v1"
    assert redact_url("http://x.example/") == "http://x.example/"


# --- [http] allow in the config ----------------------------------------------------------------


def _config(tmp_path, body):
    path = tmp_path / "foundry.toml"
    path.write_text(textwrap.dedent(body))
    return path


def test_config_http_allow(tmp_path):
    assert Config().http == HttpConfig(allow=())
    path = _config(
        tmp_path, '[http]\nallow = ["http://127.0.0.1:8080/v1", "localhost", "10.0.0.0/8"]\n'
    )
    config = Config.from_toml(path)
    assert config.http.allow == ("http://127.0.0.1:8080/v1", "localhost", "10.0.0.0/8")
    EgressPolicy.from_allow(config.http.allow).check_url("http://10.1.1.1/")


@pytest.mark.parametrize(
    ("body", "key", "why"),
    [
        ('[http]\nallow = ["localhost", "ftp://x/"]\n', "[http].allow[1]", "http:// or https://"),
        ('[http]\nallow = ["10.0.0.1/8"]\n', "[http].allow[0]", "not a CIDR"),
        ('[http]\nallow = "localhost"\n', "[http].allow", "list of non-empty strings"),
        ('[http]\nallow = [""]\n', "[http].allow", "list of non-empty strings"),
        ("[http]\nallow = [1]\n", "[http].allow", "list of non-empty strings"),
        ('[http]\ndeny = ["x"]\n', "[http].deny", "unknown key"),
        ('http = "x"\n', "[http]", "expected a table"),
    ],
)
def test_config_http_allow_refusals_name_file_and_key(tmp_path, body, key, why):
    path = _config(tmp_path, body)
    with pytest.raises(ConfigError) as caught:
        Config.from_toml(path)
    message = str(caught.value)
    assert str(path) in message
    assert key in message
    assert why in message


# --- the guarded client over a fake network ---------------------------------------------------


class FakeStream(httpcore.AsyncNetworkStream):
    def __init__(self, net, reply):
        self.net, self.reply = net, [reply]

    async def read(self, max_bytes, timeout=None):  # noqa: ASYNC109
        return self.reply.pop(0) if self.reply else b""

    async def write(self, buffer, timeout=None):  # noqa: ASYNC109
        if buffer:
            self.net.sent.append(buffer)

    async def aclose(self):
        pass

    async def start_tls(self, ssl_context, server_hostname=None, timeout=None):  # noqa: ASYNC109
        self.net.tls.append(server_hostname)
        return self

    def get_extra_info(self, info):
        return None


class FakeNet(httpcore.AsyncNetworkBackend):
    """What the guarded backend connects through: records (host, port), answers each connection
    with the next canned HTTP/1.1 response. Nothing touches a real socket."""

    def __init__(self, *replies, dns=None):
        self.replies = list(replies)
        self.dns = dns or {}
        self.connects, self.lookups, self.sent, self.tls = [], [], [], []

    async def resolve(self, host, port):
        self.lookups.append(host)
        answer = self.dns.get(host, [host])
        return answer.pop(0) if answer and isinstance(answer[0], list) else answer

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):  # noqa: ASYNC109
        self.connects.append((host, port))
        return FakeStream(self, self.replies.pop(0) if self.replies else OK)

    async def connect_unix_socket(self, path, timeout=None, socket_options=None):  # noqa: ASYNC109
        raise AssertionError("no unix sockets")

    async def sleep(self, seconds):
        pass

    def client(self, policy, **options):
        return guarded_client(policy, network_backend=self, resolver=self.resolve, **options)


OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'


def redirect(location):
    return f"HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n".encode()


async def test_a_refused_literal_is_never_resolved_nor_connected():
    net = FakeNet()
    async with net.client(DENY) as client:
        for url in ["http://169.254.169.254/latest/meta-data/", "http://[::ffff:127.0.0.1]/"]:
            with pytest.raises(EgressRefused):
                await client.get(url)
    assert net.lookups == []
    assert net.connects == []


async def test_the_checked_address_is_the_one_connected_to_with_the_hostname_kept():
    net = FakeNet(dns={"api.example": ["93.184.216.34"]})
    async with net.client(DENY) as client:
        response = await client.get("https://api.example/v1?q=1")
    assert response.json() == {"ok": True}
    assert net.connects == [("93.184.216.34", 443)]  # the IP literal, not the name
    assert net.tls == ["api.example"]  # SNI (and certificate check) keep the hostname
    assert b"Host: api.example\r\n" in net.sent[0]


async def test_a_name_resolving_to_a_refused_address_is_refused_before_connecting():
    net = FakeNet(dns={"evil.example": ["169.254.169.254"], "localhost": ["::1", "127.0.0.1"]})
    async with net.client(DENY) as client:
        with pytest.raises(EgressRefused) as caught:
            await client.get("http://evil.example/?token=s3cret")
        with pytest.raises(EgressRefused, match="egress to localhost refused: it resolves to ::1"):
            await client.get("http://localhost:8080/")
    assert "egress to evil.example refused: it resolves to 169.254.169.254, a cloud metadata" in (
        str(caught.value)
    )
    assert "s3cret" not in str(caught.value)
    assert net.connects == []
    async with net.client(EgressPolicy.from_allow(["localhost"])) as client:
        await client.get("http://localhost:8080/")
    assert net.connects == [("::1", 8080)]


async def test_every_resolved_address_is_checked():
    """A name answering with a public and a private address (DNS rebinding) is refused."""
    net = FakeNet(dns={"rebind.example": ["93.184.216.34", "127.0.0.1"]})
    async with net.client(DENY) as client:
        with pytest.raises(EgressRefused, match="it resolves to 127.0.0.1, a loopback"):
            await client.get("http://rebind.example/")
    assert net.connects == []


async def test_each_request_resolves_and_checks_again():
    """The second lookup answers differently (rebinding between requests): no cached verdict
    and no kept-alive connection lets it through."""
    net = FakeNet(dns={"flip.example": [["93.184.216.34"], ["10.0.0.1"]]})
    async with net.client(DENY) as client:
        await client.get("http://flip.example/")
        with pytest.raises(EgressRefused, match="private address"):
            await client.get("http://flip.example/")
    assert net.connects == [("93.184.216.34", 80)]
    assert net.lookups == ["flip.example", "flip.example"]


async def test_redirect_hops_are_checked_again():
    net = FakeNet(
        redirect("http://169.254.169.254/latest/meta-data/"),
        dns={"api.example": ["93.184.216.34"]},
    )
    async with net.client(DENY, follow_redirects=True) as client:
        with pytest.raises(EgressRefused, match="egress to 169.254.169.254 refused: cloud meta"):
            await client.get("http://api.example/start")
    assert net.connects == [("93.184.216.34", 80)]

    net = FakeNet(redirect("http://internal.example/"), dns={"api.example": ["93.184.216.34"]})
    net.dns["internal.example"] = ["10.1.1.1"]
    async with net.client(DENY, follow_redirects=True) as client:
        with pytest.raises(EgressRefused, match="egress to internal.example refused"):
            await client.get("http://api.example/start")
    assert net.connects == [("93.184.216.34", 80)]


async def test_a_redirect_out_of_an_allowed_prefix_is_refused_on_the_same_origin():
    net = FakeNet(redirect("/admin"))
    policy = EgressPolicy.from_allow(["http://10.0.0.5:8080/ok"])
    async with net.client(policy, follow_redirects=True) as client:
        with pytest.raises(EgressRefused, match="egress to 10.0.0.5 refused: private"):
            await client.get("http://10.0.0.5:8080/ok/start")
    assert net.connects == [("10.0.0.5", 8080)]  # one connection: the refused hop never sent
    assert len(net.sent) == 1


async def test_redirects_are_not_followed_unless_asked():
    net = FakeNet(redirect("http://169.254.169.254/"), dns={"api.example": ["93.184.216.34"]})
    async with net.client(DENY) as client:
        response = await client.get("http://api.example/")
    assert response.status_code == 302
    assert net.connects == [("93.184.216.34", 80)]


async def test_environment_proxies_are_ignored(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, "http://proxy.example:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    net = FakeNet(dns={"api.example": ["93.184.216.34"], "proxy.example": ["10.9.9.9"]})
    async with net.client(DENY) as client:
        assert not client.trust_env
        await client.get("http://api.example/")
    assert net.connects == [("93.184.216.34", 80)]
    assert net.lookups == ["api.example"]


async def test_httpx_errors_stay_httpx_errors():
    class Unreachable(FakeNet):
        async def connect_tcp(self, host, port, **options):
            self.connects.append((host, port))
            raise httpcore.ConnectError("connection refused")

    net = Unreachable(dns={"api.example": ["93.184.216.34", "2606:4700::1"]})
    async with net.client(DENY) as client:
        with pytest.raises(httpx.ConnectError, match="connection refused"):
            await client.get("http://api.example/")
    assert net.connects == [("93.184.216.34", 80), ("2606:4700::1", 80)]  # each, in order


async def test_httpx_request_log_has_no_query(caplog):
    net = FakeNet(dns={"api.example": ["93.184.216.34"]})
    with caplog.at_level(logging.DEBUG):  # (at INFO the request line is not kept at all)
        async with net.client(DENY) as client:
            await client.get("http://api.example/v1/items?token=s3cret")
    messages = [r.getMessage() for r in caplog.records if r.name == "httpx"]
    assert any("http://api.example " in m for m in messages), messages
    assert not any("s3cret" in m or "/v1/items" in m for m in messages)


async def test_the_real_resolver_and_backend_refuse_localhost():
    """Default resolver (anyio under trio): ``localhost`` resolves to loopback → refused."""
    async with guarded_client(DENY, timeout=5) as client:
        with pytest.raises(EgressRefused, match="egress to localhost refused: it resolves to"):
            await client.get("http://localhost:9/")


def test_httpx_request_lines_are_kept_only_at_debug_and_name_the_origin(caplog):
    """A line per http step and LLM call at INFO, a webhook's token in its path (Slack,
    Discord): an operator hunt found ``…/services/T0001/B0002/WEBHOOKSECRET`` in the log."""
    import httpx

    log = logging.getLogger("httpx")
    url = httpx.URL("http://hooks.example:8080/services/T1/B2/WEBHOOKSECRET?token=x")
    with caplog.at_level(logging.INFO):
        log.info('HTTP Request: %s %s "%s %d %s"', "POST", url, "HTTP/1.1", 200, "OK")
        log.warning("retrying %s", url)
    assert [r.getMessage() for r in caplog.records] == [
        "retrying http://hooks.example:8080/services/T1/B2/WEBHOOKSECRET"  # (no query)
    ]
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        log.info('HTTP Request: %s %s "%s %d %s"', "POST", url, "HTTP/1.1", 200, "OK")
    assert [r.getMessage() for r in caplog.records] == [
        'HTTP Request: POST http://hooks.example:8080 "HTTP/1.1 200 OK"'
    ]
