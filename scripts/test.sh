#!/usr/bin/env bash
# The test command: the whole suite, GUI tests included, under a virtual X server.
set -euo pipefail
cd "$(dirname "$0")/.."
export QT_QPA_PLATFORM=xcb MPLBACKEND=Agg
exec xvfb-run -a -s "-screen 0 1600x1000x24" python -m pytest -q -ra "$@"
