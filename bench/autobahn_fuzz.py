"""Run the Autobahn WebSocket fuzzing suite against rtserver's WebSocket stack.

Starts ``twistd -n -y tac/sockjs-conformance.tac`` on a free loopback port and points
the Autobahn fuzzing client (``kosoku``, a Python 3 build of the Autobahn TestSuite
cases: ``pip install kosoku``) at its ``/websocket_echo`` service: rtserver's WebSocket
options (``rtserver/connections.py``) on twisted.web, text echoed through rtserver's
own frame writer, message and frame limit raised to 64 MiB. Prints a table of verdicts
per category and every case that is not OK; exits 1 when a case FAILED or ERRORed
(UNIMPLEMENTED, NON-STRICT and INFORMATIONAL pass, as in Autobahn's own reports).

Usage::

    python3 bench/autobahn_fuzz.py                      # the whole suite (~520 cases)
    python3 bench/autobahn_fuzz.py --cases '1.*' --cases 7.5.1 --exclude '9.*'
    python3 bench/autobahn_fuzz.py --json out.json --reports reports/  # + HTML/JSON reports
    python3 bench/autobahn_fuzz.py --url ws://127.0.0.1:8081/websocket_echo  # a running server
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TAC = REPO / "tac" / "sockjs-conformance.tac"

CATEGORIES = {
    "1": "Framing",
    "2": "Pings/Pongs",
    "3": "Reserved Bits",
    "4": "Opcodes",
    "5": "Fragmentation",
    "6": "UTF-8 Handling",
    "7": "Close Handling",
    "9": "Limits/Performance",
    "10": "Miscellaneous",
    "12": "Compression (payloads)",
    "13": "Compression (parameters)",
}
VERDICTS = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED", "ERROR")
BAD = {"FAILED", "ERROR"}


def free_port() -> int:
    """A currently unused loopback TCP port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def twistd() -> str:
    """The twistd next to this interpreter, else the one on PATH."""
    candidate = Path(sys.executable).with_name("twistd")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("twistd")
    if found is None:
        raise SystemExit(f"no twistd next to {sys.executable} nor on PATH")
    return found


@contextmanager
def conformance_server(log: Path) -> Iterator[str]:
    """``tac/sockjs-conformance.tac`` on a free loopback port; yields the echo URL."""
    port = free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env["SOCKJS_PORT"] = str(port)
    env["SOCKJS_INTERFACE"] = "127.0.0.1"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [twistd(), "-n", "--pidfile=", "-y", str(TAC)],
            cwd=log.parent,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"twistd exited with {proc.returncode}:\n{log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(
                        f"the tac did not listen within 20 s:\n{log.read_text()}"
                    ) from None
                time.sleep(0.1)
        yield f"ws://127.0.0.1:{port}/websocket_echo"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run_cases(
    url: str, cases: Sequence[str] | None, exclude: Sequence[str] | None, parallelism: int
) -> list[Any]:
    """Every selected case's kosoku ``CaseResult``, failed or not."""
    from kosoku import FailureError, run_fuzzingclient

    async def main() -> list[Any]:
        try:
            return list(await run_fuzzingclient(url, cases or None, exclude or None, parallelism))
        except FailureError as failure:
            return list(failure.results)

    return asyncio.run(main())


def category(case_id: str) -> str:
    """The top-level section of a case id (``"6"`` for ``6.4.3``)."""
    return case_id.split(".", 1)[0]


def summarize(results: Sequence[Any]) -> dict[str, Any]:
    """Verdict counts per category, and every case that is not plainly OK."""
    per: dict[str, Counter[str]] = defaultdict(Counter)
    others = []
    for r in results:
        verdict = r.behavior.value
        per[category(r.case_id)][verdict] += 1
        if verdict != "OK" or r.behavior_close.value not in ("OK", "INFORMATIONAL"):
            others.append(
                {
                    "case": r.case_id,
                    "behavior": verdict,
                    "close": r.behavior_close.value,
                    "remote_close_code": r.remote_close_code,
                    "result": r.result,
                    "description": r.description.strip().splitlines()[0][:100],
                }
            )
    order = sorted(per, key=int)
    return {
        "cases": len(results),
        "per_category": {c: dict(per[c]) for c in order},
        "total": dict(sum(per.values(), Counter())),
        "not_ok": others,
    }


def table(summary: dict[str, Any]) -> str:
    """The summary as a fixed-width text table."""
    head = f"{'category':<30}" + "".join(f"{v:>15}" for v in VERDICTS)
    lines = [head, "-" * len(head)]
    for c, counts in summary["per_category"].items():
        name = f"{c} {CATEGORIES.get(c, '')}"
        lines.append(f"{name:<30}" + "".join(f"{counts.get(v, 0):>15}" for v in VERDICTS))
    lines.append("-" * len(head))
    total = summary["total"]
    name = f"all {summary['cases']}"
    lines.append(f"{name:<30}" + "".join(f"{total.get(v, 0):>15}" for v in VERDICTS))
    if summary["not_ok"]:
        lines.append("")
        lines.append("cases not OK (behavior / close):")
        for case in summary["not_ok"]:
            lines.append(
                f"  {case['case']:<10} {case['behavior']:<14} {case['close']:<14} "
                f"code={case['remote_close_code']}  {case['description']}"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite; print the table; 1 when any case FAILED or ERRORed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", action="append", help="case id or glob (repeatable)")
    parser.add_argument("--exclude", action="append", help="case id or glob to skip")
    parser.add_argument("--parallelism", type=int, default=1, help="cases run at once")
    parser.add_argument("--url", help="a running echo WebSocket instead of starting the tac")
    parser.add_argument("--json", type=Path, help="write the summary here as JSON")
    parser.add_argument("--reports", type=Path, help="write Autobahn HTML/JSON reports here")
    args = parser.parse_args(argv)

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="autobahn-") as tmp:
        if args.url:
            results = run_cases(args.url, args.cases, args.exclude, args.parallelism)
        else:
            with conformance_server(Path(tmp) / "twistd.log") as url:
                results = run_cases(url, args.cases, args.exclude, args.parallelism)
    elapsed = time.monotonic() - started
    if not results:
        print("no case selected", file=sys.stderr)
        return 2
    summary = summarize(results)
    summary["seconds"] = round(elapsed, 1)
    print(table(summary))
    print(f"\n{summary['cases']} cases in {elapsed:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    if args.reports:
        from kosoku._report import write_reports

        write_reports(results, str(args.reports))
    return 1 if any(summary["total"].get(v) for v in BAD) else 0


if __name__ == "__main__":
    sys.exit(main())
