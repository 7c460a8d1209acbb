"""Control-plane commands: ``init``, ``server`` and the API client commands."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from control_plane.api.schemas import (
    JobPublic,
    RolloutCreate,
    RolloutPlanPublic,
    RolloutPublic,
    TrainRequest,
)
from control_plane.cli.common import (
    DataDirOpt,
    Output,
    OutputOpt,
    TokenOpt,
    UrlOpt,
    api,
    console,
    fail,
    local_settings,
    out,
    print_json,
    wait_for_job,
)
from control_plane.cli.operations import models_approve, models_drift, models_retrain, policy_app
from control_plane.client import DEFAULT_URL, ApiClient
from control_plane.training.results import SearchResult
from shared.manifest import ParamValue

if TYPE_CHECKING:
    pass


# --- init / server -------------------------------------------------------------------------

init_app = typer.Typer()


@init_app.command("init")
def init_command(data_dir: DataDirOpt = None) -> None:
    """Create a data directory: config, model- and deployment-signing keys (0600), database,
    and an admin API token, printed once as the last line (EDGEFLEET_TOKEN=...). Running it
    again keeps existing keys and issues another admin token."""
    from control_plane.store.datadir import init_data_dir

    result = init_data_dir(local_settings(data_dir))
    out.print(f"data dir        {result.data_dir}", highlight=False)
    for role, key_id in (("model", result.model_key_id), ("deployment", result.deployment_key_id)):
        state = "created" if any(r.value == role for r in result.created_keys) else "kept"
        label = f"{role} key"
        out.print(f"{label:<16}{key_id[:16]}… ({state})", highlight=False)
    out.print(
        f"admin token     {result.token_name} (shown once, stored only as a hash)", highlight=False
    )
    print(f"EDGEFLEET_TOKEN={result.token}")


server_app = typer.Typer()
LogLevelOpt = Annotated[
    str | None,
    typer.Option(help="debug, info, warning or error [default: info].", show_default=False),
]
LogFormatOpt = Annotated[
    str | None,
    typer.Option(
        help="text, or json: one object a line with device_id, rollout_id, model, version and "
        "job_id as fields [default: text].",
        show_default=False,
    ),
]

TlsCertOpt = Annotated[
    Path | None, typer.Option(help="Serve HTTPS with this certificate (PEM).", show_default=False)
]
TlsKeyOpt = Annotated[Path | None, typer.Option(help="Its private key (PEM).", show_default=False)]


@server_app.command("server")
def server_command(
    data_dir: DataDirOpt = None,
    host: Annotated[
        str | None, typer.Option(help="Bind address [default: 127.0.0.1].", show_default=False)
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port [default: 8000].", show_default=False)
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="Settings file [default: DATA_DIR/config.toml].", show_default=False),
    ] = None,
    mqtt_url: Annotated[
        str | None,
        typer.Option(
            envvar="EDGEFLEET_MQTT_URL",
            show_default=False,
            help="Broker for device traffic, mqtt://user:pass@host:port; the nodes of a "
            "broker cluster comma-separated, tried in turn.",
        ),
    ] = None,
    log_level: LogLevelOpt = None,
    log_format: LogFormatOpt = None,
    tls_certfile: TlsCertOpt = None,
    tls_keyfile: TlsKeyOpt = None,
) -> None:
    """Serve the REST API (migrates the database first) and, with --mqtt-url, talk to devices:
    ingest their state and telemetry, publish signed desired states. Needs `edgefleet init`.
    HTTPS with --tls-certfile/--tls-keyfile (`edgefleet certs create` makes them)."""
    import uvicorn

    from control_plane.app import create_app
    from control_plane.auth.keys import load_keys
    from control_plane.errors import NotInitialisedError
    from control_plane.observability.logs import log_config

    settings = local_settings(
        data_dir,
        config,
        host=host,
        port=port,
        mqtt_url=mqtt_url,
        log_level=log_level and log_level.lower(),
        log_format=log_format,
        tls_certfile=tls_certfile,
        tls_keyfile=tls_keyfile,
    )
    try:
        load_keys(settings.keys_dir)
    except NotInitialisedError as exc:
        raise fail(exc.message, 2) from exc
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=log_config(settings.log_level, settings.log_format),
        ssl_certfile=settings.tls_certfile,
        ssl_keyfile=settings.tls_keyfile,
    )


# --- datasets --------------------------------------------------------------------------------

datasets_app = typer.Typer(help="Upload and list datasets.", no_args_is_help=True)


@datasets_app.command("upload")
def datasets_upload(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="CSV file.")],
    name: Annotated[str, typer.Option(help="Dataset name.")],
    label: Annotated[str, typer.Option(help="Label column.")],
    nan_policy: Annotated[
        str, typer.Option(help="Missing values: reject, drop or impute.")
    ] = "reject",
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
) -> None:
    """Upload a CSV (numeric features + a label column). Prints the dataset id last."""
    with api(url, token) as client:
        ds = client.upload_dataset(file, name=name, label=label, nan_policy=nan_policy)
    console.print(
        f"dataset {ds.name} v{ds.version}: {ds.rows} rows, {len(ds.features)} "
        f"features, label {ds.label_column!r} ({ds.label_kind}), sha256 "
        f"{ds.sha256[:16]}…",
        highlight=False,
    )
    print(ds.id)


@datasets_app.command("list")
def datasets_list(
    output: OutputOpt = Output.TABLE, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None
) -> None:
    """List datasets."""
    with api(url, token) as client:
        rows = client.datasets()
    if output is Output.JSON:
        print_json(rows)
        return
    table = Table("id", "name", "version", "rows", "features", "label", "sha256")
    for ds in rows:
        table.add_row(
            str(ds.id),
            ds.name,
            str(ds.version),
            str(ds.rows),
            str(len(ds.features)),
            ds.label_column,
            ds.sha256[:12],
        )
    out.print(table)


# --- train -----------------------------------------------------------------------------------

train_app = typer.Typer()


def _parse_value(option: str, key: str, raw: str) -> ParamValue:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    if not isinstance(value, int | float | str | bool) and value is not None:
        raise fail(f"{option} {key}: a number, string, true/false or null", 2)
    return value


def _parse_params(pairs: list[str]) -> dict[str, ParamValue]:
    params: dict[str, ParamValue] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise fail(f"--param takes NAME=VALUE, got {pair!r}", 2)
        params[key] = _parse_value("--param", key, raw)
    return params


def _parse_search(pairs: list[str], folds: int, most: int) -> dict[str, object] | None:
    """``--search NAME=V1,V2,...`` (repeatable) as the request's search."""
    if not pairs:
        return None
    grid: dict[str, list[ParamValue]] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key or not raw:
            raise fail(f"--search takes NAME=V1,V2,..., got {pair!r}", 2)
        grid[key] = [_parse_value("--search", key, part) for part in raw.split(",")]
    return {"params": grid, "folds": folds, "max_candidates": most}


