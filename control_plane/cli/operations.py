"""The operator's commands around the loop: the audit log (``events``), jobs, feedback
labels, and a model's drift readings, policy, retraining and approvals (``models …``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.table import Table

from control_plane.api.schemas import FeedbackCreate, JobPublic
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
    wait_for_job,
)
from control_plane.client import DEFAULT_URL
from control_plane.monitoring.policy import ModelPolicy

# --- events ------------------------------------------------------------------------------------

events_app = typer.Typer()


@events_app.command("events")
def events_command(
    type_: Annotated[
        str | None, typer.Option("--type", help="Only this type, e.g. drift.", show_default=False)
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="Only this device.", show_default=False)
    ] = None,
    rollout: Annotated[
        str | None, typer.Option(help="Only this rollout.", show_default=False)
    ] = None,
    model: Annotated[str | None, typer.Option(help="Only this model.", show_default=False)] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    output: OutputOpt = Output.TABLE,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
) -> None:
    """The audit log, newest first: rollouts, devices, drift, retraining and releases."""
    with api(url, token) as client:
        rows = client.events(
            type=type_, device_id=device, rollout_id=rollout, model=model, limit=limit
        )
    if output is Output.JSON:
        print_json(rows)
        return
    table = Table()
    for column in ("id", "at", "type", "about", "message"):
        table.add_column(column)
    for event in rows:
        about = " ".join(
            part
            for part in (
                event.device_id,
                event.rollout_id and f"rollout {event.rollout_id}",
                event.model_name and f"{event.model_name} v{event.version or '?'}",
                event.job_id and f"job {event.job_id}",
            )
            if part
        )
        at = event.at.strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(str(event.id), at, event.type.value, about, event.message)
    out.print(table)


# --- jobs --------------------------------------------------------------------------------------

jobs_app = typer.Typer(help="Training, import and retraining jobs.", no_args_is_help=True)


def _show_jobs(rows: list[JobPublic]) -> None:
    table = Table()
    for column in ("id", "kind", "model", "status", "stage", "version", "error"):
        table.add_column(column)
    for job in rows:
        version = "" if job.result_version is None else str(job.result_version)
        table.add_row(
            str(job.id), job.kind, job.model_name, job.status, job.stage, version, job.error or ""
        )
    out.print(table)


@jobs_app.command("list")
def jobs_list(
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    output: OutputOpt = Output.TABLE,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
) -> None:
    """Recent jobs, newest first."""
    with api(url, token) as client:
        rows = client.jobs(limit)
    print_json(rows) if output is Output.JSON else _show_jobs(rows)


@jobs_app.command("show")
def jobs_show(
    job_id: Annotated[int, typer.Argument(help="Job id.")],
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
) -> None:
    """One job as JSON: its request, stage, result (a search's scores, a challenge)."""
    with api(url, token) as client:
        print_json(client.job(job_id))


@jobs_app.command("wait")
def jobs_wait(
    job_id: Annotated[int, typer.Argument(help="Job id.")],
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
) -> None:
    """Wait for a job to end, with its progress; exit 1 when it failed. Prints the version
    it registered last (none: a refused challenger)."""
    with api(url, token) as client:
        job = wait_for_job(client, client.job(job_id))
    if job.status == "failed":
        raise fail(f"job {job.id} failed: {job.error}")
    console.print(f"job {job.id} {job.status} ({job.stage})", highlight=False)
    if job.result_version is not None:
        print(job.result_version)


# --- feedback ----------------------------------------------------------------------------------

feedback_app = typer.Typer(help="True labels for predictions.", no_args_is_help=True)


@feedback_app.callback()
def feedback_group() -> None:
    """True labels for predictions (`post`; more verbs may follow)."""


FEEDBACK_COLUMNS = ("request_id", "label", "prediction", "version", "device_id")


def _feedback_items(path: Path) -> list[dict[str, Any]]:
    """CSV rows with a header naming some of ``FEEDBACK_COLUMNS`` (request_id and label at
    least); numbers stay numbers, empty cells are left out."""
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        unknown = set(reader.fieldnames or []) - set(FEEDBACK_COLUMNS)
        if unknown or not {"request_id", "label"} <= set(reader.fieldnames or []):
            raise fail(
                f"{path.name}: the header names request_id, label and optionally prediction, "
                f"version, device_id (found {reader.fieldnames})",
                2,
            )
        items = []
        for row in reader:
            item: dict[str, Any] = {}
            for key, raw in row.items():
                if raw in ("", None):
                    continue
                try:
                    value = json.loads(raw) if key not in ("request_id", "device_id") else raw
                except json.JSONDecodeError:
                    value = raw
                item[key] = value
            items.append(item)
        return items


@feedback_app.command("post")
def feedback_post(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="CSV of labels.")],
    model: Annotated[str, typer.Option(help="Model the predictions came from.")],
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
) -> None:
    """Post true labels by the request id of each prediction (CSV: request_id, label,
    optionally prediction, version, device_id). All are checked before any is stored."""
    try:
        body = FeedbackCreate.model_validate({"model": model, "items": _feedback_items(file)})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise fail(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}", 2) from exc
    with api(url, token) as client:
        result = client.post_feedback(body)
    console.print(
        f"{result.stored} labels stored; {result.matched_samples} match sampled rows",
        highlight=False,
    )


