"""Settings read the same way by the agent and the control plane: keyword arguments win over
the environment, which wins over a TOML file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar, cast

from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class TomlSettings(BaseSettings):
    """Settings whose file is TOML (given to ``load``)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


S = TypeVar("S", bound=TomlSettings)


def load(settings_cls: type[S], toml_file: Path | None, **values: Any) -> S:
    """``settings_cls`` from ``values``, the environment and ``toml_file`` (none: no file).
    The result is a plain ``settings_cls`` (picklable, for worker processes)."""

    class _FromFile(settings_cls):  # type: ignore[valid-type, misc]
        model_config = SettingsConfigDict(toml_file=toml_file)

    loaded = _FromFile(**values)
    fields = {name: getattr(loaded, name) for name in settings_cls.model_fields}
    return cast(S, settings_cls.model_construct(**fields))
