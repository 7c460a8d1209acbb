"""Artifact mirrors on the wire and in the settings (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from control_plane.config import ArtifactMirror
from control_plane.fleet.deployments import mirrors_for
from shared.errors import SignatureError
from shared.messages import DesiredState
from shared.signing import SigningKey

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def desired(mirrors: list[str] | None) -> DesiredState:
    return DesiredState(
        device_id="dev-a",
        seq=1,
        models=[],
        issued_at=NOW,
        expires_at=NOW + timedelta(days=1),
        mirrors=mirrors,
        key_id="",
        signature="",
    )


@pytest.mark.parametrize("none", [None, []])
def test_no_mirrors_leave_the_document_as_older_agents_know_it(none: list[str] | None) -> None:
    assert "mirrors" not in desired(none).model_dump(mode="json")


def test_mirrors_are_signed_with_the_rest() -> None:
    key = SigningKey.generate()
    signed = desired(["https://mirror.example/blobs"]).signed_with(key)
    signed.verify_signature(key.verify_key)
    moved = signed.model_copy(update={"mirrors": ["https://evil.example/blobs"]})
    with pytest.raises(SignatureError):
        moved.verify_signature(key.verify_key)


@pytest.mark.parametrize(
    "url",
    ["ftp://mirror/x", "https://mirror/x?sig=1", "https://mirror/x#y", "mirror/x", "http://a b"],
)
def test_a_mirror_is_an_http_base_url(url: str) -> None:
    with pytest.raises(ValidationError):
        desired([url])
    with pytest.raises(ValidationError):
        ArtifactMirror(urls=[url])


def test_the_first_matching_group_names_the_mirrors() -> None:
    groups = [
        ArtifactMirror(selector="site=berlin", urls=["http://berlin/b"]),
        ArtifactMirror(selector="", urls=["http://everyone/b", "http://backup/b"]),
    ]
    assert mirrors_for({"site": "berlin"}, groups) == ["http://berlin/b"]
    assert mirrors_for({"site": "paris"}, groups) == ["http://everyone/b", "http://backup/b"]
    assert mirrors_for({"site": "paris"}, groups[:1]) is None
    with pytest.raises(ValidationError, match="bad selector term"):
        ArtifactMirror(selector="site==x", urls=["http://a/b"])