@train_app.command("train")
def train_command(
    model: Annotated[str, typer.Option(help="Model name (versions accumulate under it).")],
    dataset: Annotated[int, typer.Option(help="Dataset id.")],
    algorithm: Annotated[
        str,
        typer.Option(
            help="logreg, random_forest, hist_gb, xgboost or lightgbm (regression: ridge "
            "instead of logreg)."
        ),
    ],
    task: Annotated[str, typer.Option(help="classification or regression.")] = "classification",
    param: Annotated[
        list[str] | None,
        typer.Option(help="Algorithm parameter NAME=VALUE; repeatable.", show_default=False),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for the split and the model.")] = 0,
    validation_fraction: Annotated[float, typer.Option(help="Held-out share.")] = 0.2,
    search: Annotated[
        list[str] | None,
        typer.Option(
            help="Search a parameter first: NAME=V1,V2,... (repeatable); the best candidate "
            "by cross-validation on the training rows is registered.",
            show_default=False,
        ),
    ] = None,
    folds: Annotated[int, typer.Option(help="Cross-validation folds of --search.")] = 3,
    max_candidates: Annotated[
        int, typer.Option(help="Most candidates --search tries (a larger grid is sampled).")
    ] = 20,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
) -> None:
    """Train, export, check parity, sign and register a version; waits for the job and
    prints the new version number last."""
    try:
        request = TrainRequest.model_validate(
            {
                "dataset_id": dataset,
                "algorithm": algorithm,
                "task": task,
                "params": _parse_params(param or []),
                "seed": seed,
                "validation_fraction": validation_fraction,
                "search": _parse_search(search or [], folds, max_candidates),
            }
        )
    except ValueError as exc:
        raise fail(str(exc), 2) from exc
    with api(url, token) as client:
        job = wait_for_job(client, client.train(model, request))
        if isinstance(job.result, SearchResult):
            _show_search(job.result)
        _show_new_version(client, model, job)


def _show_search(result: SearchResult) -> None:
    table = Table(title=f"search: {result.metric}, {result.folds}-fold cross-validation")
    for column in ("candidate", "mean", "std", ""):
        table.add_column(column)
    for candidate in result.candidates:
        params = ", ".join(f"{k}={json.dumps(v)}" for k, v in candidate.params.items())
        best = "best" if candidate.params == result.best else ""
        table.add_row(params, f"{candidate.mean:.4f}", f"{candidate.std:.4f}", best)
    console.print(table)


def _show_new_version(client: ApiClient, model: str, job: JobPublic) -> None:
    """The version a finished job registered, with its figures; its number last."""
    if job.status != "succeeded" or job.result_version is None:
        raise fail(f"job {job.id} failed: {job.error}")
    version = client.version(model, str(job.result_version))
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in version.metrics.items())
    console.print(
        f"{model} v{version.version} ({version.algorithm}): {metrics}; parity max diff "
        f"{version.parity_max_abs_diff:.2e}; {version.size} bytes, sha256 "
        f"{version.sha256[:16]}…",
        highlight=False,
    )
    print(version.version)


