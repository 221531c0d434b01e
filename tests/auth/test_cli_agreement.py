"""``rtserver checktoken``/``checksubtoken`` and the server agree on every token.

A corpus of connection and subscription tokens (valid, expired, not yet valid, badly
signed, unsigned, wrong audience, out-of-range claims, empty and non-empty ``channel``,
control characters in channel claims, deep ``info``...) is judged by the server (a real
Client on a Clock-driven node, which answers connect/subscribe) and by the CLI (its
``main``, exit status and stderr); the verdicts must match. Before the CLI used the
server's verifier, a connection token with ``"channel": ""`` was accepted by the server
and refused by ``checktoken``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from rtserver import cli
from rtserver.testing import RecordingSink, make_node

SECRET = "agreement-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
AUDIENCE = "rtserver-tests"
NOW = int(time.time())
SETTINGS: dict[str, Any] = {
    "client": {"token": {"hmac_secret_key": SECRET, "audience": AUDIENCE}},
    "channel": {"without_namespace": {"allow_subscribe_for_client": True}},
}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(payload: bytes | dict[str, Any], alg: str = "HS256", secret: str = SECRET) -> str:
    raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    head = _b64url(orjson.dumps({"alg": alg, "typ": "JWT"})) + "." + _b64url(raw)
    if alg == "none":
        return head + "."
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    return head + "." + _b64url(hmac.new(secret.encode(), head.encode(), digest).digest())


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "u", "aud": AUDIENCE, **extra}


CONNECTION_CORPUS: dict[str, str] = {
    "valid": token(claims()),
    "valid HS512": token(claims(), alg="HS512"),
    "anonymous": token({"aud": AUDIENCE}),
    "empty channel claim": token(claims(channel="")),
    "channel claim": token(claims(channel="news")),
    "expired": token(claims(exp=NOW - 10)),
    "not yet valid": token(claims(nbf=NOW + 3600)),
    "exp in a year": token(claims(exp=NOW + 365 * 86400)),
    "exp 2^64": token(b'{"sub":"u","aud":"%s","exp":18446744073709551616}' % AUDIENCE.encode()),
    "iat 1e300": token(b'{"sub":"u","aud":"%s","iat":1e300}' % AUDIENCE.encode()),
    "expire_at -1": token(claims(expire_at=-1)),
    "exp as string": token(claims(exp="soon")),
    "wrong audience": token({"sub": "u", "aud": "other"}),
    "no audience": token({"sub": "u"}),
    "bad signature": token(claims(), secret="another-secret-0123456789-abcdefghijklmnop"),
    "alg none": token(claims(), alg="none"),
    "garbage": "not-a-token",
    "sub not a string": token(claims(sub=42)),
    "channels with NUL": token(claims(channels=["a\x00b"])),
    "channels": token(claims(channels=["feed"])),
    "deep info": token(
        b'{"sub":"u","aud":"%s","info":%s}' % (AUDIENCE.encode(), b"[" * 600 + b"]" * 600)
    ),
    "meta not an object": token(claims(meta=[1])),
}

SUBSCRIPTION_CORPUS: dict[str, str] = {
    "valid": token(claims(channel="c")),
    "no channel": token(claims()),
    "empty channel": token(claims(channel="")),
    "expired": token(claims(channel="c", exp=NOW - 10)),
    "exp 2^64": token(
        b'{"sub":"u","aud":"%s","channel":"c","exp":18446744073709551616}' % AUDIENCE.encode()
    ),
    "channel with NUL": token(claims(channel="c\x00")),
    "bad override": token(claims(channel="c", override={"presence": True})),
    "bad signature": token(claims(channel="c"), secret="x" * 40),
    "wrong audience": token({"sub": "u", "aud": "other", "channel": "c"}),
}


def server_connect(raw: str) -> str:
    """``ok``, ``expired`` (error 109) or ``invalid`` (disconnect 3500), as the server says."""
    node, clock = make_node(SETTINGS)
    clock.advance(time.time())
    sink = RecordingSink()
    client = node.make_client(sink)
    client.receive(orjson.dumps({"id": 1, "connect": {"token": raw}}))
    clock.advance(0)
    try:
        if client.connected:
            return "ok"
        if sink.closed_with is not None and sink.closed_with.code == 3500:
            return "invalid"
        [reply] = sink.replies()
        assert reply["error"]["code"] == 109, reply
        return "expired"
    finally:
        node.stop()
        clock.advance(0)


def server_subscribe(raw: str) -> str:
    """``ok``, ``expired`` (error 109) or ``invalid`` (error 103), as the server says."""
    node, clock = make_node(SETTINGS)
    clock.advance(time.time())
    sink = RecordingSink()
    client = node.make_client(sink)
    client.receive(orjson.dumps({"id": 1, "connect": {"token": CONNECTION_CORPUS["valid"]}}))
    client.receive(orjson.dumps({"id": 2, "subscribe": {"channel": "c", "token": raw}}))
    clock.advance(0)
    try:
        [reply] = [r for r in sink.replies() if r["id"] == 2]
        if "subscribe" in reply:
            return "ok"
        code = reply["error"]["code"]
        assert code in (103, 109), reply
        return "expired" if code == 109 else "invalid"
    finally:
        node.stop()
        clock.advance(0)


def cli_verdict(
    capsys: pytest.CaptureFixture[str], config: str, command: str, raw: str
) -> tuple[str, Any]:
    status = cli.main([command, "-c", config, raw])
    out, err = capsys.readouterr()
    if status == 0:
        return "ok", json.loads(out)
    assert status == 1 and err.startswith("error: invalid token"), (status, err)
    return ("expired" if "token expired" in err else "invalid"), None


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path: Path = tmp_path_factory.mktemp("cfg") / "config.json"
    path.write_text(json.dumps(SETTINGS))
    return str(path)


@pytest.mark.parametrize("name", sorted(CONNECTION_CORPUS))
def test_checktoken_agrees_with_the_server(
    capsys: pytest.CaptureFixture[str], config_file: str, name: str
) -> None:
    raw = CONNECTION_CORPUS[name]
    verdict, printed = cli_verdict(capsys, config_file, "checktoken", raw)
    assert verdict == server_connect(raw)
    if printed is not None:
        payload = raw.split(".")[1]
        assert printed == json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


@pytest.mark.parametrize("name", sorted(SUBSCRIPTION_CORPUS))
def test_checksubtoken_agrees_with_the_server(
    capsys: pytest.CaptureFixture[str], config_file: str, name: str
) -> None:
    raw = SUBSCRIPTION_CORPUS[name]
    verdict, _ = cli_verdict(capsys, config_file, "checksubtoken", raw)
    assert verdict == server_subscribe(raw)


def test_the_corpus_covers_every_verdict() -> None:
    """The corpus is not all-valid or all-invalid: each outcome occurs on both sides."""
    connect = {server_connect(t) for t in CONNECTION_CORPUS.values()}
    subscribe = {server_subscribe(t) for t in SUBSCRIPTION_CORPUS.values()}
    assert connect == subscribe == {"ok", "expired", "invalid"}
