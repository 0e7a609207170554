"""Online rounds, one module per method, on the same actors (the methods: docs/concepts/).

Each module has `start(cfg, roles, inputs)` (its extra actors and round state, if any) and
`run_round(cfg, roles, inputs, r, run_dir) -> metrics`; the driver picks one by `cfg.algo`.
"""

from __future__ import annotations

import importlib

ROUNDS = {"sso": "selfsteer.online.sso", "dpo": "selfsteer.online.sso",  # dpo: SSO's pairs under plain DPO
          "self_contrast": "selfsteer.online.self_contrast", "sepo": "selfsteer.online.sepo",
          "sipo": "selfsteer.online.sipo"}


def round_fn(cfg, roles, inputs):
    """The round function for `cfg.algo`, its extra actors and state started."""
    module = importlib.import_module(ROUNDS[cfg.algo])
    module.start(cfg, roles, inputs)
    return module.run_round
