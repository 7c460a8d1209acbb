"""Model registry: models, monotonic versions, aliases, and registering a signed version."""

from __future__ import annotations

import re
from collections.abc import Callable

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from control_plane.errors import ConflictError, InvalidInputError, NotFoundError
from control_plane.store.blobs import BlobStore
from control_plane.store.tables import Model, ModelAlias, ModelVersion, utcnow
from shared.manifest import MODEL_NAME_RE, ModelManifest, Task
from shared.signing import SigningKey

ALIAS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


def check_model_name(name: str) -> None:
    if not MODEL_NAME_RE.fullmatch(name):
        raise InvalidInputError(
            "model names match ^[a-z0-9][a-z0-9_-]{0,63}$",
            loc=("path", "name"),
            code="invalid_name",
        )


def get_model(session: Session, name: str) -> Model:
    model = session.get(Model, name)
    if model is None:
        raise NotFoundError(f"no model named {name!r}", loc=("path", "name"))
    return model


def ensure_model(session: Session, name: str, task: Task) -> Model:
    """The model row, created on first use; its task is fixed by its first version."""
    model = session.get(Model, name)
    if model is None:
        try:
            with session.begin_nested():
                session.add(Model(name=name, task=task))
        except IntegrityError:
            pass  # created concurrently
        model = session.get(Model, name)
        assert model is not None
    if model.task != task:
        raise ConflictError(
            f"model {name!r} is a {model.task} model; cannot add a {task} version",
            loc=("body", "task"),
            code="task_mismatch",
        )
    return model


def resolve_version(session: Session, name: str, ref: str) -> ModelVersion:
    """A version by number (``3``) or alias (``champion``)."""
    get_model(session, name)
    if re.fullmatch(r"[0-9]{1,18}", ref):  # ASCII digits: "²".isdigit() is true, too
        number = int(ref)
    else:
        alias = session.get(ModelAlias, (name, ref))
        if alias is None:
            raise NotFoundError(
                f"model {name!r} has no version or alias {ref!r}", loc=("path", "version")
            )
        number = alias.version
    row = session.exec(
        select(ModelVersion).where(ModelVersion.model_name == name, ModelVersion.version == number)
    ).first()
    if row is None:
        raise NotFoundError(f"model {name!r} has no version {number}", loc=("path", "version"))
    return row


def latest_version(session: Session, name: str) -> ModelVersion | None:
    return session.exec(
        select(ModelVersion)
        .where(ModelVersion.model_name == name)
        .order_by(col(ModelVersion.version).desc())
    ).first()


def register_version(
    session: Session,
    blobs: BlobStore,
    key: SigningKey,
    *,
    name: str,
    task: Task,
    model_bytes: bytes,
    make_manifest: Callable[[int], ModelManifest],
    algorithm: str,
    dataset_id: int,
    job_id: int | None,
) -> ModelVersion:
    """Allocate the next version, sign its manifest, store the artifact and the row — all or
    nothing: on any failure the transaction is rolled back (the version number is not used)
    and an artifact written here is removed."""
    ensure_model(session, name, task)
    session.commit()
    newly_written = False
    sha = ""
    try:
        # Atomic increment: the row lock (PostgreSQL) or the write lock (SQLite) serialises
        # concurrent registrations until commit, so versions are gap-free and monotonic.
        session.execute(
            update(Model)
            .where(col(Model.name) == name)
            .values(latest_version=Model.latest_version + 1)
        )
        model = session.get(Model, name, populate_existing=True)
        assert model is not None
        manifest = make_manifest(model.latest_version).signed_with(key)
        sha, newly_written = blobs.put_bytes(model_bytes)
        if sha != manifest.sha256:
            raise RuntimeError("stored artifact hash differs from the manifest's")
        row = ModelVersion(
            model_name=name,
            version=manifest.version,
            sha256=sha,
            size=len(model_bytes),
            algorithm=algorithm,
            dataset_id=dataset_id,
            job_id=job_id,
            metrics=manifest.lineage.metrics,
            parity_max_abs_diff=manifest.lineage.parity.max_abs_diff,
            parity_label_disagreements=manifest.lineage.parity.label_disagreements,
            manifest=manifest.model_dump_json(),
            created_at=manifest.created_at,
        )
        session.add(row)
        session.commit()
    except BaseException:
        session.rollback()
        if newly_written:
            delete_unless_used(session, blobs, sha)
        raise
    session.refresh(row)
    return row


def delete_unless_used(session: Session, blobs: BlobStore, sha: str) -> None:
    """An artifact no version points at is removed (another may share the same bytes)."""
    if session.exec(select(ModelVersion.id).where(ModelVersion.sha256 == sha)).first() is None:
        blobs.delete(sha)


def set_alias(session: Session, name: str, alias: str, version: int) -> ModelAlias:
    if not ALIAS_RE.fullmatch(alias):
        raise InvalidInputError(
            "aliases match ^[a-z][a-z0-9_-]{0,31}$", loc=("path", "alias"), code="invalid_alias"
        )
    resolve_version(session, name, str(version))
    row = session.get(ModelAlias, (name, alias))
    if row is None:
        row = ModelAlias(model_name=name, alias=alias, version=version)
    else:
        row.version = version
        row.updated_at = utcnow()
    session.add(row)
    session.commit()
    session.refresh(row)
    return row


def delete_alias(session: Session, name: str, alias: str) -> None:
    get_model(session, name)
    row = session.get(ModelAlias, (name, alias))
    if row is None:
        raise NotFoundError(f"model {name!r} has no alias {alias!r}", loc=("path", "alias"))
    session.delete(row)
    session.commit()


def aliases_of(session: Session, name: str) -> dict[str, int]:
    rows = session.exec(select(ModelAlias).where(ModelAlias.model_name == name)).all()
    return {row.alias: row.version for row in rows}
