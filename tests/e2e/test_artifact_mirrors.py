"""Artifact mirrors end to end: a real nginx serves the control plane's own blob store as a
mirror for the devices labelled site=berlin; a real rollout reaches a berlin device through
the mirror and a paris device through the control plane, and when the mirror goes down the
next rollout still reaches both."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulator.data import sensor_csv
from simulator.rig.agents import wait_until
from simulator.rig.fleet import OPEN_GATES, open_fleet
from simulator.rig.nginx import NGINX, NginxMirror

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(NGINX is None, reason="needs Debian's nginx (scripts/test.sh installs it)"),
]


def test_a_device_group_takes_artifacts_from_its_mirror_and_survives_its_loss(
    tmp_path: Path,
) -> None:
    mirror = NginxMirror(tmp_path / "nginx", tmp_path / "cp" / "blobs")  # the server's store
    mirror.start()
    mirrors = json.dumps([{"selector": "site=berlin", "urls": [mirror.url]}])
    try:
        with open_fleet(tmp_path, EDGEFLEET_ARTIFACT_MIRRORS=mirrors) as fleet:
            dataset = fleet.api.post(
                "/datasets",
                params={"name": "s", "label": "fault"},
                content=sensor_csv(300, seed=1).encode(),
            ).json()
            berlin, paris = fleet.add("dev-berlin", "berlin"), fleet.add("dev-paris", "paris")
            plan = {"preset": "all-at-once", "soak_seconds": 0, "gates": OPEN_GATES}
            v1 = fleet.train(dataset["id"], 0)
            fleet.wait_status(fleet.rollout(v1, plan)["id"], "succeeded")
            wait_until(lambda: {fleet.serving(d) for d in fleet.agents} == {v1}, what="v1")
            sha = fleet.api.get(f"/models/fault/versions/{v1}").json()["sha256"]
            # Only the berlin device was told of the mirror, and only it went there.
            told = {a.settings.device_id: a.a.store.read_accepted() for a in (berlin, paris)}
            assert all(accepted is not None for accepted in told.values())
            mirrors_told = {d: a.desired.mirrors for d, a in told.items() if a is not None}
            assert mirrors_told == {"dev-berlin": [mirror.url], "dev-paris": None}
            assert mirror.requests() == [f"GET /{sha[:2]}/{sha} 200 auth=[-] range=[-]"]

            mirror.stop()  # the mirror is lost: the control plane serves everyone
            v2 = fleet.train(dataset["id"], 1)
            fleet.wait_status(fleet.rollout(v2, plan)["id"], "succeeded")
            wait_until(lambda: {fleet.serving(d) for d in fleet.agents} == {v2}, what="v2")
    finally:
        mirror.stop()