# --- models ----------------------------------------------------------------------------------

models_app = typer.Typer(help="Registered models and versions.", no_args_is_help=True)
models_app.command("drift")(models_drift)
models_app.command("retrain")(models_retrain)
models_app.command("approve")(models_approve)
models_app.add_typer(policy_app, name="policy")


@models_app.command("list")
def models_list(
    output: OutputOpt = Output.TABLE, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None
) -> None:
    """List models with their latest version and aliases."""
    with api(url, token) as client:
        rows = client.models()
    if output is Output.JSON:
        print_json(rows)
        return
    table = Table("name", "task", "latest", "aliases")
    for m in rows:
        aliases = ", ".join(f"{a}→{v}" for a, v in sorted(m.aliases.items()))
        table.add_row(m.name, m.task, str(m.latest_version), aliases)
    out.print(table)


@models_app.command("show")
def models_show(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[
        str | None,
        typer.Option(help="Version or alias: print that version's JSON with its signed manifest."),
    ] = None,
    output: OutputOpt = Output.TABLE,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
) -> None:
    """Show a model's versions, or one version as JSON (with --version)."""
    with api(url, token) as client:
        if version is not None:
            print(client.version(name, version).model_dump_json(indent=2))
            return
        rows = client.versions(name)
    if output is Output.JSON:
        print_json(rows)
        return
    table = Table("version", "algorithm", "dataset", "metrics", "parity diff", "size", "aliases")
    for v in rows:
        metrics = " ".join(f"{k}={val:.3f}" for k, val in v.metrics.items())
        table.add_row(
            str(v.version),
            v.algorithm,
            str(v.dataset_id),
            metrics,
            f"{v.parity_max_abs_diff:.1e}",
            str(v.size),
            ",".join(v.aliases),
        )
    out.print(table)


