"""The online methods, one spec each: what config validation, the driver, the trainer and the planner read.

A method's spec names its round (the object the driver runs, `selfsteer.online.*`), its trainer
loss, the loss keys and arguments, how many rows the trainer forwards per example and how many
responses the engines sample per prompt (as the round really does), the features it supports,
and the columns of its one-line round summary. Rounds and losses are named by dotted path and
imported only when used, so this module imports neither torch nor anything above `algorithms/`.

A list of methods kept in four places drifts (the planner once assumed 2 rows and 3 generations
for Self-Contrast, which forwards k+1 rows and samples n_samples); here each number is the
function the round and the trainer call.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Callable

#: Features a method may support; config validation refuses a run that asks for one it lacks.
FEATURES = ("async", "colocated", "remedies", "resume", "lora")

#: Phase timings every round reports (seconds); a method adds its own in `MethodSpec.phases`.
COMMON_PHASES = ("time/generation", "time/persist", "time/reference", "time/train", "time/sync",
                 "time/checkpoint", "time/round")


@dataclass(frozen=True)
class MethodSpec:
    """One online method. Callables take the RunConfig and return what the round really uses.

    Attributes:
        name: the `algo` value.
        round: "module:Class" of the round object (`Class(cfg, roles, inputs)`, `run(r)`, `close()`).
        loss: "module:function" of the trainer loss (`fn(policy, reference, lengths, **loss_kwargs)`).
        keys: the (response, context) rows per example, in the order the trainer forwards them.
        loss_kwargs: the loss's keyword arguments from the config.
        generations: responses sampled on the engines per prompt (the planner's sampling time).
        features: the subset of FEATURES the method supports.
        summary: metric keys of the one-line round summary, in order.
        phases: phase timings of the summary (seconds), in order.
        trainers: trainer groups the method trains (SIPO: two policies).
    """

    name: str
    round: str
    loss: str
    keys: Callable[..., list]
    loss_kwargs: Callable[..., dict]
    generations: Callable[..., int]
    features: frozenset
    summary: tuple
    phases: tuple = COMMON_PHASES
    trainers: int = 1

    def rows(self, cfg) -> int:
        """Rows the trainer forwards per example (each a (response, context) sequence)."""
        return len(self.keys(cfg))

    def supports(self, feature: str) -> bool:
        if feature not in FEATURES:
            raise ValueError(f"unknown feature {feature!r}; valid: {', '.join(FEATURES)}")
        return feature in self.features

    def round_class(self):
        return _load(self.round)

    def loss_fn(self):
        return _load(self.loss)


def _load(path: str):
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def sso_keys(cfg) -> list[str]:
    """The SSO variant's rows (docs/concepts/sso.md §5), in SSO_ROWS order."""
    from selfsteer.algorithms.sso import REQUIRED_KEYS
    from selfsteer.data.triples import SSO_ROWS

    return [k for k in SSO_ROWS if k in REQUIRED_KEYS[cfg.loss.variant]]


def self_contrast_keys(k: int) -> list[str]:
    """The target y*, then the k negatives in index order."""
    return ["chosen"] + [f"neg_{j}" for j in range(k)]


def _pair(cfg) -> list[str]:
    return ["chosen", "rejected"]


def _sipo_generations(cfg) -> int:
    """One greedy MOD candidate per weight; with `sipo.rewrite` also a review and a rewrite of each."""
    return len(cfg.sipo.weights) * (3 if cfg.sipo.rewrite else 1)


_SSO_SUMMARY = ("train/loss", "train/loss/base", "train/loss/g", "train/w/mean", "train/rewards/margins",
                "train/rewards/accuracies", "data/triples", "rollout/staleness")
_SSO_PHASES = ("time/principles", "time/generation", "time/persist", "time/reference", "time/train",
               "time/generation_wait", "time/sync", "time/reference_refresh", "time/checkpoint", "time/round")
_PAIR_SUMMARY = ("train/loss", "train/rewards/margins", "train/rewards/accuracies", "data/pairs")
_SSO_FEATURES = frozenset({"async", "colocated", "remedies", "resume", "lora"})

METHODS: dict[str, MethodSpec] = {m.name: m for m in (
    MethodSpec("sso", "selfsteer.online.sso:SsoRound", "selfsteer.algorithms.sso:sso_loss", sso_keys,
               lambda cfg: dataclasses.asdict(cfg.loss), lambda cfg: 3, _SSO_FEATURES, _SSO_SUMMARY, _SSO_PHASES),
    # dpo: SSO's RLCD-style pairs (y+ under the good principle, y- under the bad) under plain DPO.
    MethodSpec("dpo", "selfsteer.online.sso:SsoRound", "selfsteer.algorithms.dpo:dpo_loss", _pair,
               lambda cfg: {"beta": cfg.loss.beta}, lambda cfg: 3, _SSO_FEATURES, _SSO_SUMMARY, _SSO_PHASES),
    MethodSpec("self_contrast", "selfsteer.online.self_contrast:SelfContrastRound",
               "selfsteer.algorithms.self_contrast:trainer_loss", lambda cfg: self_contrast_keys(cfg.self_contrast.k),
               lambda cfg: {"beta": cfg.self_contrast.beta}, lambda cfg: cfg.self_contrast.n_samples,
               frozenset({"resume", "lora"}), (*_PAIR_SUMMARY, "data/prompts_with_pairs", "rollout/unique_samples"),
               ("time/generation", "time/embedding", *COMMON_PHASES[1:])),
    MethodSpec("sepo", "selfsteer.online.sepo:SepoRound", "selfsteer.algorithms.sepo:trainer_loss", _pair,
               lambda cfg: {"beta": cfg.sepo.beta, "gamma": cfg.sepo.gamma}, lambda cfg: 2,
               frozenset({"resume", "lora"}), (*_PAIR_SUMMARY, "sepo/selected_token_share"),
               ("time/generation", "time/token_rewards", *COMMON_PHASES[1:])),
    # SIPO trains two full policies and interpolates their full weights (soups): no LoRA, and
    # policy B's optimizer state is not checkpointed: no resume.
    MethodSpec("sipo", "selfsteer.online.sipo:SipoRound", "selfsteer.algorithms.sipo:trainer_loss", _pair,
               lambda cfg: {"beta": cfg.sipo.beta, "alpha": cfg.sipo.alpha}, _sipo_generations, frozenset(),
               (*_PAIR_SUMMARY, "sipo/kept_rate", "sipo/rewrites_kept", "train_b/loss"),
               ("time/generation", "time/rewrite", "time/reference", "time/train", "time/sync", "time/checkpoint",
                "time/train_b", "time/sync_b", "time/checkpoint_b"), trainers=2),
)}

#: Every trainer loss by name (the online methods'); the recipe's file training uses "sso" and "dpo".
LOSSES: dict[str, str] = {name: m.loss for name, m in METHODS.items()}


def method(name: str) -> MethodSpec:
    """The spec of `name`; an unknown name lists the valid ones."""
    if name not in METHODS:
        raise ValueError(f"unknown algo {name!r}; valid: {', '.join(METHODS)}")
    return METHODS[name]
