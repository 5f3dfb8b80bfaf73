"""``ol-jax proxy`` under hostile clients: timeouts, connection cap, nesting,
text the tokenizer cannot take, ``max_tokens`` bound, client keys, upstream URLs.

Real sockets on 127.0.0.1 against a proxy in a subprocess (tiny random models,
the offline FAQ teacher), with one-second deadlines so the tests stay fast. Every
loop is bounded by a socket timeout or a count.
"""

import json
import socket

import pytest
import yaml

from ol_jax.cli import main
from ol_jax.cli._proxy import ProxyNetworkConfig
from ol_jax.store import ConfigError, validate_config

anthropic = pytest.importorskip("anthropic")

MODEL = "ol-jax-test"
KEY, ENV_KEY = "key-one", "key-two"
LIMITS = {
    "models": [MODEL],
    "simulated_families": 4,
    "simulated_encoder": None,
    "header_timeout_s": 1.0,
    "body_timeout_s": 1.0,
    "idle_timeout_s": 1.0,
    "max_connections": 400,
    "max_tokens_limit": 1000,
    "api_keys": [KEY],
}
CONFIG = {
    "network_id": "proxy-limits",
    "policy": {"cold_start": 1000, "conservative_until": 1000},
    "encoder": {"name": "tiny"},
    "generator": {"name": "tiny", "max_new_tokens": 16, "max_length": 48},
    "proxy": LIMITS,
}
QUERY = "How do I reset my password?"


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, proxy_process):
    server = proxy_process(
        tmp_path_factory.mktemp("limits"),
        config=CONFIG,
        env={"OL_JAX_PROXY_API_KEYS": f" {ENV_KEY} ,"},
    )
    yield server
    server.stop()


def _body(**fields):
    body = {
        "model": MODEL,
        "max_tokens": 16,
        "messages": [{"role": "user", "content": QUERY}],
    }
    body.update(fields)
    return json.dumps(body).encode()


def _post(proxy, body, *, key=KEY):
    headers = {"x-api-key": key, "content-type": "application/json"}
    return proxy.post(body, headers=headers)


def _stats(proxy):
    import urllib.request

    request = urllib.request.Request(proxy.url + "/stats", headers={"x-api-key": KEY})
    with urllib.request.urlopen(request, timeout=60) as reply:
        return json.load(reply)["server"]


def _closed_by_server(sock, within_s=15.0):
    """Whether the server closes ``sock`` within ``within_s`` (reads until EOF)."""
    sock.settimeout(within_s)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except OSError:  # reset by the server: closed too
        return True
    return True


def _read_until_closed(sock, within_s=15.0):
    """Everything the server sends until it closes ``sock``."""
    sock.settimeout(within_s)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _connect(proxy):
    return socket.create_connection(proxy.address, timeout=10)


# ------------------------------------------------------------------ connections


def test_300_idle_connections_are_closed_and_do_not_block_others(proxy):
    before = _stats(proxy)["timeouts"]
    idle = [_connect(proxy) for _ in range(300)]
    try:
        # Others are served while 300 connections sit idle.
        client = proxy.client(api_key=KEY)
        message = client.messages.create(
            model=MODEL, max_tokens=64, messages=[{"role": "user", "content": QUERY}]
        )
        assert message.content[0].text
        # The header deadline closes every connection that never sent a request.
        assert all(_closed_by_server(sock) for sock in idle)
    finally:
        for sock in idle:
            sock.close()
    assert _stats(proxy)["timeouts"] >= before + 300


def test_headers_dribbled_byte_by_byte_hit_the_deadline(proxy):
    sock = _connect(proxy)
    try:
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nhost: x\r\n")
        closed = False
        for _ in range(50):  # a byte every 0.2 s would last 10 s: far past 1 s
            try:
                sock.sendall(b"x")
            except OSError:
                closed = True
                break
            sock.settimeout(0.2)
            try:
                if sock.recv(4096) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
        assert closed
    finally:
        sock.close()


def test_kept_alive_connection_is_closed_when_idle(proxy):
    sock = _connect(proxy)
    try:
        sock.sendall(_raw_request(_body()))
        sock.settimeout(60)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        assert _closed_by_server(sock)
    finally:
        sock.close()


def test_slow_body_is_408_and_closed(proxy):
    before = _stats(proxy)
    sock = _connect(proxy)
    try:
        sock.sendall(
            b"POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: "
            + KEY.encode()
            + b'\r\ncontent-length: 100\r\n\r\n{"model"'
        )
        reply = _read_until_closed(sock)
        assert reply.startswith(b"HTTP/1.1 408")
        assert b'"timeout_error"' in reply
    finally:
        sock.close()
    after = _stats(proxy)
    assert after["bad_requests"] == before["bad_requests"] + 1


