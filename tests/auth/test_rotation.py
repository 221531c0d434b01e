"""Key rotation and claim patterns: ``hmac_previous_secret_key`` and ``*_regex``.

Unit level: a token signed with the previous HMAC key verifies (until its
``valid_until``), one signed with any other key is ``bad signature``; ``audience_regex``
and ``issuer_regex`` accept what they match and refuse the rest; a bad pattern is a
config error. Server level: a real ``twistd rtserver`` rotated with SIGHUP keeps
accepting tokens of the previous key and refuses an unknown key with 3500.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from harness import Server, base_config, merge, spawn_server, stop_server
from pysdk import Recorder, run_scenario, sdk_client

from rtserver import config as rtconfig
from rtserver.auth.jwt import JWTVerifier
from rtserver.config import ConfigError, SubscriptionTokenConfig, TokenConfig
from rtserver.core.types import InvalidToken

NOW = 1_700_000_000.0
CURRENT = "current-secret-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJK"
PREVIOUS = "previous-secret-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJ"
UNKNOWN = "unknown-secret-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJKL"
RELOAD_TIMEOUT = 10.0


def hs(claims: dict[str, Any], secret: str, alg: str = "HS256") -> str:
    return jwt.api_jws.encode(orjson.dumps(claims), secret, algorithm=alg)


# --- hmac_previous_secret_key ---------------------------------------------------------------


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_previous_hmac_key_verifies(alg: str) -> None:
    verifier = JWTVerifier(TokenConfig(hmac_secret_key=CURRENT, hmac_previous_secret_key=PREVIOUS))
    for secret in (CURRENT, PREVIOUS):
        assert verifier.verify_connection_token(hs({"sub": "u"}, secret, alg), NOW).user == "u"
    with pytest.raises(InvalidToken, match="bad signature"):
        verifier.verify_connection_token(hs({"sub": "u"}, UNKNOWN, alg), NOW)


def test_previous_hmac_key_stops_at_valid_until() -> None:
    until = int(NOW) + 60
    verifier = JWTVerifier(
        TokenConfig(
            hmac_secret_key=CURRENT,
            hmac_previous_secret_key=PREVIOUS,
            hmac_previous_secret_key_valid_until=until,
        )
    )
    old = hs({"sub": "u"}, PREVIOUS)
    assert verifier.verify_connection_token(old, until - 1).user == "u"
    with pytest.raises(InvalidToken, match="bad signature"):
        verifier.verify_connection_token(old, until)
    # the current key has no end
    assert verifier.verify_connection_token(hs({"sub": "u"}, CURRENT), until + 10**6).user == "u"


def test_previous_hmac_key_for_subscription_tokens() -> None:
    verifier = JWTVerifier(
        TokenConfig(hmac_secret_key=UNKNOWN),
        SubscriptionTokenConfig(
            enabled=True, hmac_secret_key=CURRENT, hmac_previous_secret_key=PREVIOUS
        ),
    )
    claims = {"sub": "u", "channel": "c"}
    assert verifier.verify_subscription_token(hs(claims, PREVIOUS), NOW).channel == "c"
    with pytest.raises(InvalidToken, match="bad signature"):
        verifier.verify_subscription_token(hs(claims, UNKNOWN), NOW)
    # the connection block has no previous key: the subscription one does not leak into it
    with pytest.raises(InvalidToken, match="bad signature"):
        verifier.verify_connection_token(hs({"sub": "u"}, PREVIOUS), NOW)


def test_previous_key_alone_is_refused() -> None:
    with pytest.raises(ValueError, match="hmac_previous_secret_key: set without hmac_secret_key"):
        JWTVerifier(TokenConfig(hmac_previous_secret_key=PREVIOUS))
    with pytest.raises(ConfigError, match=r"client\.token\.hmac_previous_secret_key"):
        rtconfig.from_mapping({"client": {"token": {"hmac_previous_secret_key": PREVIOUS}}})
    with pytest.raises(ConfigError, match="valid_until: must not be negative"):
        rtconfig.from_mapping(
            {
                "client": {
                    "token": {
                        "hmac_secret_key": CURRENT,
                        "hmac_previous_secret_key_valid_until": -1,
                    }
                }
            }
        )


def test_previous_key_is_not_shown() -> None:
    config = TokenConfig(hmac_secret_key=CURRENT, hmac_previous_secret_key=PREVIOUS)
    assert PREVIOUS not in repr(config)
    assert PREVIOUS not in repr(JWTVerifier(config).__dict__)


# --- audience_regex / issuer_regex ----------------------------------------------------------


def test_audience_regex() -> None:
    verifier = JWTVerifier(TokenConfig(hmac_secret_key=CURRENT, audience_regex=r"^app-(web|ios)$"))
    for aud in ("app-web", ["other", "app-ios"]):
        assert verifier.verify_connection_token(hs({"sub": "u", "aud": aud}, CURRENT), NOW)
    for bad in ("app-android", ["x", 5], 5, None, "xapp-web"):
        claims: dict[str, Any] = {"sub": "u"} if bad is None else {"sub": "u", "aud": bad}
        with pytest.raises(InvalidToken, match="audience mismatch"):
            verifier.verify_connection_token(hs(claims, CURRENT), NOW)


def test_issuer_regex_is_a_search_like_go() -> None:
    """Not anchored unless the pattern says so, as Go's ``MatchString``."""
    verifier = JWTVerifier(
        TokenConfig(hmac_secret_key=CURRENT, issuer_regex=r"auth\.example\.com/realms/\w+")
    )
    iss = "https://auth.example.com/realms/tenant1"
    assert verifier.verify_connection_token(hs({"sub": "u", "iss": iss}, CURRENT), NOW)
    for bad in ("https://evil.example.com/realms/x", 7, None):
        claims: dict[str, Any] = {"sub": "u"} if bad is None else {"sub": "u", "iss": bad}
        with pytest.raises(InvalidToken, match="issuer mismatch"):
            verifier.verify_connection_token(hs(claims, CURRENT), NOW)


