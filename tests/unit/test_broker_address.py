"""Broker URLs: one, as shipped, or the nodes of a broker cluster separated by commas. A bad
list is refused naming the setting and the entry, never echoing a password."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.config import AgentSettings
from control_plane.config import ServerSettings
from shared.broker_address import BrokerAddress, parse_broker_url, parse_broker_urls


def test_one_url_parses_as_before() -> None:
    assert parse_broker_urls("mqtt://dev-1:tok@127.0.0.1:1883") == (
        BrokerAddress("127.0.0.1", 1883, "dev-1", "tok", tls=False),
    )
    assert parse_broker_urls("mqtts://broker.example") == (
        parse_broker_url("mqtts://broker.example"),
    )
    assert parse_broker_url("mqtts://broker.example").port == 8883


def test_nodes_in_order_each_with_its_own_credentials() -> None:
    nodes = parse_broker_urls("mqtt://a:1 , mqtt://u:p%40ss@b:2,mqtt://c")
    assert [(n.host, n.port, n.username, n.password) for n in nodes] == [
        ("a", 1, None, None),
        ("b", 2, "u", "p@ss"),
        ("c", 1883, None, None),
    ]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "broker_url is empty"),
        ("mqtt://a:1,", "broker_url entry 2 of 2 is empty (a stray comma?)"),
        (",mqtt://a:1", "broker_url entry 1 of 2 is empty"),
        ("mqtt://a:1,http://b:2", "broker_url entry 2 of 2 must look like mqtt://"),
        ("mqtt://a:1,mqtt://a:1", "broker_url entry 2 of 2 repeats a:1"),
        ("mqtt://u:secret@a:1,mqtt://v:secret@a:1", "broker_url entry 2 of 2 repeats a:1"),
        ("mqtt://a:1,mqtts://b:2", "mixes mqtt:// and mqtts://"),
        ("mqtt://a:port", "broker_url has a bad port"),
        ("mqtt://u:secret@a:99999,mqtt://b", "broker_url entry 1 of 2 has a bad port"),
        (",".join(f"mqtt://h{i}" for i in range(17)), "names 17 brokers; at most 16"),
    ],
)
def test_bad_lists_are_refused_naming_the_entry(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        parse_broker_urls(value)
    assert "secret" not in str(caught.value)


def test_the_agent_takes_a_list_and_names_its_key(tmp_path: Path) -> None:
    values = {
        "device_id": "dev-1",
        "control_plane_url": "http://127.0.0.1:8000",
        "token": "t",
        "trust_store": tmp_path / "trust.json",
        "data_dir": tmp_path,
    }
    settings = AgentSettings.model_validate(
        {**values, "broker_url": "mqtt://b1:1883,mqtt://b2:1884"}
    )
    assert [(b.host, b.port) for b in settings.brokers] == [("b1", 1883), ("b2", 1884)]
    assert settings.broker == settings.brokers[0]
    with pytest.raises(ValidationError, match="broker_url entry 2 of 2 is empty"):
        AgentSettings.model_validate({**values, "broker_url": "mqtt://b1:1883,"})


def test_the_control_plane_takes_a_list_and_names_its_key(tmp_path: Path) -> None:
    url = "mqtt://cp:pw@b1:1883,mqtt://cp:pw@b2:1883"
    assert ServerSettings(data_dir=tmp_path, mqtt_url=url).mqtt_url == url
    assert ServerSettings(data_dir=tmp_path).mqtt_url is None
    with pytest.raises(ValidationError, match="mqtt_url entry 2 of 2 must look like"):
        ServerSettings(data_dir=tmp_path, mqtt_url="mqtt://cp:pw@b1:1883,b2:1883")
