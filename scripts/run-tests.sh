#!/usr/bin/env bash
# Run the test suite inside a private network namespace (only loopback), so the real peers the
# tests start (Orthanc listens on all interfaces) are unreachable from outside.
# Usage: scripts/run-tests.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
inner='ip link set lo up && AIRCON_TEST_NETNS=1 exec "$0" -m pytest "$@"'
if [ "$(id -u)" = 0 ]; then
  exec unshare -n sh -c "$inner" "$PY" "$@"
else
  exec unshare -rn sh -c "$inner" "$PY" "$@"
fi
