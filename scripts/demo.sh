#!/usr/bin/env bash
# The demo: installs edgefleet (sim extra) into .venv and runs `edgefleet demo`.
# Extra arguments go to `edgefleet demo` (see `.venv/bin/edgefleet demo --help`).
EXTRAS=sim
source "$(dirname "$0")/bootstrap.sh"
exec .venv/bin/edgefleet demo "$@"
