#!/bin/sh
# Refresh the admin UI screenshots embedded in docs/admin.rst (docs/_static/admin-*.png):
# the browser test takes them while it drives the UI against a real two-node cluster.
# Needs what tests/browser needs: redis-server, node, chromium, npm ci --prefix tests/interop.
set -e
cd "$(dirname "$0")/.."
RTSERVER_ADMIN_SCREENSHOTS=docs/_static RTSERVER_REQUIRE_ALL=1 \
    python3 -m pytest tests/browser/test_chromium_admin.py -q -p no:cacheprovider
