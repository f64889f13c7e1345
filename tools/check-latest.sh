#!/usr/bin/env bash
# The test suite on the newest releases, and which upgraded package broke which test (tools/check_latest.py).
set -euo pipefail
exec python3 "$(dirname "$0")/check_latest.py" "$@"
