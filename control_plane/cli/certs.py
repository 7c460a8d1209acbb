"""``edgefleet certs create``: a private CA and a server certificate for TLS."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from control_plane.cli.common import console, fail

certs_app = typer.Typer(
    help="TLS certificates for the broker and the control plane.", no_args_is_help=True
)


@certs_app.callback()
def certs() -> None:
    """TLS certificates for the broker and the control plane."""


@certs_app.command("create")
def certs_create(
    out: Annotated[
        Path, typer.Option(help="Directory for ca.pem, ca.key, server.pem, server.key.")
    ],
    host: Annotated[
        list[str],
        typer.Option(
            help="A DNS name or IP address clients use to reach the broker or the control "
            "plane (repeatable; the first is the certificate's common name)."
        ),
    ],
    days: Annotated[int, typer.Option(min=1, max=3650, help="Validity.")] = 825,
) -> None:
    """Make a CA (ca.pem for devices; ca.key, mode 0600, kept offline) and a server
    certificate it signs for every --host (server.pem, server.key: mosquitto's TLS listener
    and the control plane's HTTPS). Existing files are never overwritten."""
    from control_plane.certificates import create_certificates

    try:
        paths = create_certificates(out, host, days)
    except (FileExistsError, ValueError) as exc:
        raise fail(str(exc), 2) from exc
    console.print(f"made a CA and a certificate for {', '.join(host)}:", highlight=False)
    for path in paths:
        print(path)
