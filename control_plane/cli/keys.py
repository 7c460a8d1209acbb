"""``edgefleet keys rotate|retire|show``: signing-key rotation, run where the key files are
(like ``edgefleet init``); a running control plane reloads its keys at its next tick."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer

from control_plane.cli.common import (
    DataDirOpt,
    Output,
    OutputOpt,
    console,
    fail,
    local_settings,
    out,
    print_json,
)

if TYPE_CHECKING:
    from sqlmodel import Session

    from control_plane.config import ServerSettings

keys_app = typer.Typer(help="Signing keys: rotate, retire, show.", no_args_is_help=True)


class RoleName(StrEnum):
    MODEL = "model"
    DEPLOYMENT = "deployment"


RoleOpt = Annotated[RoleName, typer.Option(help="Which key: model or deployment.")]


@contextmanager
def _opened(data_dir: DataDirOpt) -> Iterator[tuple[Session, ServerSettings]]:
    from sqlmodel import Session

    from control_plane.store.db import create_db_engine, migrate

    settings = local_settings(data_dir)
    engine = create_db_engine(settings.resolved_database_url)
    try:
        migrate(engine)
        with Session(engine) as session:
            yield session, settings
    finally:
        engine.dispose()


@keys_app.command("rotate")
def keys_rotate(role: RoleOpt, data_dir: DataDirOpt = None) -> None:
    """Make a new ROLE key: the next trust-store version, signed by the current keys,
    trusts it beside the old one (both verify), and from now on it signs. Devices follow at
    their next desired state. Once they have: `edgefleet keys retire --role ROLE`. Prints
    the new trust-store version last."""
    from control_plane.auth.rotation import rotate
    from control_plane.errors import ControlPlaneError
    from shared.signing import KeyRole

    with _opened(data_dir) as (session, settings):
        try:
            signed = rotate(session, settings.keys_dir, KeyRole(role.value))
        except ControlPlaneError as exc:
            raise fail(exc.message, 1) from exc
    new = [k for k in signed.trust_store.keys if k.role.value == role.value][-1]
    console.print(
        f"new {role.value} key {new.key_id[:16]}…, trusted beside the old one until it is retired",
        highlight=False,
    )
    print(signed.trust_store.version)


@keys_app.command("retire")
def keys_retire(role: RoleOpt, data_dir: DataDirOpt = None) -> None:
    """Retire the old ROLE key: what it signed that is still in use is signed again by the
    new key (registered model manifests; every device's desired state, with a new
    sequence), and the next trust-store version no longer trusts it. Its key file is
    deleted. Prints the new trust-store version last."""
    from control_plane.auth.rotation import retire
    from control_plane.errors import ControlPlaneError
    from shared.signing import KeyRole

    with _opened(data_dir) as (session, settings):
        ttl = timedelta(seconds=settings.desired_ttl_seconds)
        try:
            signed, reissued = retire(session, settings.keys_dir, KeyRole(role.value), ttl)
        except ControlPlaneError as exc:
            raise fail(exc.message, 1) from exc
    console.print(
        f"old {role.value} key retired; {reissued} desired states signed again",
        highlight=False,
    )
    print(signed.trust_store.version)


@keys_app.command("show")
def keys_show(output: OutputOpt = Output.TABLE, data_dir: DataDirOpt = None) -> None:
    """The latest trust store: its version and the keys it trusts, by role."""
    from control_plane.auth.keys import load_keys
    from control_plane.auth.rotation import latest

    with _opened(data_dir) as (session, settings):
        signed = latest(session, load_keys(settings.keys_dir))
    if output is Output.JSON:
        print_json(signed)
        return
    out.print(f"trust store version {signed.trust_store.version}", highlight=False)
    for key in signed.trust_store.keys:
        out.print(f"  {key.role.value:<11}{key.key_id}", highlight=False)
