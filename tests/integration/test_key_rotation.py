"""Key rotation on a data dir, through the functions `edgefleet keys` runs, and what the API
serves of it: the trust-store chain, the latest keys, and interrupted rotations."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
from pydantic import TypeAdapter
from sqlmodel import Session

from control_plane.auth.keys import KEY_FILES, PREVIOUS_DIR
from control_plane.auth.rotation import retire, rotate
from control_plane.errors import ConflictError
from shared.signing import KeyRole, SigningKey
from shared.trust import SignedTrustStore, TrustStore, check_successor
from tests.integration.conftest import Api, MakeApi

TTL = timedelta(days=7)


def session_of(api: Api) -> Session:
    return Session(api.client.app.state.engine)  # type: ignore[attr-defined]


def test_the_chain_served_is_the_one_a_device_can_follow(make_api: MakeApi) -> None:
    api = make_api()
    first = TrustStore.model_validate_json(api.client.get("/api/v1/keys").content)
    assert first.version == 1
    assert api.client.get("/api/v1/trust-stores", params={"after": 1}).json() == []
    keys_dir = api.settings.keys_dir
    with session_of(api) as session:
        rotate(session, keys_dir, KeyRole.DEPLOYMENT)
        with pytest.raises(ConflictError) as refused:
            rotate(session, keys_dir, KeyRole.DEPLOYMENT)
        assert refused.value.code == "rotation_under_way"
        retire(session, keys_dir, KeyRole.DEPLOYMENT, TTL)
    answer = api.client.get("/api/v1/trust-stores", params={"after": 1}).content
    chain = TypeAdapter(list[SignedTrustStore]).validate_json(answer)
    assert [link.trust_store.version for link in chain] == [2, 3]
    reached = first
    for link in chain:
        reached = check_successor(reached, link)
    latest = TrustStore.model_validate_json(api.client.get("/api/v1/keys").content)
    assert reached == latest
    assert len(latest.key_ids(KeyRole.DEPLOYMENT)) == 1
    assert latest.key_ids(KeyRole.DEPLOYMENT) != first.key_ids(KeyRole.DEPLOYMENT)
    assert not (keys_dir / PREVIOUS_DIR / KEY_FILES[KeyRole.DEPLOYMENT]).exists()


def test_nothing_to_retire_is_refused(make_api: MakeApi) -> None:
    api = make_api()
    with session_of(api) as session, pytest.raises(ConflictError) as refused:
        retire(session, api.settings.keys_dir, KeyRole.MODEL, TTL)
    assert refused.value.code == "nothing_to_retire"


def test_an_interrupted_rotation_is_finished_or_started_again(make_api: MakeApi) -> None:
    api = make_api()
    keys_dir = api.settings.keys_dir
    current = keys_dir / KEY_FILES[KeyRole.MODEL]
    staged = keys_dir / (KEY_FILES[KeyRole.MODEL] + ".next")
    previous = keys_dir / PREVIOUS_DIR / KEY_FILES[KeyRole.MODEL]
    # Interrupted before the new version was stored: a key nothing trusts is thrown away.
    staged.write_bytes(SigningKey.generate().to_pem())
    with session_of(api) as session:
        signed = rotate(session, keys_dir, KeyRole.MODEL)
    new_id = SigningKey.from_pem(current.read_bytes()).key_id
    assert new_id in signed.trust_store.key_ids(KeyRole.MODEL)
    # Interrupted after it was stored, before the files moved: the next rotate finishes it.
    os.replace(current, staged)
    os.replace(previous, current)
    with session_of(api) as session:
        again = rotate(session, keys_dir, KeyRole.MODEL)
    assert again.trust_store.version == signed.trust_store.version == 2
    assert SigningKey.from_pem(current.read_bytes()).key_id == new_id
    assert previous.exists() and not staged.exists()
