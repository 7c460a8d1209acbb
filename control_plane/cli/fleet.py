"""Fleet commands: devices (add, list, label, approve, reject, reissue, remove,
pre-authorize), bootstrap tokens devices enroll with, and one-device deployments."""

from __future__ import annotations

import contextlib
import csv
import os
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.table import Table

from control_plane.api.schemas import (
    MAX_REGISTRATIONS,
    BootstrapTokenCreate,
    DeviceCreate,
    DevicesPreauthorize,
)
from control_plane.cli.common import (
    Output,
    OutputOpt,
    TokenOpt,
    UrlOpt,
    api,
    console,
    fail,
    out,
    print_json,
)
from control_plane.client import DEFAULT_URL
from shared.messages import parse_labels

bootstrap_app = typer.Typer(
    help="Bootstrap tokens: what devices enroll with (edgefleet agent enroll).",
    no_args_is_help=True,
)


@bootstrap_app.command("create")
def bootstrap_create(
    name: Annotated[str, typer.Option(help="What it is for, e.g. a production batch.")],
    uses: Annotated[int, typer.Option(min=1, help="Devices it may enroll.")] = 1,
    expires_in: Annotated[
        int, typer.Option(min=60, help="Seconds until it expires (default a day).")
    ] = 86_400,
    label: Annotated[
        list[str] | None,
        typer.Option(help="Label KEY=VALUE given to each device; repeatable.", show_default=False),
    ] = None,
    auto_accept: Annotated[
        bool, typer.Option(help="Accept its devices at once (else they wait as pending).")
    ] = False,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
) -> None:
    """Issue a bootstrap token; prints EDGEFLEET_BOOTSTRAP_TOKEN=<secret> last (shown once)."""
    body = BootstrapTokenCreate(
        name=name,
        uses=uses,
        expires_in_seconds=expires_in,
        labels=_parse_labels(label or []),
        auto_accept=auto_accept,
    )
    with api(url, token) as client:
        issued = client.create_bootstrap_token(body)
    console.print(
        f"bootstrap token {issued.id} {issued.name!r}: {issued.max_uses} uses until "
        f"{issued.expires_at.isoformat(timespec='seconds')}",
        highlight=False,
    )
    print(f"EDGEFLEET_BOOTSTRAP_TOKEN={issued.token}")


@bootstrap_app.command("list")
def bootstrap_list(
    output: OutputOpt = Output.TABLE, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None
) -> None:
    """Bootstrap tokens (never their secrets): uses, expiry, labels, revoked."""
    with api(url, token) as client:
        rows = client.bootstrap_tokens()
    if output is Output.JSON:
        print_json(rows)
        return
    table = Table("id", "name", "used", "expires", "labels", "auto-accept", "revoked")
    for row in rows:
        table.add_row(
            str(row.id),
            row.name,
            f"{row.uses}/{row.max_uses}",
            row.expires_at.isoformat(timespec="seconds"),
            ",".join(f"{k}={v}" for k, v in sorted(row.labels.items())),
            "yes" if row.auto_accept else "no",
            row.revoked_at.isoformat(timespec="seconds") if row.revoked_at else "",
        )
    out.print(table)


@bootstrap_app.command("revoke")
def bootstrap_revoke(
    token_id: Annotated[int, typer.Argument(help="Bootstrap token id (bootstrap-tokens list).")],
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
) -> None:
    """Revoke a bootstrap token (the devices it enrolled stay)."""
    with api(url, token) as client:
        revoked = client.revoke_bootstrap_token(token_id)
    console.print(f"bootstrap token {revoked.id} {revoked.name!r} revoked", highlight=False)


devices_app = typer.Typer(help="Devices.", no_args_is_help=True)


def _parse_labels(pairs: list[str]) -> dict[str, str]:
    try:
        return parse_labels(pairs)
    except ValueError as exc:
        raise fail(str(exc), 2) from None


@devices_app.command("add")
def devices_add(
    device_id: Annotated[str, typer.Argument(metavar="ID", help="Device id (its MQTT username).")],
    label: Annotated[
        list[str] | None, typer.Option(help="Label KEY=VALUE; repeatable.", show_default=False)
    ] = None,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
) -> None:
    """Register a device, accepted; prints its device token last (shown once). The token goes
    into the agent's config; it is also the device's broker password (user ID), which the
    control plane gives the broker itself (broker_accounts = "dynsec"; with "manual", put it
    in the broker's password file). To let devices join by themselves: bootstrap-tokens."""
    labels = _parse_labels(label or [])
    with api(url, token) as client:
        registered = client.register_device(device_id, labels)
    console.print(
        f"device {registered.device.id} registered with labels {registered.device.labels}",
        highlight=False,
    )
    print(registered.token)


@devices_app.command("approve")
def devices_approve(
    device_id: Annotated[str, typer.Argument(metavar="ID", help="Device id.")],
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
) -> None:
    """Accept a pending (or rejected) device: its token works, its broker account is made
    when it checks in (`edgefleet agent enroll` does)."""
    _admission(device_id, "approve", url, token)


@devices_app.command("reject")
def devices_reject(
    device_id: Annotated[str, typer.Argument(metavar="ID", help="Device id.")],
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
) -> None:
    """Reject a device: its token stops working, its broker account is deleted."""
    _admission(device_id, "reject", url, token)


def _admission(device_id: str, command: str, url: str, token: str | None) -> None:
    with api(url, token) as client:
        device = client.device_command(device_id, command)
    console.print(f"device {device.id}: {device.admission}", highlight=False)


