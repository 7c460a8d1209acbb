from pathlib import Path

import pytest
from pydantic import ValidationError

from control_plane.config import load_settings


def test_precedence_file_env_argument(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config.toml").write_text("port = 9001\nparity_atol = 0.001\nreference_bins = 5\n")
    monkeypatch.setenv("EDGEFLEET_PORT", "9002")
    monkeypatch.setenv("EDGEFLEET_REFERENCE_BINS", "7")
    settings = load_settings(tmp_path, reference_bins=12)
    assert settings.parity_atol == 0.001  # file
    assert settings.port == 9002  # env over file
    assert settings.reference_bins == 12  # argument over env
    assert settings.data_dir == tmp_path.resolve()
    assert settings.resolved_database_url == f"sqlite:///{tmp_path.resolve() / 'edgefleet.db'}"


def test_data_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEFLEET_DATA_DIR", str(tmp_path / "x"))
    assert load_settings().data_dir == (tmp_path / "x").resolve()


def test_bad_config_is_refused_naming_the_field(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("parity_atol = -1\n")
    with pytest.raises(ValidationError, match="parity_atol"):
        load_settings(tmp_path)
    (tmp_path / "config.toml").write_text("no_such_setting = 1\n")
    with pytest.raises(ValidationError, match="no_such_setting"):
        load_settings(tmp_path)


def test_every_example_in_the_init_template_loads(tmp_path: Path) -> None:
    """What `edgefleet init` writes, each commented example switched on, is a valid config
    (tables last: a key after a [[table]] header would belong to it)."""
    from control_plane.config import CONFIG_TEMPLATE

    lines = []
    for line in CONFIG_TEMPLATE.splitlines():
        example = line.removeprefix("# ")
        is_setting = example[:1].isalpha() and " = " in example
        lines.append(example if is_setting or example.startswith("[[") else line)
    (tmp_path / "config.toml").write_text("\n".join(lines) + "\n")
    settings = load_settings(tmp_path)
    assert settings.port == 8000
    assert settings.database_url is not None and settings.tls_keyfile is not None
    assert [m.selector for m in settings.artifact_mirrors] == ["site=berlin"]
    assert settings.broker_accounts == "dynsec"
