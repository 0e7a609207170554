"""sync.verify: checksums on the first sync (and after a restart or pool change), on every sync, or never."""

from __future__ import annotations

import pytest

from selfsteer.actors.syncer import should_verify


def test_first_verifies_only_targets_no_verified_transfer_reached():
    pool = ("engine-0", "engine-1")
    assert should_verify("first", pool, [None])  # the run's first sync
    assert not should_verify("first", pool, [pool])  # later rounds, same pool
    assert should_verify("first", pool + ("engine-2",), [pool])  # the pool grew
    assert should_verify("first", "reference model", set())
    assert not should_verify("first", "reference model", {"reference model"})
    assert should_verify("always", pool, [pool]) and not should_verify("never", pool, [None])


@pytest.mark.parametrize("value,expected", [("first", "first"), ("always", "always"), ("never", "never"),
                                            ("true", "always"), ("false", "never")])
def test_sync_verify_config_accepts_modes_and_old_booleans(value, expected):
    from selfsteer.config.schema import load_config

    assert load_config("configs/tiny_cpu.yaml", [f"sync.verify={value}"]).sync.verify == expected


def test_sync_verify_defaults_to_first_and_rejects_other_values():
    from selfsteer.config.schema import ConfigError, load_config

    assert load_config("configs/tiny_cpu.yaml").sync.verify == "first"
    with pytest.raises(ConfigError, match=r"sync.verify='sometimes' is not one of \['first', 'always', 'never'\]"):
        load_config("configs/tiny_cpu.yaml", ["sync.verify=sometimes"])