@devices_app.command("reissue")
def devices_reissue(
    device_id: Annotated[str, typer.Argument(metavar="ID", help="Device id.")],
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
) -> None:
    """A new token for a device (lost or leaked); the old ones stop working, and its broker
    password becomes the new token (its live connections end). Prints the token last."""
    with api(url, token) as client:
        reissued = client.reissue_device(device_id)
    console.print(f"device {reissued.device.id}: new token", highlight=False)
    print(reissued.token)


@devices_app.command("remove")
def devices_remove(
    device_id: Annotated[str, typer.Argument(metavar="ID", help="Device id.")],
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
) -> None:
    """Decommission a device: tokens revoked, broker account deleted, history kept."""
    with api(url, token) as client:
        device = client.remove_device(device_id)
    console.print(f"device {device.id}: {device.admission}", highlight=False)


DevicesCsv = Annotated[
    Path,
    typer.Argument(
        exists=True,
        dir_okay=False,
        help="CSV with a header: `id`, and optionally `labels` as k=v;k2=v2.",
    ),
]


def _read_devices(file: Path) -> list[DeviceCreate]:
    """The devices of a CSV (``id``, optional ``labels`` as ``k=v;k2=v2``), each checked."""
    devices = []
    with file.open(newline="") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            if not row.get("id"):
                raise fail(f"{file}:{line}: no id", 2)
            pairs = [p for p in (row.get("labels") or "").split(";") if p]
            try:
                devices.append(DeviceCreate(id=row["id"], labels=_parse_labels(pairs)))
            except ValidationError as exc:
                raise fail(f"{file}:{line}: {exc.errors()[0]['msg']}", 2) from exc
    if not devices:
        raise fail(f"{file}: no devices (a header row with `id` first)", 2)
    return devices


@devices_app.command("preauthorize")
def devices_preauthorize(
    file: DevicesCsv, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None
) -> None:
    """Pre-authorize device ids in bulk: each is accepted as soon as it enrolls. All rows are
    checked before any is stored."""
    devices = _read_devices(file)
    with api(url, token) as client:
        added = client.preauthorize(DevicesPreauthorize(devices=devices))
    console.print(f"{len(added)} devices pre-authorized", highlight=False)


@devices_app.command("import")
def devices_import(
    file: DevicesCsv,
    tokens: Annotated[
        Path,
        typer.Option(
            dir_okay=False,
            help="Where to write `id,token` for each device (made 0600; must not exist): "
            "the tokens are shown this once.",
        ),
    ],
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
) -> None:
    """Register devices in bulk (up to 10,000 a file, one request): all or none, each
    accepted with its token (and, with dynsec, its broker account)."""
    devices = _read_devices(file)
    if len(devices) > MAX_REGISTRATIONS:
        raise fail(f"{file}: {len(devices)} devices; at most {MAX_REGISTRATIONS} a file", 2)
    try:
        out = os.open(tokens, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise fail(f"{tokens} exists: the tokens go to a new file", 2) from None
    try:
        with api(url, token) as client:
            registered = client.register_devices(devices)
        with os.fdopen(out, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "token"])
            writer.writerows([r.device.id, r.token] for r in registered)
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(out)
        tokens.unlink(missing_ok=True)
        raise
    console.print(f"{len(registered)} devices registered; tokens in {tokens}", highlight=False)


@devices_app.command("label")
def devices_label(
    device_id: Annotated[str, typer.Argument(metavar="ID", help="Device id.")],
    label: Annotated[list[str], typer.Argument(metavar="KEY=VALUE...", help="The labels.")],
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
) -> None:
    """Replace a device's labels (they then win over what the device reports)."""
    with api(url, token) as client:
        device = client.set_labels(device_id, _parse_labels(label))
    console.print(f"{device.id}: {device.labels}", highlight=False)


@devices_app.command("list")
def devices_list(
    selector: Annotated[str, typer.Option(help="Label selector, e.g. site=berlin,hw!=rpi3.")] = "",
    output: OutputOpt = Output.TABLE,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
) -> None:
    """List devices with what they serve."""
    with api(url, token) as client:
        rows = client.devices(selector)
    if output is Output.JSON:
        print_json(rows)
        return
    table = Table("id", "online", "labels", "models (active)", "phase", "last error", "seq")
    for d in rows:
        models = d.state.models if d.state else []
        active = ", ".join(f"{m.name} v{m.active.version}" for m in models if m.active)
        phases = ", ".join(f"{m.name}:{m.phase.value}" for m in models)
        errors = [
            e
            for e in [d.state.last_error if d.state else None, *(m.last_error for m in models)]
            if e is not None
        ]
        table.add_row(
            d.id,
            "yes" if d.online else "no",
            ",".join(f"{k}={v}" for k, v in sorted(d.labels.items())),
            active,
            phases,
            errors[-1].reason if errors else "",
            str(d.deployment_seq),
        )
    out.print(table)


deploy_app = typer.Typer()


@deploy_app.command("deploy")
def deploy_command(
    target: Annotated[
        str, typer.Argument(metavar="MODEL:VERSION", help="Model and version (or alias).")
    ],
    device: Annotated[str, typer.Option(help="Device id.")],
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
) -> None:
    """Sign and publish a desired state that puts MODEL:VERSION on one device."""
    model, sep, version = target.partition(":")
    if not sep or not model or not version:
        raise fail(f"expected MODEL:VERSION, got {target!r}", 2)
    with api(url, token) as client:
        deployment = client.deploy(device, model, version)
    state = "published" if deployment.published else "stored (not yet published: no broker)"
    console.print(
        f"{model}:{version} → {device}: desired state {deployment.seq} {state}", highlight=False
    )
    print(deployment.seq)
