#!/usr/bin/env python3
"""Render edgefleet's mosquitto configuration: mosquitto.conf with one listeners part.

    python3 deploy/mosquitto/render.py --auth dynsec \
        port=8883 bind_address=0.0.0.0 cp_port=1884 cp_bind_address=127.0.0.1 \
        certfile=/etc/mosquitto/certs/broker.pem keyfile=/etc/mosquitto/certs/broker.key \
        dynsec_plugin=/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so \
        dynsec_file=/var/lib/mosquitto/dynamic-security.json \
        persistence_location=/var/lib/mosquitto/ log_dest=stdout > /etc/mosquitto/mosquitto.conf

Every placeholder of the two templates must be given (a missing one is an error naming it),
but for ``device_tls``: it is made from ``certfile=`` and ``keyfile=`` (a TLS listener), or
left empty without them (plain MQTT).
Standard library only: it runs on a broker host without edgefleet installed.
"""

from __future__ import annotations

import argparse
import string
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
AUTH_MODES = ("dynsec", "passwd")


def render(auth: str, values: dict[str, object]) -> str:
    """``mosquitto.conf`` with ``listeners-{auth}.conf`` in place of ``${listeners}``."""
    if auth not in AUTH_MODES:
        raise ValueError(f"auth is one of {', '.join(AUTH_MODES)}, not {auth!r}")
    values = {**values, "per_listener_settings": "true" if auth == "passwd" else "false"}
    if "device_tls" not in values:
        tls = [f"{key} {values.pop(key)}" for key in ("certfile", "keyfile") if key in values]
        values["device_tls"] = "\n".join(tls)
    listeners = string.Template((HERE / f"listeners-{auth}.conf").read_text())
    main = string.Template((HERE / "mosquitto.conf").read_text())
    return main.substitute(values, listeners=listeners.substitute(values))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--auth", choices=AUTH_MODES, default="dynsec")
    parser.add_argument("values", nargs="*", metavar="NAME=VALUE")
    args = parser.parse_args(argv)
    values = dict(item.partition("=")[::2] for item in args.values)
    try:
        sys.stdout.write(render(args.auth, values))
    except KeyError as exc:
        parser.error(f"no value for placeholder {exc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
