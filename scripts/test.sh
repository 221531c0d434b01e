#!/usr/bin/env bash
# Install everything the test suite needs, then run all of it under coverage.
#   Python packages (pip), the official JS client for interop tests (npm),
#   and, when missing and we may install system packages, redis-server, nats-server,
#   chromium, node/npm and Go with grpc-go (apt-get).
# Coverage includes the twistd servers the tests start (COVERAGE_PROCESS_START, see
# tests/subprocess_hook/sitecustomize.py); the combined report is printed at the end and
# fails the run below setup.cfg's fail_under when the whole suite ran.
# Extra arguments go to pytest, e.g.  scripts/test.sh -k websocket
# The exit status is pytest's (5 when no test ran), else the coverage report's.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
{ command -v nats-server || test -x /usr/sbin/nats-server; } >/dev/null 2>&1 || need+=(nats-server)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v npm >/dev/null 2>&1 || need+=(nodejs npm)
# grpc-go for tests/interop/test_go_grpc.py (built in GOPATH mode from Debian's sources)
command -v go >/dev/null 2>&1 || need+=(golang-go)
test -d /usr/share/gocode/src/google.golang.org/grpc/encoding/gzip ||
    need+=(golang-google-grpc-dev golang-google-protobuf-dev)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing system packages: ${need[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    else
        echo "warning: ${need[*]} missing and cannot be installed here; those tests will skip" >&2
    fi
fi

python3 -m pip install --disable-pip-version-check -q '.[test]'
npm ci --prefix tests/interop --no-audit --no-fund --loglevel=error

# A run that selects tests (-k/-m expressions, paths) measures only part of the code:
# the report is printed but only whole-suite runs are held to the fail_under threshold.
subset=0
for arg in "$@"; do
    case "$arg" in
        -*) ;;
        *) subset=1 ;;
    esac
done

export COVERAGE_PROCESS_START="$PWD/setup.cfg"
export COVERAGE_FILE="$PWD/.coverage"
python3 -m coverage erase
status=0
python3 -m coverage run -m pytest "$@" || status=$?
python3 -m coverage combine -q || echo "warning: no coverage data to combine" >&2
report=0
if [ "$subset" = 1 ]; then
    python3 -m coverage report --fail-under=0 || true
else
    python3 -m coverage report || report=$?
fi
if [ "$status" -ne 0 ]; then
    exit "$status"
fi
exit "$report"
