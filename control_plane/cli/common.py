"""What every control-plane command shares: the consoles (results on stdout, messages on
stderr), the connection options, failing with a message and exit code, the API client of
a command, waiting for a job, and ``--output json``."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Sequence
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from control_plane.api.schemas import JobPublic
from control_plane.client import ApiClient, ApiError

if TYPE_CHECKING:
    from control_plane.config import ServerSettings

# Messages are not folded at the terminal's width: a path or a token in one stays whole, to
# copy or to match (tables still fit the width).
console = Console(stderr=True, soft_wrap=True)
out = Console()

DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        envvar="EDGEFLEET_DATA_DIR",
        help="Data directory [default: ./edgefleet-data].",
        show_default=False,
    ),
]
UrlOpt = Annotated[str, typer.Option("--url", envvar="EDGEFLEET_URL", help="Control-plane URL.")]
TokenOpt = Annotated[
    str | None,
    typer.Option("--token", envvar="EDGEFLEET_TOKEN", help="API token.", show_default=False),
]


def fail(message: str, code: int = 1) -> typer.Exit:
    # The message is text, not markup: "[a-z0-9]" in a pattern must print as written.
    console.print(f"[red]error:[/red] {escape(message)}", highlight=False)
    return typer.Exit(code)


class Output(StrEnum):
    TABLE = "table"
    JSON = "json"


OutputOpt = Annotated[
    Output, typer.Option("--output", "-o", help="table, or json (the API's documents).")
]


def print_json(document: BaseModel | Sequence[BaseModel]) -> None:
    """The API's document(s) as JSON on stdout, for scripts."""
    if isinstance(document, BaseModel):
        print(document.model_dump_json(indent=2))
    else:
        print(json.dumps([d.model_dump(mode="json") for d in document], indent=2))


@contextlib.contextmanager
def api(url: str, token: str | None) -> Iterator[ApiClient]:
    """A client for a command; an API error ends the command with its reasons (exit 1)."""
    if not token:
        raise fail(
            "no API token: pass --token or set EDGEFLEET_TOKEN (printed by `edgefleet init`)", 2
        )
    with ApiClient(url, token) as client:
        try:
            yield client
        except ApiError as exc:
            raise fail(str(exc)) from exc


def wait_for_job(
    client: ApiClient, job: JobPublic, *, show: bool = True, poll: float = 0.3
) -> JobPublic:
    """Poll a job until it ends, showing a progress bar on stderr."""
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=console,
        disable=not show,
        transient=True,
    ) as progress:
        task = progress.add_task(f"job {job.id}: {job.stage}", total=1.0)
        while job.status in ("queued", "running"):
            time.sleep(poll)
            job = client.job(job.id)
            progress.update(task, completed=job.progress, description=f"job {job.id}: {job.stage}")
    return job


def local_settings(
    data_dir: Path | None, config: Path | None = None, **overrides: Any
) -> ServerSettings:
    """Settings for a local command; a bad config file or env value is a clean error."""
    from pydantic import ValidationError

    from control_plane.config import load_settings

    try:
        return load_settings(data_dir, config, **overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise fail(f"invalid settings: {problems}", 2) from exc
