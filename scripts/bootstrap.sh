# Sourced by demo.sh and test.sh: makes .venv with edgefleet installed (extras: $EXTRAS).
# Works on a fresh Debian/Ubuntu with Python 3.11+; installs python3-venv if it is missing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
    command -v apt-get >/dev/null || { echo "please install: $*" >&2; return 1; }
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

PYTHON="${PYTHON:-python3}"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "edgefleet needs Python 3.11 or newer ($PYTHON is $("$PYTHON" --version 2>&1))" >&2
    exit 1
}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv
    "$PYTHON" -m venv .venv
fi
STAMP=".venv/.edgefleet-installed-$EXTRAS"
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[$EXTRAS]"
    touch "$STAMP"
fi
