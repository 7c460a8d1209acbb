#!/usr/bin/env bash
# The whole test suite: installs what it needs (a venv with the dev extra, mosquitto), then
# ruff, mypy --strict and pytest. Extra arguments go to pytest.
EXTRAS=dev
source "$(dirname "$0")/bootstrap.sh"
if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then
    apt_install mosquitto
fi
# The dashboard's browser tests: Debian's headless Chromium and its driver. Where they cannot
# be installed, those tests are skipped with that reason.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    apt_install chromium chromium-driver || echo "chromium not installed: browser tests skip" >&2
fi
# Artifact mirrors are tested against a real nginx (its service is not started).
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
    apt_install nginx-light || echo "nginx not installed: mirror tests skip" >&2
fi
echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy --strict"
.venv/bin/mypy .
echo "== pytest"
# Two workers, each taking whole files (module fixtures stay in one process). The tests wait
# on the events they judge, never on the clock, so a busy machine only makes them slower.
.venv/bin/pytest -n "${EDGEFLEET_TEST_WORKERS:-2}" --dist loadfile "$@"