FORMATS_BY_SUFFIX = {
    ".onnx": "onnx",
    ".skops": "sklearn",
    ".json": "xgboost",
    ".ubj": "xgboost",
    ".txt": "lightgbm",
}


ModelFileArg = Annotated[
    str,
    typer.Argument(
        metavar="FILE|URI",
        help="Model file (.onnx, .skops for scikit-learn, .json/.ubj for XGBoost, .txt for "
        "LightGBM), or an MLflow model URI (models:/NAME/VERSION, models:/NAME@ALIAS) of the "
        "control plane's registry.",
    ),
]
ReferenceOpt = Annotated[
    Path | None,
    typer.Option(
        exists=True,
        dir_okay=False,
        help="Reference CSV to upload first, as dataset MODEL-reference (with --label).",
        show_default=False,
    ),
]
FormatOpt = Annotated[
    str | None,
    typer.Option(
        "--format",
        help="onnx, sklearn, xgboost or lightgbm (default: from the file's extension).",
        show_default=False,
    ),
]
ClassesOpt = Annotated[
    str | None,
    typer.Option(
        help="Class names in the order of the model's class indices, comma-separated "
        "(default: the dataset's classes, sorted).",
        show_default=False,
    ),
]


@models_app.command("import")
def models_import(
    model: Annotated[str, typer.Argument(help="Model name (versions accumulate under it).")],
    file: ModelFileArg,
    dataset: Annotated[
        int | None,
        typer.Option(help="Reference dataset id (or give --reference).", show_default=False),
    ] = None,
    reference: ReferenceOpt = None,
    label: Annotated[
        str | None, typer.Option(help="Label column of --reference.", show_default=False)
    ] = None,
    task: Annotated[str, typer.Option(help="classification or regression.")] = "classification",
    fmt: FormatOpt = None,
    classes: ClassesOpt = None,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
) -> None:
    """Import a model trained elsewhere: checked, converted to ONNX (other formats, with the
    parity gate), run on the reference dataset (its metrics, reference statistics and golden
    vectors), signed and registered like a trained version. Waits for the job and prints
    the new version number last."""
    mlflow = file.startswith("models:/")
    path = Path(file)
    if not mlflow and not path.is_file():
        raise fail(f"{file}: no such file", 2)
    fmt = fmt or FORMATS_BY_SUFFIX.get(path.suffix.lower())
    if fmt is None and not mlflow:
        raise fail(f"cannot tell the format of {path.name}; give --format", 2)
    if (dataset is None) == (reference is None):
        raise fail("give either --dataset ID or --reference CSV --label COLUMN", 2)
    if reference is not None and not label:
        raise fail("--reference needs --label", 2)
    order = [c.strip() for c in classes.split(",")] if classes else None
    with api(url, token) as client:
        if reference is not None:
            assert label is not None
            dataset = client.upload_dataset(reference, name=f"{model}-reference", label=label).id
        assert dataset is not None
        if mlflow:
            job = client.import_from_mlflow(
                model, file, dataset_id=dataset, task=task, classes=order
            )
        else:
            assert fmt is not None
            job = client.import_model(
                model, path, dataset_id=dataset, task=task, classes=order, fmt=fmt
            )
        _show_new_version(client, model, wait_for_job(client, job))


