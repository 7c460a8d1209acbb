"""Setting up a data directory (``edgefleet init``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlmodel import Session, select

from control_plane.auth.keys import create_keys, load_keys
from control_plane.auth.tokens import issue_token
from control_plane.config import CONFIG_FILE_NAME, CONFIG_TEMPLATE, ServerSettings
from control_plane.store.db import create_db_engine, migrate
from control_plane.store.tables import ApiToken, Role
from shared.signing import KeyRole


@dataclass(frozen=True)
class InitResult:
    data_dir: Path
    created_keys: list[KeyRole]
    created_config: bool
    model_key_id: str
    deployment_key_id: str
    token_name: str
    token: str


def init_data_dir(settings: ServerSettings) -> InitResult:
    """Create what is missing (directory, config, keys, database) and issue an admin token.
    Existing keys and config are never overwritten; each run issues a new admin token (the
    old ones stay valid), since secrets are stored only as hashes and cannot be shown again."""
    data_dir = settings.data_dir
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    config = data_dir / CONFIG_FILE_NAME
    created_config = not config.exists()
    if created_config:
        config.write_text(CONFIG_TEMPLATE)
    created = create_keys(settings.keys_dir)
    keys = load_keys(settings.keys_dir)
    engine = create_db_engine(settings.resolved_database_url)
    try:
        migrate(engine)
        with Session(engine) as session:
            count = len(session.exec(select(ApiToken.id).where(ApiToken.role == Role.ADMIN)).all())
            name = "admin" if count == 0 else f"admin-{count + 1}"
            _, secret = issue_token(session, name=name, role=Role.ADMIN)
            session.commit()
    finally:
        engine.dispose()
    return InitResult(
        data_dir=data_dir,
        created_keys=created,
        created_config=created_config,
        model_key_id=keys.model.key_id,
        deployment_key_id=keys.deployment.key_id,
        token_name=name,
        token=secret,
    )