def test_regex_and_exact_value_both_apply() -> None:
    verifier = JWTVerifier(TokenConfig(hmac_secret_key=CURRENT, audience="a1", audience_regex="^a"))
    assert verifier.verify_connection_token(hs({"sub": "u", "aud": "a1"}, CURRENT), NOW)
    with pytest.raises(InvalidToken, match="audience mismatch"):
        verifier.verify_connection_token(hs({"sub": "u", "aud": "a2"}, CURRENT), NOW)


def test_subscription_token_regex_is_its_own() -> None:
    verifier = JWTVerifier(
        TokenConfig(hmac_secret_key=CURRENT),
        SubscriptionTokenConfig(enabled=True, hmac_secret_key=CURRENT, issuer_regex="^subs$"),
    )
    ok = {"sub": "u", "channel": "c", "iss": "subs"}
    assert verifier.verify_subscription_token(hs(ok, CURRENT), NOW).channel == "c"
    with pytest.raises(InvalidToken, match="issuer mismatch"):
        verifier.verify_subscription_token(hs({**ok, "iss": "conn"}, CURRENT), NOW)
    assert verifier.verify_connection_token(hs({"sub": "u", "iss": "conn"}, CURRENT), NOW)


@pytest.mark.parametrize("section", ["token", "subscription_token"])
@pytest.mark.parametrize("key", ["audience_regex", "issuer_regex"])
def test_bad_regex_is_a_config_error(section: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"client\.{section}\.{key}: not a valid regular"):
        rtconfig.from_mapping({"client": {section: {"hmac_secret_key": CURRENT, key: "(["}}})
    with pytest.raises(ValueError, match=f"{key}: not a valid regular"):
        JWTVerifier(TokenConfig(hmac_secret_key=CURRENT, **{key: "(["}))


def test_checkconfig_reports_a_bad_pattern(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rtserver.cli import main

    path = tmp_path / "c.json"
    token = {"hmac_secret_key": CURRENT, "issuer_regex": "(["}
    path.write_text(json.dumps({"client": {"subscription_token": token}}))
    assert main(["checkconfig", "-c", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: client.subscription_token.issuer_regex: not a valid regular")


# --- a running server rotated with SIGHUP ---------------------------------------------------


def _token(secret: str, user: str) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time()) + 600}, secret, algorithm="HS256")


def _sighup_and_wait(server: Server, line: str) -> None:
    before = server.log(10**9).count(line)
    server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + RELOAD_TIMEOUT
    while server.log(10**9).count(line) <= before:
        assert time.monotonic() < deadline, f"no {line!r} after SIGHUP:\n{server.log()}"
        time.sleep(0.05)


def test_sighup_rotation_keeps_previous_key_tokens(tmp_path: Path) -> None:
    """Rotate A -> B with A as previous: A and B tokens connect, an unknown key gets 3500.

    A client connected with A before the rotation stays connected.
    """
    old, new, other = (f"{n}-{uuid.uuid4().hex}" for n in ("old", "new", "other"))
    api_key = "api-" + uuid.uuid4().hex
    config = merge(base_config(old, api_key), {"log": {"level": "info"}})
    server = spawn_server(tmp_path, config, secret=old, api_key=api_key)
    rec = Recorder()
    try:

        async def scenario() -> None:
            kept, _ = sdk_client(server, rec, token=_token(old, "kept"), label="kept")
            await kept.connect()
            await rec.wait("connected", client="kept")
            rotated = merge(
                config,
                {"client": {"token": {"hmac_secret_key": new, "hmac_previous_secret_key": old}}},
            )
            (tmp_path / "server.json").write_text(json.dumps(rotated))
            await asyncio.to_thread(_sighup_and_wait, server, "config reloaded")
            for label, secret in (("by-new", new), ("by-old", old)):
                client, _ = sdk_client(server, rec, token=_token(secret, label), label=label)
                await client.connect()
                await rec.wait("connected", client=label)
                await client.disconnect()
            stranger, _ = sdk_client(server, rec, token=_token(other, "x"), label="stranger")
            await stranger.connect()
            (refused,) = await rec.wait("disconnected", client="stranger")
            assert refused["code"] == 3500
            await stranger.disconnect()
            assert not rec.find("disconnected", client="kept")
            await kept.disconnect()

        run_scenario(scenario())
        log = server.log(10**9)
        assert old not in log and new not in log
    finally:
        stop_server(server)
