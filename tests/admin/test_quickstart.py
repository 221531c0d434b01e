"""The quick start, run as a newcomer would: real ``rtserver genconfig`` and ``twistd``.

Without a config the server says in its first lines what it runs and why clients and
API calls are refused; with the file ``genconfig`` writes, the URL it prints serves the
admin page, the printed password logs in and a publish through the admin API works.
Last, the README's quick-start commands run literally in a fresh virtualenv, from a copy
of the checkout.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
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


# --- the README, literally --------------------------------------------------------------

#: pip installs every dependency into the fresh virtualenv (from pip's configured index).
INSTALL_TIMEOUT = 150.0


def readme_quick_start() -> list[str]:
    """The literal blocks (``::``) of README.rst's "Quick start" section, in order."""
    text = (REPO_ROOT / "README.rst").read_text(encoding="utf-8")
    section = text.split("\nQuick start\n-----------\n", 1)[1]
    section = re.split(r"\n\S[^\n]*\n-+\n", section, maxsplit=1)[0]
    return [textwrap.dedent(block).strip() for block in re.findall(r"::\n\n((?: {4}.*\n)+)", section)]


#: Left out of the copy when the checkout is not a git work tree (an unpacked archive).
_NOT_SOURCES = shutil.ignore_patterns(
    ".git", "node_modules", "__pycache__", "*.egg-info", "build", "dist", ".*_cache",
    ".hypothesis", ".coverage*", "_trial_temp",
)


def _copy_checkout(dest: Path) -> None:
    """The files of the working tree git knows about (tracked or new, not ignored)."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT, capture_output=True, check=False, timeout=30,
    )
    if listing.returncode != 0:
        shutil.copytree(REPO_ROOT, dest, ignore=_NOT_SOURCES, symlinks=True)
        return
    for name in filter(None, listing.stdout.decode().split("\0")):
        source = REPO_ROOT / name
        if source.is_file() and not source.is_symlink():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


class Shell:
    """``bash -c <command>`` in its own process group; stdout and stderr read line by line."""

    def __init__(self, command: str, cwd: Path, env: dict[str, str]) -> None:
        self.command = command
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.proc = subprocess.Popen(
            ["bash", "-c", command], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first line (from now on) that matches ``pattern``."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                self._queue.put(None)
                break
            self.lines.append(line)
            if found := re.search(pattern, line):
                return found
        raise AssertionError(f"{self.command!r}: no line matching {pattern!r}:\n" + self.output)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def stop(self) -> int:
        """SIGTERM the whole group (bash and twistd); the exit code of bash."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            code = self.proc.wait(timeout=5)
        self._reader.join(timeout=5)
        while not self._queue.empty():
            line = self._queue.get_nowait()
            if line is not None:
                self.lines.append(line)
        return code


def _get(url: str, timeout: float = 10.0) -> requests.Response:
    """GET ``url`` until it answers (the listener may open a moment after the log line)."""
    deadline = time.monotonic() + timeout
    with requests.Session() as session:
        session.trust_env = False
        while True:
            try:
                return session.get(url, timeout=5)
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


@pytest.mark.timeout(INSTALL_TIMEOUT + 60)
def test_readme_quick_start_literally_in_a_fresh_virtualenv(tmp_path: Path) -> None:
    """The README's commands, as written, in a new virtualenv: the printed URLs answer.

    ``pip install . && twistd -n rtserver`` installs and starts a server whose first line
    says what it runs; ``rtserver genconfig && twistd -n rtserver -c config.json`` prints
    a URL that serves the admin page and a password that logs in and runs the API.
    Only the port is chosen (``RTSERVER_HTTP_SERVER_PORT``), so that the test never
    collides with a server on 8000.
    """
    commands = readme_quick_start()
    assert commands == [
        "pip install . && twistd -n rtserver",
        "rtserver genconfig && twistd -n rtserver -c config.json",
        "./scripts/test.sh",
    ]
    checkout, venv = tmp_path / "rtserver", tmp_path / "venv"
    _copy_checkout(checkout)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    port = free_port()
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("RTSERVER_", "CENTRIFUGO_", "PYTHON", "COV_", "COVERAGE_"))
    }
    env.update(  # what ``. venv/bin/activate`` sets
        VIRTUAL_ENV=str(venv),
        PATH=os.pathsep.join([str(venv / "bin"), env.get("PATH", "")]),
        RTSERVER_HTTP_SERVER_PORT=str(port),
    )

    first = Shell(commands[0], checkout, env)
    try:
        first.wait_for(r"Successfully installed .*\brtserver-", INSTALL_TIMEOUT)
        line = first.wait_for(r"no config file given.*", 30)
        assert f"HTTP on port {port}" in line.group(0), first.output
        assert _get(f"http://127.0.0.1:{port}/health").status_code == 200
    finally:
        first.stop()
    assert "Traceback" not in first.output, first.output
    assert (venv / "bin" / "rtserver").is_file()  # the install went into the virtualenv

    second = Shell(commands[1], checkout, env)
    try:
        url = second.wait_for(r"admin web UI:\s+(\S+)", 30).group(1)
        password = second.wait_for(r"admin password:\s+(\S+)", 5).group(1)
        second.wait_for(r"admin web UI at " + re.escape(url), 30)
        assert url == f"http://localhost:{port}/"
        base = url.replace("localhost", "127.0.0.1").rstrip("/")
        page = _get(base + "/")
        assert page.status_code == 200 and "<title>rtserver admin</title>" in page.text
        with requests.Session() as session:
            session.trust_env = False
            login = session.post(base + "/admin/auth", data={"password": password}, timeout=5)
            assert login.status_code == 200, login.text
            info = session.post(
                base + "/admin/api/info", json={},
                headers={"Authorization": "token " + login.json()["token"]}, timeout=5,
            )
        assert info.status_code == 200 and len(info.json()["result"]["nodes"]) == 1
    finally:
        second.stop()
    assert "Traceback" not in second.output, second.output