@models_app.command("compare")
def models_compare(
    name: Annotated[str, typer.Argument(help="Model name.")],
    a: Annotated[str, typer.Argument(help="A version number or alias.")],
    b: Annotated[str, typer.Argument(help="Another.")],
    output: OutputOpt = Output.TABLE,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
) -> None:
    """Two versions side by side: metrics on one holdout, size, latency on the control
    plane's machine, lineage."""
    with api(url, token) as client:
        result = client.compare(name, a, b)
    if output is Output.JSON:
        print_json(result)
        return
    left, right = result.a, result.b
    table = Table(
        title=f"{name}: holdout of v{result.holdout.of_version}, {result.holdout.rows} rows of "
        f"dataset {result.holdout.dataset_id}"
        + ("" if result.holdout.unseen_by_both else " (the older may have trained on them)")
    )
    table.add_column("")
    table.add_column(f"v{left.version}")
    table.add_column(f"v{right.version}")
    rows = [("algorithm", left.algorithm, right.algorithm), ("bytes", left.size, right.size)]
    rows += [(m, f"{left.metrics[m]:.4f}", f"{right.metrics.get(m, 0):.4f}") for m in left.metrics]
    rows += [
        (f"µs / run, {n} rows", f"{left.latency_us[n]:.0f}", f"{right.latency_us[n]:.0f}")
        for n in left.latency_us
    ]
    rows += [
        ("dataset", left.lineage.dataset_name, right.lineage.dataset_name),
        ("params", json.dumps(left.lineage.params), json.dumps(right.lineage.params)),
    ]
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    out.print(table)


@models_app.command("alias")
def models_alias(
    name: Annotated[str, typer.Argument(help="Model name.")],
    alias: Annotated[str, typer.Argument(help="Alias, e.g. champion.")],
    version: Annotated[int, typer.Argument(help="Version number.")],
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
) -> None:
    """Point an alias at a version."""
    with api(url, token) as client:
        row = client.set_alias(name, alias, version)
    console.print(f"{row.model_name}: {row.alias} → {row.version}", highlight=False)


