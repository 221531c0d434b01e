"""The embedding example of docs/proxies.rst runs as written under ``twistd -ny``.

The ``.tac`` block is taken from the document; the only change is the port (the example
listens on 8000, the test on a free one). centrifuge-python then connects with and without
the session cookie the example's connect hook checks.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from centrifuge import Client, ReplyError
from harness import REPO_ROOT, SUBPROCESS_HOOK, free_port
from pysdk import ClientEvents, Recorder, bounded, run_scenario

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

DOC = REPO_ROOT / "docs" / "proxies.rst"


def tac_example() -> str:
    """The literal block after "A complete ``.tac`` file" (up to an unindented line)."""
    text = DOC.read_text()
    start = text.index("A complete ``.tac`` file")
    lines = text[text.index("::\n", start) + 3 :].splitlines()
    block = []
    for line in lines:
        if line and not line.startswith(" "):
            break
        block.append(line)
    return textwrap.dedent("\n".join(block))


def test_the_documented_tac_runs_and_authenticates_by_cookie(tmp_path: Path) -> None:
    port = free_port()
    source = tac_example()
    marker = '"http_api": {"key": "change-me"},'
    assert marker in source
    source = source.replace(marker, marker + f' "http_server": {{"port": {port}}},')
    tac = tmp_path / "chat.tac"
    tac.write_text(source)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SUBPROCESS_HOOK), str(REPO_ROOT)])
    log = tmp_path / "twistd.log"
    twistd = str(Path(sys.executable).with_name("twistd"))
    with log.open("wb") as out:
        proc = subprocess.Popen([twistd, "-n", "--pidfile=", "-y", str(tac)], cwd=tmp_path,
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        url = f"ws://127.0.0.1:{port}/connection/websocket"

        async def scenario() -> None:
            alice = Client(url, headers={"Cookie": "session=4b2c"}, proxy=None)
            rec = Recorder()
            stranger = Client(url, events=ClientEvents(rec), proxy=None)
            try:
                await alice.connect()
                await bounded(alice.ready())
                assert (await bounded(alice.rpc("whoami", {}))).data == {"user": "alice"}
                with pytest.raises(ReplyError) as err:
                    await bounded(alice.rpc("other", {}))
                assert err.value.code == 1404
                sub = alice.new_subscription("chat:admins")
                await sub.subscribe()
                await bounded(sub.ready())
                await stranger.connect()
                (gone,) = await rec.wait("disconnected")
                assert (gone["code"], gone["reason"]) == (4501, "unauthorized")
            finally:
                await alice.disconnect()
                await stranger.disconnect()

        run_scenario(scenario())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    output = log.read_text()
    assert "Traceback" not in output and "Unhandled" not in output, output