# --- models: drift, policy, retraining, approval ----------------------------------------------


def models_drift(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[
        int | None, typer.Option(help="Only this version.", show_default=False)
    ] = None,
    selector: Annotated[
        str | None, typer.Option(help="Only this population.", show_default=False)
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many buckets.")] = 50,
    output: OutputOpt = Output.TABLE,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
) -> None:
    """Drift and accuracy over time: one row per closed bucket, version and selector."""
    with api(url, token) as client:
        rows = client.drift(name, version=version, selector=selector, limit=limit)
    if output is Output.JSON:
        print_json(rows)
        return
    table = Table(title=f"{name}: drift per bucket")
    for column in ("bucket", "v", "selector", "requests", "drifted", "share", "accuracy"):
        table.add_column(column)
    for point in rows:
        table.add_row(
            point.bucket_start.strftime("%Y-%m-%d %H:%M"),
            str(point.version),
            point.selector or "(all)",
            str(point.requests),
            ", ".join(point.drifted_features),
            f"{point.drifted_share:.2f}",
            "" if point.accuracy is None else f"{point.accuracy:.3f} ({point.labels})",
        )
    out.print(table)


policy_app = typer.Typer(help="How a model is watched and retrained.", no_args_is_help=True)


@policy_app.command("get")
def policy_get(
    name: Annotated[str, typer.Argument(help="Model name.")],
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
) -> None:
    """The model's policy as JSON (the defaults until one is set): save it, edit, `set`."""
    with api(url, token) as client:
        print_json(client.policy(name))


@policy_app.command("set")
def policy_set(
    name: Annotated[str, typer.Argument(help="Model name.")],
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Policy JSON.")],
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
) -> None:
    """Replace the policy with FILE (as `get` prints it; fields left out take defaults)."""
    try:
        policy = ModelPolicy.model_validate_json(file.read_bytes())
    except ValidationError as exc:
        first = exc.errors()[0]
        raise fail(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}", 2) from exc
    with api(url, token) as client:
        client.set_policy(name, policy)
    console.print(f"policy of {name} set", highlight=False)


def models_retrain(
    name: Annotated[str, typer.Argument(help="Model name.")],
    champion: Annotated[
        int | None,
        typer.Option(help="Version to beat [default: the policy's].", show_default=False),
    ] = None,
    wait: Annotated[bool, typer.Option(help="Wait for the job and show how it ended.")] = True,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
) -> None:
    """Retrain now, whatever the triggers say; prints the job id (with --wait, the version
    registered, if the challenger won)."""
    with api(url, token) as client:
        job = client.retrain(name, champion)
        if not wait:
            print(job.id)
            return
        job = wait_for_job(client, job)
    if job.status == "failed":
        raise fail(f"job {job.id} failed: {job.error}")
    console.print(f"job {job.id}: {job.stage}; {job.error or 'registered'}", highlight=False)
    if job.result_version is not None:
        print(job.result_version)


def models_approve(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int, typer.Argument(help="Version awaiting approval.")],
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
) -> None:
    """Approve a retrained version: the monitor rolls it out with the policy's plan."""
    with api(url, token) as client:
        client.approve(name, version)
    console.print(f"{name} v{version} approved; its rollout starts next", highlight=False)