@models_app.command("pull")
def models_pull(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[str, typer.Option(help="Version or alias.")] = "latest",
    out_dir: Annotated[Path, typer.Option("--out", help="Directory to write into.")] = Path("."),
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
) -> None:
    """Download a version for offline checks: NAME-vN.manifest.json, NAME-vN.onnx and
    trust-store.json (the server's public keys). Then run `edgefleet verify`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with api(url, token) as client:
        ref = version
        if ref == "latest":
            ref = str(max((v.version for v in client.versions(name)), default=0))
        row = client.version(name, ref)
        assert row.manifest is not None
        stem = out_dir / f"{name}-v{row.version}"
        manifest_path = stem.with_suffix(".manifest.json")
        manifest_path.write_text(row.manifest.model_dump_json(indent=2))
        client.download_artifact(row.sha256, stem.with_suffix(".onnx"))
        (out_dir / "trust-store.json").write_text(client.trust_store().model_dump_json(indent=2))
    for path in (manifest_path, stem.with_suffix(".onnx"), out_dir / "trust-store.json"):
        print(path)


# --- tokens ----------------------------------------------------------------------------------

tokens_app = typer.Typer(help="API tokens (admin).", no_args_is_help=True)


@tokens_app.command("create")
def tokens_create(
    name: Annotated[str, typer.Option(help="Who uses it.")],
    role: Annotated[str, typer.Option(help="admin, operator or viewer.")] = "viewer",
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
) -> None:
    """Issue a token; prints EDGEFLEET_TOKEN=<secret> last (shown once)."""
    with api(url, token) as client:
        issued = client.create_token(name, role)
    console.print(f"token {issued.id} {issued.name!r} ({issued.role})", highlight=False)
    print(f"EDGEFLEET_TOKEN={issued.token}")


@tokens_app.command("list")
def tokens_list(
    output: OutputOpt = Output.TABLE, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None
) -> None:
    """Tokens (never their secrets): id, name, role, device, issued, revoked."""
    with api(url, token) as client:
        rows = client.tokens()
    if output is Output.JSON:
        print_json(rows)
        return
    table = Table("id", "name", "role", "device", "issued", "revoked")
    for row in rows:
        table.add_row(
            str(row.id),
            row.name,
            row.role,
            row.device_id or "",
            row.created_at.isoformat(timespec="seconds"),
            row.revoked_at.isoformat(timespec="seconds") if row.revoked_at else "",
        )
    out.print(table)


@tokens_app.command("revoke")
def tokens_revoke(
    token_id: Annotated[int, typer.Argument(help="Token id (tokens list).")],
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
) -> None:
    """Revoke a token at once (artifact downloads: within 30 s on other processes)."""
    with api(url, token) as client:
        revoked = client.revoke_token(token_id)
    console.print(f"token {revoked.id} {revoked.name!r} revoked", highlight=False)


# --- rollouts ----------------------------------------------------------------------------------

rollout_app = typer.Typer(help="Staged rollouts.", no_args_is_help=True)


def _plan(
    preset: str | None, stages: str | None, soak: float, on_failure: str, min_requests: int | None
) -> dict[str, object]:
    plan: dict[str, object] = {"on_failure": on_failure}
    if stages:
        specs: list[dict[str, object]] = []
        for part in (p.strip() for p in stages.split(",")):
            try:
                specs.append(
                    {"percent": float(part[:-1])} if part.endswith("%") else {"count": int(part)}
                )
            except ValueError as exc:
                raise fail(f"--stages: {part!r} is neither a count nor a percentage", 2) from exc
            specs[-1]["soak_seconds"] = soak
        plan["stages"] = specs
    else:
        plan["preset"], plan["soak_seconds"] = preset or "canary", soak
    if min_requests is not None:
        plan["gates"] = {
            "min_requests": min_requests,
            "min_devices_reporting": 1 if min_requests else 0,
        }
    return plan


def _show_rollout(rollout: RolloutPublic) -> None:
    stage = (
        f"stage {rollout.stage + 1}/{len(rollout.stages)} ({rollout.stages[rollout.stage].label})"
        if rollout.stage >= 0
        else "not started"
    )
    out.print(
        f"rollout {rollout.id}: {rollout.model} v{rollout.version} → "
        f"{rollout.selector or 'all devices'} ({rollout.devices} devices): "
        f"[bold]{rollout.status}[/bold], {stage}, {rollout.assigned} assigned"
    )
    if rollout.reason:
        out.print(f"  reason: {rollout.reason}", highlight=False)
    if rollout.gates:
        table = Table("gate", "status", "value", "threshold", "devices", "requests", "detail")
        for gate in rollout.gates:
            value = "" if gate.value is None else f"{gate.value:.4g}"
            table.add_row(
                gate.name,
                gate.status,
                value,
                f"{gate.threshold:g}",
                "" if gate.devices is None else str(gate.devices),
                "" if gate.requests is None else str(gate.requests),
                gate.detail,
            )
        out.print(table)


@rollout_app.command("create")
def rollout_create(
    target: Annotated[str, typer.Argument(metavar="MODEL:VERSION", help="Version or alias.")],
    selector: Annotated[str, typer.Option(help="Label selector (default: every device).")] = "",
    preset: Annotated[
        str | None,
        typer.Option(
            help="canary (1 device → 10% → 50% → 100%) or all-at-once.", show_default=False
        ),
    ] = None,
    stages: Annotated[
        str | None,
        typer.Option(
            help='Explicit stages, e.g. "1,10%,50%" (counts or percentages; 100% is implied).',
            show_default=False,
        ),
    ] = None,
    soak: Annotated[float, typer.Option(help="Soak seconds per stage.")] = 300,
    on_failure: Annotated[str, typer.Option(help="rollback or pause.")] = "rollback",
    min_requests: Annotated[
        int | None,
        typer.Option(
            help="Requests on the new version before gates judge (default 50).", show_default=False
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the devices of each stage; change nothing.")
    ] = False,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
) -> None:
    """Start a staged rollout; prints its id last (with --dry-run: the stages and an id that
    reproduces those cohorts)."""
    model, sep, version = target.partition(":")
    if not sep or not model or not version:
        raise fail(f"expected MODEL:VERSION, got {target!r}", 2)
    try:
        body = RolloutCreate.model_validate(
            {
                "model": model,
                "version": version,
                "selector": selector,
                "plan": _plan(preset, stages, soak, on_failure, min_requests),
            }
        )
    except ValueError as exc:
        raise fail(str(exc), 2) from exc
    with api(url, token) as client:
        if dry_run:
            _show_plan(client.plan_rollout(body))
            return
        rollout = client.create_rollout(body)
    _show_rollout(rollout)
    print(rollout.id)


def _show_plan(planned: RolloutPlanPublic) -> None:
    """Each stage's new devices with what they run now; the id that reproduces them, last."""
    for stage in planned.stages:
        devices = ", ".join(f"{d.id} (v{d.current_version})" for d in stage.devices or [])
        out.print(
            f"stage {stage.index + 1} ({stage.label}, {stage.target} devices, "
            f"soak {stage.soak_seconds:g} s): + {devices}",
            highlight=False,
        )
    print(planned.rollout_id)