def _raw_request(body):
    return (
        b"POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: "
        + KEY.encode()
        + b"\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


def test_connections_past_the_limit_are_refused(proxy):
    before = _stats(proxy)["refused_connections"]
    socks = []
    try:
        for _ in range(LIMITS["max_connections"]):
            socks.append(_connect(proxy))
        extra = _connect(proxy)
        socks.append(extra)
        try:
            extra.sendall(_raw_request(_body()))
            extra.settimeout(30)
            reply = extra.recv(4096)
        except OSError:
            reply = b""
        assert reply == b""  # closed unanswered, not served
    finally:
        for sock in socks:
            sock.close()
    assert _stats(proxy)["refused_connections"] >= before + 1


# ------------------------------------------------------------------ bodies


def test_100k_deep_json_is_400_and_counted(proxy):
    before = _stats(proxy)["bad_requests"]
    status, reply = _post(proxy, b"[" * 100_000 + b"]" * 100_000)
    assert status == 400 and reply["error"]["type"] == "invalid_request_error"
    assert "nested deeper than the limit" in reply["error"]["message"]
    deep = {"a": 1}
    for _ in range(100):
        deep = {"a": deep}
    status, reply = _post(proxy, _body(metadata=deep))
    assert status == 400
    assert "nested 102 levels deep; the limit is 64" in reply["error"]["message"]
    assert _stats(proxy)["bad_requests"] == before + 2


def test_huge_integer_is_400(proxy):
    status, reply = _post(proxy, b'{"model": "x", "max_tokens": ' + b"9" * 5000 + b"}")
    assert status == 400 and "not valid JSON" in reply["error"]["message"]


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        (
            {"messages": [{"role": "user", "content": "hi \ud800 there"}]},
            "messages[0].content",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "\udfff"}]}
                ]
            },
            "messages[0].content[0].text",
        ),
        ({"system": "be \ud83d brief"}, "system"),
        ({"stop_sequences": ["\udc80"]}, "stop_sequences[0]"),
    ],
    ids=["query", "text block", "system", "stop sequence"],
)
def test_lone_surrogates_are_400_naming_the_field(proxy, fields, where):
    # json.dumps escapes a lone surrogate as \\udXXX, exactly what a client sends.
    status, reply = _post(proxy, _body(**fields))
    assert status == 400, reply
    assert reply["error"]["type"] == "invalid_request_error"
    assert reply["error"]["message"].startswith(f"{where}: the text is not valid")


def test_max_tokens_is_bounded_by_the_config(proxy):
    status, reply = _post(proxy, _body(max_tokens=10**30))
    assert status == 400
    assert "max_tokens: must be in 1..1000" in reply["error"]["message"]
    status, _ = _post(proxy, _body(max_tokens=1000))
    assert status == 200


# ------------------------------------------------------------------ client keys


def test_requests_without_a_valid_key_are_401(proxy):
    before = _stats(proxy)["unauthorized"]
    for key in ("wrong", KEY + "x", KEY[:-1]):
        with pytest.raises(anthropic.AuthenticationError) as info:
            proxy.client(api_key=key).messages.create(
                model=MODEL, max_tokens=8, messages=[{"role": "user", "content": QUERY}]
            )
        assert info.value.body["error"]["type"] == "authentication_error"
    status, reply = proxy.post(_body())  # no key at all
    assert status == 401 and reply["error"]["type"] == "authentication_error"
    for method, path in (
        ("GET", "/stats"),
        ("GET", "/v1/models"),
        ("POST", "/v1/messages/count_tokens"),
    ):
        assert _raw_status(proxy, method, path) == 401
    assert _stats(proxy)["unauthorized"] == before + 7


def test_config_and_environment_keys_are_accepted(proxy):
    for client in (
        proxy.client(api_key=KEY),
        proxy.client(api_key=ENV_KEY),
        proxy.client(api_key=None, auth_token=KEY),
    ):
        message = client.messages.create(
            model=MODEL, max_tokens=8, messages=[{"role": "user", "content": QUERY}]
        )
        assert message.type == "message"
        assert [m.id for m in client.models.list()] == [MODEL]


def _raw_status(proxy, method, path):
    import http.client

    conn = http.client.HTTPConnection(*proxy.address, timeout=30)
    conn.request(method, path, body=b"{}" if method == "POST" else None)
    status = conn.getresponse().status
    conn.close()
    return status


# ------------------------------------------------------------------ config


@pytest.mark.parametrize(
    "url",
    ["http://api.anthropic.com", "http://10.0.0.5:8080", "http://[2001:db8::1]/"],
)
def test_plain_http_upstream_is_refused_unless_loopback(tmp_path, capsys, url):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    args = ["proxy", "--config", str(path), "--root", str(tmp_path), "--upstream", url]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "proxy.upstream" in err and "must be https://" in err


@pytest.mark.parametrize(
    "url",
    [
        "https://api.anthropic.com",
        "http://127.0.0.1:9",
        "http://localhost:1",
        "http://[::1]:8000",
    ],
)
def test_https_and_loopback_upstreams_are_accepted(url):
    config = validate_config({"proxy": {"upstream": url}}, ProxyNetworkConfig)
    assert config.proxy.upstream == url


@pytest.mark.parametrize("url", ["ftp://x", "api.anthropic.com", "https://"])
def test_malformed_upstream_is_refused(url):
    with pytest.raises(ConfigError, match="proxy.upstream"):
        validate_config({"proxy": {"upstream": url}}, ProxyNetworkConfig)
