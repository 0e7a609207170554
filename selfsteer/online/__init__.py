"""Online rounds, one module per method, on the same actors (specs in shared/spec/).

Which module runs which `algo` is the method's spec (selfsteer.algorithms.registry); each module
has `start(cfg, roles, inputs)` and `run_round(cfg, roles, inputs, r, run_dir) -> metrics`.
"""

from __future__ import annotations

import importlib

from selfsteer.algorithms.registry import METHODS

ROUNDS = {name: m.round.split(":")[0] for name, m in METHODS.items()}


def round_fn(cfg, roles, inputs):
    """The round function for `cfg.algo`, its extra actors and state started."""
    module = importlib.import_module(ROUNDS[cfg.algo])
    module.start(cfg, roles, inputs)
    return module.run_round
