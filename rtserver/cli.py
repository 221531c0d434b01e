"""The ``rtserver`` command: configuration and token helpers modelled on Centrifugo's CLI.

Subcommands (docs/deployment.rst, "Command line"): ``checkconfig``, ``genconfig``,
``defaultconfig``, ``defaultenv``, ``gentoken``, ``gensubtoken``, ``checktoken``,
``checksubtoken`` and ``version``. ``checktoken``/``checksubtoken`` verify with the
server's own verifier (:mod:`rtserver.auth.jwt`), so they accept exactly the tokens the
server accepts (docs/client-protocol.rst, "Token checks"). Failures print
``error: <message>`` to stderr and exit with status 1; the only secrets ever printed are
a token that was asked for and the admin password ``genconfig`` generated.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import secrets
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jwt
import yaml

from rtserver import __version__, config
from rtserver.auth.jwt import JWTVerifier
from rtserver.core.types import InvalidToken, TokenExpired

#: Default file for ``genconfig`` and ``defaultconfig``.
DEFAULT_CONFIG_FILE = "config.json"
#: Default token lifetime of ``gentoken``/``gensubtoken``: one week, as in Centrifugo.
DEFAULT_TOKEN_TTL = 7 * 24 * 3600

_FORMATS = (".json", ".yaml", ".yml", ".toml")


class CLIError(Exception):
    """A failure reported as ``error: <message>`` with exit status 1."""


# --- small helpers ---------------------------------------------------------------------


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _load(path: str | None) -> config.Config:
    """Load and validate the configuration from ``path`` (or defaults) plus the environment."""
    cfg, _ = config.load(path)
    return cfg


def format_go_duration(seconds: int) -> str:
    """Render whole seconds like Go's ``time.Duration.String`` (``604800`` → ``168h0m0s``).

    Args:
        seconds: A non-negative number of seconds.

    Returns:
        The duration as ``<h>h<m>m<s>s``, dropping leading zero hours and minutes.
    """
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


# --- TOML output -----------------------------------------------------------------------

_TOML_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_TOML_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def _toml_string(text: str) -> str:
    out = []
    for ch in text:
        if ch in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_key(key: str) -> str:
    return key if _TOML_BARE_KEY.match(key) else _toml_string(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        items = ", ".join(f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _toml_table(lines: list[str], path: list[str], table: Mapping[str, Any], array: bool) -> None:
    plain = [
        (k, v) for k, v in table.items() if not isinstance(v, Mapping) and not _is_table_array(v)
    ]
    tables = [(k, v) for k, v in table.items() if isinstance(v, Mapping)]
    arrays = [(k, v) for k, v in table.items() if _is_table_array(v)]
    dotted = ".".join(_toml_key(str(p)) for p in path)
    # A plain table holding only sub-tables needs no header of its own.
    if path and (array or plain or not (tables or arrays)):
        if lines:
            lines.append("")
        lines.append(f"[[{dotted}]]" if array else f"[{dotted}]")
    lines.extend(f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in plain)
    for key, sub in tables:
        _toml_table(lines, [*path, str(key)], sub, array=False)
    for key, items in arrays:
        for item in items:
            _toml_table(lines, [*path, str(key)], item, array=True)


def to_toml(tree: Mapping[str, Any]) -> str:
    """Write a nested mapping as a TOML document.

    Covers what configuration files need: strings, booleans, numbers, arrays, nested
    tables and arrays of tables. ``None`` has no TOML form and raises ``TypeError``.

    Args:
        tree: The document, as JSON-like nested mappings and lists.

    Returns:
        TOML text ending with a newline.
    """
    lines: list[str] = []
    _toml_table(lines, [], tree, array=False)
    return "\n".join(lines) + "\n"


# --- writing config files --------------------------------------------------------------


def _file_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in _FORMATS:
        raise CLIError(f"{path}: unknown config format, use one of {', '.join(_FORMATS)}")
    return suffix


def dump_config(tree: Mapping[str, Any], suffix: str) -> str:
    """Serialize a config tree as JSON, YAML or TOML.

    Args:
        tree: The configuration as nested mappings.
        suffix: ``.json``, ``.yaml``, ``.yml`` or ``.toml``.

    Returns:
        The file contents.
    """
    if suffix in (".yaml", ".yml"):
        return yaml.safe_dump(dict(tree), sort_keys=False, allow_unicode=True)
    if suffix == ".toml":
        return to_toml(tree)
    return json.dumps(tree, indent=2, ensure_ascii=False) + "\n"


def _write_new_file(path: Path, text: str, mode: int) -> None:
    """Create ``path`` with ``text``, refusing to overwrite an existing file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise CLIError(f"{path} already exists, refusing to overwrite it") from None
    except OSError as e:
        raise CLIError(f"cannot create {path}: {e.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


# --- commands --------------------------------------------------------------------------


def cmd_checkconfig(args: argparse.Namespace) -> int:
    """Load and validate a configuration, printing its warnings."""
    if args.file and args.config and args.file != args.config:
        raise CLIError("give the config file either with -c or as an argument, not both")
    cfg, warns = config.load(args.file or args.config)
    # the server checks these at start-up, where in-process hooks may add proxies; a
    # configuration file on its own must name only proxies it configures
    config.check_proxy_references(
        cfg, {kind: set(named) for kind, named in config.proxy_names(cfg).items()}
    )
    for message in warns:
        _warn(message)
    print("config is valid")
    return 0


def cmd_genconfig(args: argparse.Namespace) -> int:
    """Write a minimal configuration with fresh secrets and the admin UI on, then validate it.

    Prints how to start the server, the admin UI's URL and its generated password (the
    one secret shown: the operator needs it to log in; the file holds it too).
    """
    path = Path(args.config)
    password = secrets.token_urlsafe(12)
    tree = {
        "client": {
            "token": {"hmac_secret_key": secrets.token_urlsafe(64)},
            "allowed_origins": [],
        },
        "http_api": {"key": str(uuid.uuid4())},
        "admin": {
            "enabled": True,
            "password": password,
            "secret": secrets.token_urlsafe(32),
        },
    }
    _write_new_file(path, dump_config(tree, _file_format(path)), 0o600)
    _, warns = config.load(path, environ={})
    for message in warns:
        _warn(message)
    cfg, _ = config.load(path)  # the URL as the server will see it (environment included)
    print(f"{path} written")
    print(f"start the server:  twistd -n rtserver -c {path}")
    from rtserver.service import admin_url

    print(f"admin web UI:      {admin_url(cfg)}")
    print(f"admin password:    {password}")
    return 0


def cmd_defaultconfig(args: argparse.Namespace) -> int:
    """Write (or with ``--dry-run`` print as JSON) the full default configuration."""
    tree = config.default_tree()
    if args.dry_run:
        print(json.dumps(tree, indent=2, ensure_ascii=False))
        return 0
    path = Path(args.config)
    _write_new_file(path, dump_config(tree, _file_format(path)), 0o644)
    config.load(path, environ={})
    print(f"{path} written")
    return 0


def env_defaults() -> dict[str, str]:
    """Map every ``RTSERVER_*`` variable to its default, as the env loader would read it.

    Returns:
        Variable name to value text (space-separated lists, JSON for namespaces).
    """
    return {key.env_name: key.env_default for key in config.schema_keys()}


def cmd_defaultenv(args: argparse.Namespace) -> int:
    """Print ``NAME=default`` for every environment variable the loader reads."""
    defaults = env_defaults()
    for name in config.env_names():
        print(f"{name}={defaults.get(name, '')}")
    return 0


def _sub_token_keys(cfg: config.Config) -> tuple[config.TokenConfig, str]:
    """The keys for subscription tokens and the config section they come from."""
    if cfg.client.subscription_token.enabled:
        return cfg.client.subscription_token, "client.subscription_token"
    return cfg.client.token, "client.token"


def _encode(claims: Mapping[str, Any], secret: str) -> str:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        token = jwt.encode(dict(claims), secret, algorithm="HS256")
    for w in caught:
        _warn(str(w.message))
    return token


def _generate(args: argparse.Namespace, keys: config.TokenConfig, section: str) -> int:
    if not keys.hmac_secret_key:
        raise CLIError(f"{section}.hmac_secret_key is not set; it is needed to sign tokens")
    now = int(time.time())
    claims: dict[str, Any] = {"sub": args.user, "iat": now}
    if args.ttl > 0:
        claims["exp"] = now + args.ttl
    channel = getattr(args, "channel", None)
    if channel is not None:
        claims["channel"] = channel
    token = _encode(claims, keys.hmac_secret_key)
    if not args.quiet:
        who = f'user "{args.user}"' if args.user else "anonymous user"
        if channel is not None:
            who += f' and channel "{channel}"'
        exp = (
            f"with expiration TTL {format_go_duration(args.ttl)}"
            if args.ttl > 0
            else "without expiration"
        )
        print(f"HMAC SHA-256 JWT for {who} {exp}:")
    print(token)
    return 0


def cmd_gentoken(args: argparse.Namespace) -> int:
    """Print an HS256 connection token for a user."""
    cfg = _load(args.config)
    return _generate(args, cfg.client.token, "client.token")


def cmd_gensubtoken(args: argparse.Namespace) -> int:
    """Print an HS256 subscription token for a user and channel."""
    if not args.channel:
        raise CLIError("a channel is required (-s CHANNEL)")
    cfg = _load(args.config)
    keys, section = _sub_token_keys(cfg)
    return _generate(args, keys, section)


def _verifier(cfg: config.Config) -> JWTVerifier:
    """The server's verifier for ``cfg``; a section without keys refuses every token."""
    try:
        return JWTVerifier(cfg.client.token, cfg.client.subscription_token)
    except ValueError as e:
        raise CLIError(str(e)) from None


def _print_claims(claims: Mapping[str, Any]) -> None:
    print(json.dumps(claims, indent=2, ensure_ascii=False))


def _check_token(args: argparse.Namespace, subscription: bool) -> int:
    verifier = _verifier(_load(args.config))
    check = verifier.check_subscription_token if subscription else verifier.check_connection_token
    try:
        _, claims = check(args.token, time.time())
    except TokenExpired:
        raise CLIError("invalid token: token expired") from None
    except InvalidToken as e:
        raise CLIError(f"invalid token: {e}") from None
    _print_claims(claims)
    return 0


def cmd_checktoken(args: argparse.Namespace) -> int:
    """Verify a connection token as the server does and print its payload as JSON."""
    return _check_token(args, subscription=False)


def cmd_checksubtoken(args: argparse.Namespace) -> int:
    """Verify a subscription token as the server does and print its payload as JSON."""
    return _check_token(args, subscription=True)


def cmd_version(args: argparse.Namespace) -> int:
    """Print the program version."""
    print(f"rtserver {__version__}")
    return 0


# --- argument parsing ------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """Build the ``rtserver`` argument parser with all subcommands."""
    parser = argparse.ArgumentParser(
        prog="rtserver",
        description="Centrifugo-compatible real-time server: configuration and token helpers.",
    )
    parser.add_argument("--version", action="version", version=f"rtserver {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(
        name: str, handler: Callable[[argparse.Namespace], int], help_text: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    def config_option(p: argparse.ArgumentParser, default: str | None) -> None:
        where = f"default {default}" if default else "default: built-in defaults and env"
        p.add_argument("-c", "--config", default=default, metavar="FILE", help=where)

    p = command("checkconfig", cmd_checkconfig, "validate a configuration file")
    config_option(p, None)
    p.add_argument("file", nargs="?", help="config file (same as -c)")

    p = command("genconfig", cmd_genconfig, "write a minimal config with fresh secrets")
    config_option(p, DEFAULT_CONFIG_FILE)

    p = command("defaultconfig", cmd_defaultconfig, "write the full default configuration")
    config_option(p, DEFAULT_CONFIG_FILE)
    p.add_argument("--dry-run", action="store_true", help="print JSON to stdout instead")

    command("defaultenv", cmd_defaultenv, "print every RTSERVER_* variable with its default")

    for name, handler, help_text in (
        ("gentoken", cmd_gentoken, "generate an HS256 connection token"),
        ("gensubtoken", cmd_gensubtoken, "generate an HS256 subscription token"),
    ):
        p = command(name, handler, help_text)
        config_option(p, None)
        p.add_argument("-u", "--user", default="", help='user ID ("" = anonymous)')
        if name == "gensubtoken":
            p.add_argument("-s", "--channel", required=True, help="channel to subscribe")
        p.add_argument(
            "-t",
            "--ttl",
            type=int,
            default=DEFAULT_TOKEN_TTL,
            metavar="TTL_SECONDS",
            help=f"token lifetime in seconds (default {DEFAULT_TOKEN_TTL}; -1 = no exp)",
        )
        p.add_argument("-q", "--quiet", action="store_true", help="print only the token")

    for name, handler, help_text in (
        ("checktoken", cmd_checktoken, "verify a connection token and print its payload"),
        ("checksubtoken", cmd_checksubtoken, "verify a subscription token, print its payload"),
    ):
        p = command(name, handler, help_text)
        config_option(p, None)
        p.add_argument("token", metavar="TOKEN")

    command("version", cmd_version, "print the version")
    return parser


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    """Run the ``rtserver`` command line.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when ``None``.

    Returns:
        The exit status: 0 on success, 1 on failure, 2 on usage errors.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version and usage errors
        return _exit_status(e.code)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.handler(args)
    except (CLIError, config.ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. ``rtserver defaultenv | head``
        # Point stdout at devnull so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
