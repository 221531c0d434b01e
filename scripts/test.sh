#!/usr/bin/env bash
# Install everything the test suite needs, then run all of it.
#   Python packages (pip), the official JS client for interop tests (npm),
#   and, when missing and we may install system packages, redis-server and chromium (apt-get).
# Extra arguments go to pytest, e.g.  scripts/test.sh -k websocket
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
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
exec python3 -m pytest "$@"
