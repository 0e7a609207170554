"""Online rounds of the methods besides SSO, on the same actors (specs in shared/spec/).

Each module has `start(cfg, roles, inputs)` (extra actors, if any) and
`run_round(cfg, roles, inputs, r, run_dir) -> metrics`; the driver picks one by `cfg.algo`.
"""

from __future__ import annotations

import importlib

ROUNDS = {"self_contrast": "selfsteer.online.self_contrast", "sepo": "selfsteer.online.sepo",
          "sipo": "selfsteer.online.sipo"}


def round_fn(cfg, roles, inputs, default):
    """The round function for `cfg.algo` (SSO's `default` for "sso"), its extra actors started."""
    if cfg.algo not in ROUNDS:
        return default
    module = importlib.import_module(ROUNDS[cfg.algo])
    module.start(cfg, roles, inputs)
    return module.run_round
