#!/usr/bin/env bash
# The whole test suite: installs what it needs (a venv with the dev extra, mosquitto), then
# ruff, mypy --strict and pytest. Extra arguments go to pytest.
EXTRAS=dev
source "$(dirname "$0")/bootstrap.sh"
if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then
    apt_install mosquitto
fi
echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy --strict"
.venv/bin/mypy .
echo "== pytest"
.venv/bin/pytest "$@"
