"""Fixtures the config tests share: a YAML file written in the test's tmp_path, and the message of
the ConfigError a load is refused with."""

from __future__ import annotations

from pathlib import Path

import pytest

from selfsteer.config.schema import ConfigError, load_config


@pytest.fixture
def yaml_file(tmp_path):
    """`yaml_file(text, name="run.yaml")`: that text written to tmp_path/name; its path."""

    def write(text: str, name: str = "run.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


@pytest.fixture
def refused():
    """`refused(path=None, overrides=())`: the message of the ConfigError `load_config` raises (the
    test fails if the config loads)."""

    def load(path=None, overrides=()) -> str:
        with pytest.raises(ConfigError) as err:
            load_config(path, list(overrides))
        return str(err.value)

    return load