@rollout_app.command("list")
def rollout_list(
    output: OutputOpt = Output.TABLE, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None
) -> None:
    """List rollouts, newest first."""
    with api(url, token) as client:
        rows = client.rollouts()
    if output is Output.JSON:
        print_json(rows)
        return
    table = Table("id", "model", "version", "selector", "status", "stage", "assigned")
    for r in rows:
        table.add_row(
            r.id,
            r.model,
            str(r.version),
            r.selector or "*",
            r.status,
            f"{r.stage + 1}/{len(r.stages)}",
            f"{r.assigned}/{r.devices}",
        )
    out.print(table)


@rollout_app.command("show")
def rollout_show(
    rollout_id: Annotated[str, typer.Argument(help="Rollout id.")],
    output: OutputOpt = Output.TABLE,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
) -> None:
    """A rollout's stage and its gates' latest readings."""
    with api(url, token) as client:
        rollout = client.rollout(rollout_id)
    print_json(rollout) if output is Output.JSON else _show_rollout(rollout)


@rollout_app.command("watch")
def rollout_watch(
    rollout_id: Annotated[str, typer.Argument(help="Rollout id.")],
    interval: Annotated[float, typer.Option(help="Seconds between looks.", min=0.1)] = 2.0,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
) -> None:
    """Show the rollout each time its stage, status or a gate changes, until it ends; exit
    0 when it succeeded, 1 when it was rolled back or aborted."""
    last: object = None
    with api(url, token) as client:
        while True:
            rollout = client.rollout(rollout_id)
            seen = (rollout.status, rollout.stage, [(g.name, g.status) for g in rollout.gates])
            if seen != last:
                _show_rollout(rollout)
                last = seen
            if rollout.status in ("succeeded", "rolled_back", "aborted"):
                break
            time.sleep(interval)
    if rollout.status != "succeeded":
        raise fail(f"rollout {rollout_id} {rollout.status}: {rollout.reason or ''}")


@rollout_app.command("events")
def rollout_events(
    rollout_id: Annotated[str, typer.Argument(help="Rollout id.")],
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
) -> None:
    """What happened to a rollout."""
    with api(url, token) as client:
        for event in client.rollout_events(rollout_id):
            out.print(
                f"{event.at:%Y-%m-%d %H:%M:%S}  {event.type:<14} {event.message}", highlight=False
            )


def _command(name: str, doc: str) -> None:
    def command(
        rollout_id: Annotated[str, typer.Argument(help="Rollout id.")],
        url: UrlOpt = DEFAULT_URL,
        token: TokenOpt = None,
    ) -> None:
        with api(url, token) as client:
            _show_rollout(client.rollout_command(rollout_id, name))

    command.__doc__ = doc
    rollout_app.command(name)(command)


for _name, _doc in (
    ("pause", "Pause: no stage advances until resumed."),
    ("resume", "Resume a paused rollout."),
    ("promote", "Skip the current stage's soak and start the next."),
    ("abort", "Stop here; devices keep what they have."),
    ("rollback", "Every device of the rollout back to its previous version."),
):
    _command(_name, _doc)
