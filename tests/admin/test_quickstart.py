"""The quick start, run as a newcomer would: real ``rtserver genconfig`` and ``twistd``.

Without a config the server says in its first lines what it runs and why clients and
API calls are refused; with the file ``genconfig`` writes, the URL it prints serves the
admin page, the printed password logs in and a publish through the admin API works.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests
from harness import (
    REPO_ROOT,
    SUBPROCESS_HOOK,
    _stop,
    _twistd,
    _wait_healthy,
    free_port,
)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RTSERVER_", "CENTRIFUGO_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(SUBPROCESS_HOOK), str(REPO_ROOT)])
    env.update(extra)
    return env


@contextmanager
def twistd(workdir: Path, *args: str, env: dict[str, str]) -> Iterator[tuple[str, Path]]:
    """``twistd -n rtserver <args>`` until healthy; yields its base URL and log file."""
    port = env.get("RTSERVER_HTTP_SERVER_PORT") or str(free_port())
    log = workdir / f"twistd-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [_twistd(), "-n", "--pidfile=", "rtserver", "-p", port, *args],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(proc, base, log)
        yield base, log
    finally:
        code = _stop(proc)
        text = log.read_text(errors="replace")
        assert code in (0, -15), text
        assert "Traceback" not in text and "Unhandled" not in text, text


def test_without_config_the_first_lines_say_what_happens(tmp_path: Path) -> None:
    """No ``-c``: the first log lines say what runs, what is missing and what to do.

    They name the engine, the port, the missing keys and the command that makes a
    working config.
    """
    with twistd(tmp_path, env=_env()) as (base, log):
        port = base.rsplit(":", 1)[1]
        first = log.read_text().splitlines()[:6]
    text = "\n".join(first)
    assert "no config file given" in first[0], text
    assert "memory engine" in first[0] and f"port {port}" in first[0], text
    assert "every client connection is refused" in text
    assert "admin web UI is off" in text
    assert "rtserver genconfig" in text


def test_genconfig_then_the_printed_url_and_password_work(tmp_path: Path) -> None:
    """``rtserver genconfig`` prints a start command, a URL and a password that work.

    With that config the URL serves the admin page, and the password logs in and can
    publish.
    """
    port = str(free_port())
    env = _env(RTSERVER_HTTP_SERVER_PORT=port)
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from rtserver.cli import main; sys.exit(main())",
         "genconfig"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=True,
    )
    out = done.stdout
    assert "twistd -n rtserver -c config.json" in out
    url = re.search(r"admin web UI:\s+(\S+)", out)
    password = re.search(r"admin password:\s+(\S+)", out)
    assert url and password, out
    assert url.group(1) == f"http://localhost:{port}/"
    with twistd(tmp_path, "-c", "config.json", env=env) as (base, log):
        assert f"admin web UI at http://localhost:{port}/" in log.read_text()
        session = requests.Session()
        session.trust_env = False
        page = session.get(url.group(1).replace("localhost", "127.0.0.1"), timeout=5)
        assert page.status_code == 200 and "<title>rtserver admin</title>" in page.text
        refused = session.post(f"{base}/admin/auth", data={"password": "nope"}, timeout=5)
        assert refused.status_code == 401
        login = session.post(f"{base}/admin/auth", data={"password": password.group(1)}, timeout=5)
        assert login.status_code == 200
        headers = {"Authorization": "token " + login.json()["token"]}
        reply = session.post(
            f"{base}/admin/api/publish", json={"channel": "news", "data": {"hi": 1}},
            headers=headers, timeout=5,
        )
        assert reply.json() == {"result": {}}
        session.close()
