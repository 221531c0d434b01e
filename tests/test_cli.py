"""Tests for the ``rtserver`` command line (``rtserver.cli``)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
import tomllib
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import rtserver
from rtserver import __version__, config
from rtserver.cli import env_defaults, format_go_duration, main, to_toml

SECRET = "k" * 64
SUB_SECRET = "s" * 64
WEEK = 604800


@pytest.fixture(autouse=True)
def _isolate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Run every test in an empty directory with no config environment variables."""
    for name in list(os.environ):
        if name.startswith(("RTSERVER_", "CENTRIFUGO_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write_config(tmp_path: Path, data: dict[str, Any], name: str = "conf.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


def secret_config(tmp_path: Path, **token: Any) -> str:
    client: dict[str, Any] = {"token": {"hmac_secret_key": SECRET, **token}}
    return write_config(tmp_path, {"client": client, "http_api": {"key": "k"}})


def decode(token: str, key: str = SECRET) -> dict[str, Any]:
    return jwt.decode(token, key, algorithms=["HS256"], options={"verify_aud": False})


def last_line(out: str) -> str:
    return out.strip().splitlines()[-1]


# --- top level -------------------------------------------------------------------------


def test_no_subcommand_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """Without a subcommand the help is printed and the exit status is 2."""
    code, _, err = run(capsys)
    assert code == 2
    assert "usage: rtserver" in err
    assert "gentoken" in err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    """``--help`` prints the usage and returns 0 instead of raising SystemExit."""
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert "checkconfig" in out


def test_unknown_subcommand_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown subcommand is a usage error with status 2."""
    code, _, err = run(capsys, "frobnicate")
    assert code == 2
    assert "invalid choice" in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """``version`` prints ``rtserver <version>``."""
    code, out, _ = run(capsys, "version")
    assert code == 0
    assert out == f"rtserver {__version__}\n"


def test_module_entry_point() -> None:
    """``python -m rtserver.cli version`` runs ``main`` and exits with its status."""
    root = str(Path(rtserver.__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "rtserver.cli", "version"],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"rtserver {__version__}"


# --- checkconfig -----------------------------------------------------------------------


@pytest.mark.parametrize("style", ["option", "positional"])
def test_checkconfig_valid(capsys: pytest.CaptureFixture[str], tmp_path: Path, style: str) -> None:
    """A valid file passes with ``-c FILE`` or ``FILE``."""
    path = secret_config(tmp_path)
    argv = ["-c", path] if style == "option" else [path]
    code, out, err = run(capsys, "checkconfig", *argv)
    assert code == 0
    assert out == "config is valid\n"
    assert err == ""


def test_checkconfig_prints_warnings(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Warnings go to stderr prefixed ``warning: `` and do not fail the check."""
    path = write_config(tmp_path, {"http_api": {"key": "k"}, "client": {"bogus": 1}})
    code, out, err = run(capsys, "checkconfig", path)
    assert code == 0
    assert "config is valid" in out
    assert "warning: unknown key client.bogus" in err


def test_checkconfig_error_names_key(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """An invalid file fails with status 1 and ``error: <key>: ...``."""
    path = write_config(tmp_path, {"client": {"ping_interval": "often"}})
    code, out, err = run(capsys, "checkconfig", "-c", path)
    assert code == 1
    assert out == ""
    assert err.startswith("error: client.ping_interval:")


def test_checkconfig_cross_field_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A cross-field error names the offending namespace key."""
    data = {"channel": {"namespaces": [{"name": "chat"}, {"name": "chat"}]}}
    code, _, err = run(capsys, "checkconfig", write_config(tmp_path, data))
    assert code == 1
    assert "channel.namespaces[1].name" in err


def test_checkconfig_refuses_reflection_on_the_reactor_server(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Reflection is grpcio's service: ``grpc_api.server: h2`` with it names the fix."""
    data = {"grpc_api": {"enabled": True, "key": "k", "server": "h2", "reflection": True}}
    code, _, err = run(capsys, "checkconfig", write_config(tmp_path, data))
    assert code == 1
    assert err.startswith("error: grpc_api.reflection:")
    assert "set grpc_api.server: grpcio, or turn reflection off" in err


def test_checkconfig_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A missing file is an error naming it."""
    code, _, err = run(capsys, "checkconfig", str(tmp_path / "absent.json"))
    assert code == 1
    assert "absent.json" in err


def test_checkconfig_without_file_uses_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    """Without a file the defaults (plus env) are checked, not ``config.json``."""
    code, out, err = run(capsys, "checkconfig")
    assert code == 0
    assert "config is valid" in out
    assert "warning: http_api.key is empty" in err


def test_checkconfig_reads_env(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Environment variables are part of the checked configuration."""
    monkeypatch.setenv("RTSERVER_ENGINE_TYPE", "nats")
    code, _, err = run(capsys, "checkconfig")
    assert code == 1
    assert "error: engine.type" in err


def test_checkconfig_conflicting_files(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Giving two different files (``-c`` and positional) is an error."""
    a, b = secret_config(tmp_path), write_config(tmp_path, {}, "other.json")
    code, _, err = run(capsys, "checkconfig", "-c", a, b)
    assert code == 1
    assert err.startswith("error: ")


# --- genconfig -------------------------------------------------------------------------


def _read(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        return tomllib.loads(text)
    if path.suffix in (".yaml", ".yml"):
        return yaml.safe_load(text)
    return json.loads(text)


@pytest.mark.parametrize("name", ["gen.json", "gen.yaml", "gen.yml", "gen.toml"])
def test_genconfig_formats(capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str) -> None:
    """``genconfig`` writes a minimal config with fresh secrets that checkconfig accepts."""
    path = tmp_path / name
    code, out, err = run(capsys, "genconfig", "-c", str(path))
    assert code == 0, err
    data = _read(path)
    secret = data["client"]["token"]["hmac_secret_key"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{86}", secret)  # 64 bytes, base64url, no padding
    assert data["client"]["allowed_origins"] == []
    assert uuid.UUID(data["http_api"]["key"]).version == 4
    assert secret not in out + err
    assert data["http_api"]["key"] not in out + err
    code, out, err = run(capsys, "checkconfig", str(path))
    assert (code, out, err) == (0, "config is valid\n", "")
    cfg, _ = config.load(path, environ={})
    assert cfg.client.token.hmac_secret_key == secret


def test_genconfig_turns_on_the_admin_ui(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The generated config enables the admin UI with a fresh password and secret.

    The output says how to start, where to go and the password (no other secret).
    """
    code, out, err = run(capsys, "genconfig", "-c", "gen.yaml")
    assert code == 0, err
    admin = _read(tmp_path / "gen.yaml")["admin"]
    assert admin["enabled"] is True
    assert len(admin["password"]) >= 16 and len(admin["secret"]) >= 40
    assert f"admin password:    {admin['password']}\n" in out
    assert "admin web UI:      http://localhost:8000/\n" in out
    assert "twistd -n rtserver -c gen.yaml" in out
    assert admin["secret"] not in out + err
    other = tmp_path / "other.json"
    run(capsys, "genconfig", "-c", str(other))
    assert _read(other)["admin"]["password"] != admin["password"]


def test_genconfig_default_path(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Without ``-c`` genconfig writes ``config.json`` in the current directory."""
    code, _, _ = run(capsys, "genconfig")
    assert code == 0
    assert "hmac_secret_key" in (tmp_path / "config.json").read_text(encoding="utf-8")


def test_genconfig_refuses_to_overwrite(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """``genconfig`` leaves an existing file alone and exits 1."""
    path = tmp_path / "config.json"
    path.write_text("{}", encoding="utf-8")
    code, _, err = run(capsys, "genconfig", "-c", str(path))
    assert code == 1
    assert "already exists" in err
    assert path.read_text(encoding="utf-8") == "{}"


def test_genconfig_fresh_secrets(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Two runs produce different secrets and API keys."""
    run(capsys, "genconfig", "-c", "a.json")
    run(capsys, "genconfig", "-c", "b.json")
    a, b = _read(tmp_path / "a.json"), _read(tmp_path / "b.json")
    assert a["client"]["token"] != b["client"]["token"]
    assert a["http_api"] != b["http_api"]


def test_genconfig_unknown_extension(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """An extension that names no supported format is refused without writing."""
    code, _, err = run(capsys, "genconfig", "-c", "config.ini")
    assert code == 1
    assert "error: " in err
    assert not (tmp_path / "config.ini").exists()


# --- defaultconfig ---------------------------------------------------------------------


def test_defaultconfig_dry_run(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """``--dry-run`` prints the default tree as JSON and writes nothing."""
    code, out, _ = run(capsys, "defaultconfig", "--dry-run")
    assert code == 0
    assert json.loads(out) == config.default_tree()
    assert not (tmp_path / "config.json").exists()


@pytest.mark.parametrize("name", ["config.json", "d.yaml", "d.toml"])
def test_defaultconfig_writes_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str
) -> None:
    """``defaultconfig`` writes the defaults in the file's format; they load as ``Config()``."""
    argv = ["defaultconfig"] if name == "config.json" else ["defaultconfig", "-c", name]
    code, _, _ = run(capsys, *argv)
    assert code == 0
    assert _read(tmp_path / name) == config.default_tree()
    assert config.load(tmp_path / name, environ={})[0] == config.Config()


def test_defaultconfig_refuses_to_overwrite(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """``defaultconfig`` does not overwrite an existing file."""
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    code, _, err = run(capsys, "defaultconfig")
    assert code == 1
    assert "already exists" in err


# --- defaultenv ------------------------------------------------------------------------


def test_defaultenv_lists_every_variable(capsys: pytest.CaptureFixture[str]) -> None:
    """``defaultenv`` prints one ``NAME=value`` line per ``env_names()`` entry, in order."""
    code, out, _ = run(capsys, "defaultenv")
    assert code == 0
    names = [line.split("=", 1)[0] for line in out.splitlines()]
    assert names == config.env_names()
    assert "RTSERVER_CLIENT_PING_INTERVAL=25s" in out.splitlines()
    assert "RTSERVER_CHANNEL_NAMESPACES=[]" in out.splitlines()
    assert "RTSERVER_HEALTH_ENABLED=true" in out.splitlines()
    assert "RTSERVER_CHANNEL_PRIVATE_PREFIX=$" in out.splitlines()


def test_defaultenv_round_trips(capsys: pytest.CaptureFixture[str]) -> None:
    """Feeding defaultenv's output back as the environment gives the defaults."""
    run(capsys, "defaultenv")
    _, out, _ = run(capsys, "defaultenv")
    environ = dict(line.split("=", 1) for line in out.splitlines())
    assert config.load(environ=environ)[0] == config.Config()


def test_env_defaults_formats() -> None:
    """String lists are space-separated and object lists are JSON."""
    defaults = env_defaults()
    assert defaults["RTSERVER_CLIENT_ALLOWED_ORIGINS"] == ""
    assert defaults["RTSERVER_CHANNEL_NAMESPACES"] == "[]"
    assert defaults["RTSERVER_CLIENT_INSECURE"] == "false"


# --- gentoken / checktoken -------------------------------------------------------------


def test_gentoken_checktoken_round_trip(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """``gentoken`` output verifies with PyJWT and with checktoken."""
    path = secret_config(tmp_path)
    before = int(time.time())
    code, out, err = run(capsys, "gentoken", "-c", path, "-u", "alice")
    assert code == 0, err
    header, token = out.strip().splitlines()
    assert header == 'HMAC SHA-256 JWT for user "alice" with expiration TTL 168h0m0s:'
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = decode(token)
    assert claims["sub"] == "alice"
    assert before <= claims["iat"] <= int(time.time())
    assert claims["exp"] - claims["iat"] == WEEK
    assert "channel" not in claims
    assert SECRET not in out + err
    code, out, _ = run(capsys, "checktoken", "-c", path, token)
    assert code == 0
    assert json.loads(out) == claims


def test_gentoken_quiet(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """``-q`` prints only the token."""
    code, out, _ = run(capsys, "gentoken", "-c", secret_config(tmp_path), "-u", "bob", "-q")
    assert code == 0
    assert len(out.splitlines()) == 1
    assert decode(out.strip())["sub"] == "bob"


def test_gentoken_ttl(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """``-t`` sets the lifetime and the header shows it Go-style."""
    _, out, _ = run(capsys, "gentoken", "-c", secret_config(tmp_path), "-u", "x", "-t", "5400")
    assert "with expiration TTL 1h30m0s:" in out
    claims = decode(last_line(out))
    assert claims["exp"] - claims["iat"] == 5400


def test_gentoken_no_expiration(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """``-t -1`` makes a token without ``exp``."""
    _, out, _ = run(capsys, "gentoken", "-c", secret_config(tmp_path), "-u", "x", "-t", "-1")
    assert 'for user "x" without expiration:' in out
    assert "exp" not in decode(last_line(out))


def test_gentoken_anonymous(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """An empty user gives an anonymous token (``sub: ""``)."""
    _, out, _ = run(capsys, "gentoken", "-c", secret_config(tmp_path), "-u", "")
    assert out.startswith("HMAC SHA-256 JWT for anonymous user with expiration TTL 168h0m0s:")
    assert decode(last_line(out))["sub"] == ""


def test_gentoken_secret_from_env(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a file the secret comes from ``RTSERVER_CLIENT_TOKEN_HMAC_SECRET_KEY``."""
    monkeypatch.setenv("RTSERVER_CLIENT_TOKEN_HMAC_SECRET_KEY", SECRET)
    code, out, _ = run(capsys, "gentoken", "-u", "env", "-q")
    assert code == 0
    assert decode(out.strip())["sub"] == "env"


def test_gentoken_without_secret(capsys: pytest.CaptureFixture[str]) -> None:
    """``gentoken`` fails with status 1 when no HMAC secret is configured."""
    code, out, err = run(capsys, "gentoken", "-u", "alice")
    assert code == 1
    assert out == ""
    assert err.startswith("error: client.token.hmac_secret_key")


def test_gentoken_bad_config(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """An invalid config file makes gentoken fail naming the key."""
    path = write_config(tmp_path, {"client": {"token": {"hmac_secret_key": 1}}})
    code, _, err = run(capsys, "gentoken", "-c", path, "-u", "a")
    assert code == 1
    assert "client.token.hmac_secret_key" in err


def test_gentoken_short_secret_warns(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A short HMAC secret still works; PyJWT's advice becomes a ``warning:`` line."""
    path = write_config(tmp_path, {"client": {"token": {"hmac_secret_key": "short"}}})
    code, out, err = run(capsys, "gentoken", "-c", path, "-u", "a", "-q")
    assert code == 0
    assert err.startswith("warning: ")
    assert "short" not in err
    code, _, _ = run(capsys, "checktoken", "-c", path, out.strip())
    assert code == 0


def test_checktoken_expired(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """An expired token fails with status 1 and says so."""
    token = jwt.encode({"sub": "a", "exp": int(time.time()) - 10}, SECRET, algorithm="HS256")
    code, out, err = run(capsys, "checktoken", "-c", secret_config(tmp_path), token)
    assert code == 1
    assert out == ""
    assert err.startswith("error: ")
    assert "expired" in err


def test_checktoken_bad_signature(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A token signed with another secret fails."""
    token = jwt.encode({"sub": "a"}, "x" * 64, algorithm="HS256")
    code, _, err = run(capsys, "checktoken", "-c", secret_config(tmp_path), token)
    assert code == 1
    assert "signature" in err.lower()


def test_checktoken_garbage(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A string that is not a JWT fails cleanly."""
    code, _, err = run(capsys, "checktoken", "-c", secret_config(tmp_path), "not-a-token")
    assert code == 1
    assert err.startswith("error: invalid token")


def test_checktoken_alg_none_rejected(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Unsigned (``alg: none``) tokens are rejected."""
    token = jwt.encode({"sub": "a"}, None, algorithm="none")
    code, _, err = run(capsys, "checktoken", "-c", secret_config(tmp_path), token)
    assert code == 1
    assert "algorithm" in err


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_checktoken_hmac_algorithms(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, alg: str
) -> None:
    """HS256, HS384 and HS512 tokens all verify against the HMAC secret."""
    token = jwt.encode({"sub": "a"}, SECRET, algorithm=alg)
    code, out, _ = run(capsys, "checktoken", "-c", secret_config(tmp_path), token)
    assert code == 0
    assert json.loads(out) == {"sub": "a"}


def test_checktoken_rejects_subscription_token(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A token with a ``channel`` claim is not a connection token."""
    token = jwt.encode({"sub": "a", "channel": "news"}, SECRET, algorithm="HS256")
    code, _, err = run(capsys, "checktoken", "-c", secret_config(tmp_path), token)
    assert code == 1
    assert "channel" in err


def test_checktoken_without_key(capsys: pytest.CaptureFixture[str]) -> None:
    """``checktoken`` fails when the token's algorithm has no configured key."""
    token = jwt.encode({"sub": "a"}, SECRET, algorithm="HS256")
    code, _, err = run(capsys, "checktoken", token)
    assert code == 1
    assert "client.token.hmac_secret_key" in err


def test_checktoken_audience_and_issuer(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Configured audience and issuer are enforced."""
    path = secret_config(tmp_path, audience="aud1", issuer="iss1")
    good = jwt.encode({"sub": "a", "aud": "aud1", "iss": "iss1"}, SECRET, algorithm="HS256")
    assert run(capsys, "checktoken", "-c", path, good)[0] == 0
    bad_aud = jwt.encode({"sub": "a", "aud": "other", "iss": "iss1"}, SECRET, algorithm="HS256")
    assert run(capsys, "checktoken", "-c", path, bad_aud)[0] == 1
    bad_iss = jwt.encode({"sub": "a", "aud": "aud1", "iss": "other"}, SECRET, algorithm="HS256")
    assert run(capsys, "checktoken", "-c", path, bad_iss)[0] == 1


def test_checktoken_ignores_aud_when_not_configured(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Without ``client.token.audience`` an ``aud`` claim is not checked (as in Centrifugo)."""
    token = jwt.encode({"sub": "a", "aud": "anything"}, SECRET, algorithm="HS256")
    assert run(capsys, "checktoken", "-c", secret_config(tmp_path), token)[0] == 0


def _pem_public(private: Any) -> str:
    return (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def test_checktoken_rsa_and_ecdsa(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """RS256 and ES256 tokens verify against configured PEM public keys."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    path = write_config(
        tmp_path,
        {
            "client": {
                "token": {
                    "rsa_public_key": _pem_public(rsa_key),
                    "ecdsa_public_key": _pem_public(ec_key),
                }
            }
        },
    )
    for key, alg in ((rsa_key, "RS256"), (ec_key, "ES256"), (rsa_key, "RS512")):
        token = jwt.encode({"sub": alg}, key, algorithm=alg)
        code, out, err = run(capsys, "checktoken", "-c", path, token)
        assert code == 0, err
        assert json.loads(out) == {"sub": alg}
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    code, _, _ = run(capsys, "checktoken", "-c", path, jwt.encode({}, other, algorithm="RS256"))
    assert code == 1
    hmac_token = jwt.encode({"sub": "a"}, SECRET, algorithm="HS256")
    code, _, err = run(capsys, "checktoken", "-c", path, hmac_token)
    assert code == 1
    assert "hmac_secret_key" in err


# --- gensubtoken / checksubtoken -------------------------------------------------------


def test_gensubtoken_checksubtoken_round_trip(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """``gensubtoken`` adds a ``channel`` claim and checksubtoken accepts the result."""
    path = secret_config(tmp_path)
    code, out, err = run(capsys, "gensubtoken", "-c", path, "-u", "alice", "-s", "chat:room")
    assert code == 0, err
    header, token = out.strip().splitlines()
    assert header == (
        'HMAC SHA-256 JWT for user "alice" and channel "chat:room" with expiration TTL 168h0m0s:'
    )
    claims = decode(token)
    assert claims["sub"] == "alice"
    assert claims["channel"] == "chat:room"
    assert claims["exp"] - claims["iat"] == WEEK
    code, out, _ = run(capsys, "checksubtoken", "-c", path, token)
    assert code == 0
    assert json.loads(out) == claims


def test_gensubtoken_quiet_and_no_exp(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """``-q`` and ``-t -1`` work for subscription tokens too."""
    argv = ["gensubtoken", "-c", secret_config(tmp_path), "-u", "a", "-s", "c", "-t", "-1", "-q"]
    code, out, _ = run(capsys, *argv)
    assert code == 0
    claims = decode(out.strip())
    assert claims["channel"] == "c"
    assert "exp" not in claims


def test_gensubtoken_uses_subscription_secret(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """With ``client.subscription_token.enabled`` the separate secret signs and verifies."""
    data = {
        "client": {
            "token": {"hmac_secret_key": SECRET},
            "subscription_token": {"enabled": True, "hmac_secret_key": SUB_SECRET},
        }
    }
    path = write_config(tmp_path, data)
    code, out, _ = run(capsys, "gensubtoken", "-c", path, "-u", "a", "-s", "news", "-q")
    assert code == 0
    token = out.strip()
    assert decode(token, SUB_SECRET)["channel"] == "news"
    with pytest.raises(jwt.InvalidSignatureError):
        decode(token, SECRET)
    assert run(capsys, "checksubtoken", "-c", path, token)[0] == 0
    other = jwt.encode({"sub": "a", "channel": "news"}, SECRET, algorithm="HS256")
    assert run(capsys, "checksubtoken", "-c", path, other)[0] == 1


def test_gensubtoken_subscription_secret_missing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Enabled subscription tokens without their own secret cannot be generated."""
    data = {
        "client": {"token": {"hmac_secret_key": SECRET}, "subscription_token": {"enabled": True}}
    }
    code, _, err = run(capsys, "gensubtoken", "-c", write_config(tmp_path, data), "-s", "c")
    assert code == 1
    assert "client.subscription_token.hmac_secret_key" in err


def test_gensubtoken_needs_channel(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A missing ``-s`` is a usage error; an empty one is an error."""
    path = secret_config(tmp_path)
    assert run(capsys, "gensubtoken", "-c", path, "-u", "a")[0] == 2
    code, _, err = run(capsys, "gensubtoken", "-c", path, "-u", "a", "-s", "")
    assert code == 1
    assert "channel" in err


def test_checksubtoken_rejects_connection_token(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A token without ``channel`` is not a subscription token."""
    path = secret_config(tmp_path)
    _, out, _ = run(capsys, "gentoken", "-c", path, "-u", "a", "-q")
    code, _, err = run(capsys, "checksubtoken", "-c", path, out.strip())
    assert code == 1
    assert "channel" in err


def test_checksubtoken_expired(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """An expired subscription token fails."""
    claims = {"sub": "a", "channel": "c", "exp": int(time.time()) - 5}
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    code, _, err = run(capsys, "checksubtoken", "-c", secret_config(tmp_path), token)
    assert code == 1
    assert "expired" in err


# --- helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (5, "5s"), (90, "1m30s"), (3600, "1h0m0s"), (5400, "1h30m0s"), (WEEK, "168h0m0s")],
)
def test_format_go_duration(seconds: int, text: str) -> None:
    """Whole seconds render like Go's ``time.Duration`` strings."""
    assert format_go_duration(seconds) == text


TOML_TREES: list[dict[str, Any]] = [
    {},
    {"a": 1, "b": {"c": "x"}},
    config.default_tree(),
    {
        "top": True,
        "channel": {
            "without_namespace": {"presence": True},
            "namespaces": [
                {"name": "chat", "history_ttl": "300s", "opts": {"x": [1, 2]}},
                {"name": "news"},
            ],
        },
        "empty": {},
        "strings": ['q"uote', "back\\slash", "tab\tnew\nline\r", "ctl\x01\x7f", "ünï ☃"],
        "odd key": {"with.dot": 1.5, "": -2},
        "nested": [[1, 2], ["a"], []],
        "inline": [{"a": 1}, 2],
        "floats": [0.1, 1e20, -3.0],
    },
]


@pytest.mark.parametrize("tree", TOML_TREES)
def test_to_toml_round_trips(tree: dict[str, Any]) -> None:
    """``to_toml`` output parses back to the same tree with ``tomllib``."""
    assert tomllib.loads(to_toml(tree)) == tree


def test_to_toml_special_floats() -> None:
    """Infinity and NaN use TOML's ``inf``/``nan``."""
    parsed = tomllib.loads(to_toml({"a": math.inf, "b": -math.inf, "c": math.nan}))
    assert parsed["a"] == math.inf and parsed["b"] == -math.inf and math.isnan(parsed["c"])


def test_to_toml_rejects_none() -> None:
    """``None`` has no TOML form."""
    with pytest.raises(TypeError):
        to_toml({"a": None})
