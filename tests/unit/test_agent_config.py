"""The agent's shipped config: what ``--print-config`` prints is what a device runs, and a
bad value is refused at start with a message naming its key."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from agent.config import DEFAULT_CONFIG, AgentSettings
from simulator.rig.server import run_cli

REQUIRED = ("device_id", "broker_url", "control_plane_url", "token", "trust_store", "data_dir")


def required_only(tmp_path: Path) -> Path:
    """The printed config with every key but the required ones left out."""
    printed = tomllib.loads(DEFAULT_CONFIG)
    config = tmp_path / "agent.toml"
    config.write_text(
        "".join(f'{key} = "{printed[key]}"\n' for key in REQUIRED if key != "data_dir")
        + f'data_dir = "{tmp_path / "data"}"\n'
    )
    return config


def test_print_config_marks_exactly_the_settings_without_a_default() -> None:
    printed = run_cli("agent", "--print-config").stdout
    assert printed == DEFAULT_CONFIG
    marked = {line.split("=")[0].strip() for line in printed.splitlines() if "# required" in line}
    no_default = {name for name, f in AgentSettings.model_fields.items() if f.is_required()}
    assert marked == no_default == set(REQUIRED)


def test_printed_values_are_the_defaults() -> None:
    """Each `key = value` line, commented out or not, shows the value the agent uses when
    the key is absent (optional paths such as `tls_ca_file` are examples: no default)."""
    checked = set()
    for line in DEFAULT_CONFIG.splitlines():
        match = re.match(r"#? ?(\w+) = (\S+)", line)
        if match and match.group(1) in AgentSettings.model_fields:
            field = AgentSettings.model_fields[match.group(1)]
            if field.is_required() or field.default is None:
                continue
            shown = tomllib.loads(f"v = {match.group(2)}")["v"]
            assert shown == field.default, match.group(1)
            checked.add(match.group(1))
    assert {"probation_requests", "probation_seconds", "window_seconds"} <= checked


def test_required_keys_alone_give_the_shipped_defaults(tmp_path: Path) -> None:
    from agent.config import load_agent_settings

    settings = load_agent_settings(required_only(tmp_path))
    assert settings.probation_requests == 50
    assert settings.probation_seconds == 30.0
    assert settings.window_seconds == 60.0
    assert settings.api_port == 8500


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("probation_seconds = -1", "probation_seconds"),
        ("probation_seconds = inf", "probation_seconds"),
        ("probation_seconds = nan", "probation_seconds"),
        ("probation_seconds = 1e300", "probation_seconds"),
        ("probation_requests = -5", "probation_requests"),
        ("probation_requests = 10000000000", "probation_requests"),
        ("probation_latency_budget_ms = 0", "probation_latency_budget_ms"),
        ("probation_max_error_rate = 2", "probation_max_error_rate"),
        ("window_seconds = inf", "window_seconds"),
    ],
)
def test_bad_probation_values_are_refused_at_start_naming_the_key(
    tmp_path: Path, line: str, key: str
) -> None:
    config = required_only(tmp_path)
    config.write_text(config.read_text() + line + "\n")
    result = run_cli("agent", "--config", str(config), check=False, timeout=60)
    assert result.returncode == 2
    assert "invalid agent config" in result.stderr
    assert key in result.stderr
    assert not (tmp_path / "data").exists()  # refused before touching anything


def test_a_config_that_is_not_toml_is_a_config_error_not_a_crash(tmp_path: Path) -> None:
    config = required_only(tmp_path)
    config.write_text(config.read_text() + "api_metrics = True\n")  # Python's spelling
    result = run_cli("agent", "--config", str(config), check=False, timeout=60)
    assert result.returncode == 2  # systemd's RestartPreventExitStatus: not restarted into it
    assert "is not valid TOML" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("mqtt_subscribe_qos", 2),  # the agent handles no QoS 2
        ("mqtt_subscribe_qos", -1),
        ("mqtt_resubscribe_seconds", -1),
        ("mqtt_resubscribe_seconds", float("inf")),
    ],
)
def test_subscription_settings_out_of_range_are_refused(
    tmp_path: Path, key: str, value: float
) -> None:
    from pydantic import ValidationError

    from agent.config import load_agent_settings

    with pytest.raises(ValidationError, match=key):
        load_agent_settings(required_only(tmp_path), **{key: value})
    settings = load_agent_settings(required_only(tmp_path))
    assert (settings.mqtt_subscribe_qos, settings.mqtt_resubscribe_seconds) == (1, 0.0)
