"""Score a user's own IFEval/IFBench-style rows, strict and loose, with the benchmark's checkers.

`selfsteer eval` reaches the real-model benchmark's scoring through this module: a row carries
`instruction_id_list` and one `kwargs` dict per instruction, as both datasets write them. IFEval ids go
through `checkers` (its offline set, self-checked before anything is generated); IFBench ids through
IFBench's own evaluation library as `ifbench.load` imports it offline. Loose is IFEval's definition
(a constraint passes when the reply, or the reply without its first and/or last line or its `*`,
passes; if-verifiable's list of variants, the same as IFBench's). A row naming a checker that cannot
run offline is not scored and is named in `unscored`, never counted as not followed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from selfsteer.benchmark.realbench import checkers as C
from selfsteer.benchmark.realbench.checkers import CheckerError

KINDS = ("ifeval", "ifbench")


@dataclass(frozen=True)
class Followed:
    """Per-instruction results of one reply: strict and loose."""

    strict: tuple[bool, ...]
    loose: tuple[bool, ...]


def registry_ids(kind: str) -> frozenset[str]:
    """Every instruction id the kind's checker library knows (runnable offline or not)."""
    if kind == "ifeval":
        return frozenset(C.registry())
    from selfsteer.benchmark.realbench import ifbench as B

    return frozenset(B.load().registry)


def pick_kind(id_lists: list) -> str | None:
    """"ifeval" or "ifbench" when every row carries an instruction_id_list whose ids that library knows."""
    if not id_lists or any(not isinstance(ids, list) or not ids for ids in id_lists):
        return None
    used = {i for ids in id_lists for i in ids}
    for kind in KINDS:
        try:
            if used <= registry_ids(kind):
                return kind
        except CheckerError:  # that library is not installed: the other may still hold every id
            continue
    return None


@dataclass
class ConstraintScorer:
    """The checkers of one library, prepared for a file's rows (see `prepare`)."""

    kind: str
    unscored: dict[str, list[str]] = field(default_factory=dict)  # row id -> ids that cannot run offline
    checker_errors: list[dict] = field(default_factory=list)  # IFBench checkers that raised on a reply
    bench: object = None  # IFBench's loaded library (ifbench only)

    def follow(self, record: dict, response: str) -> Followed:
        """Strict and loose results of `response` to `record` (a row `prepare` accepted and scores)."""
        ids, kwargs = record["instruction_id_list"], [k or {} for k in record["kwargs"]]
        if self.kind == "ifbench":
            from selfsteer.benchmark.realbench import ifbench as B

            strict, loose, errors = B.follow(self.bench, record, response)
            self.checker_errors += errors
            return Followed(tuple(strict), tuple(loose))
        from if_verifiable.common import get_loose_transformations

        where = f"row {record.get('uuid', '?')}: "
        variants = get_loose_transformations(response)
        strict = tuple(C.check(i, k, response, where) for i, k in zip(ids, kwargs))
        loose = tuple(any(C.check(i, k, v, where) for v in variants) for i, k in zip(ids, kwargs))
        return Followed(strict, loose)


def prepare(kind: str, rows: list[dict], where: str) -> ConstraintScorer:
    """Check every row before anything is generated and find the rows that cannot be scored offline.

    Args:
        kind: "ifeval" or "ifbench".
        rows: dicts with uuid, prompt, instruction_id_list and kwargs (None values are left out, as
            both libraries do).
        where: the file, for messages.

    Raises:
        CheckerError: a row without a usable instruction_id_list/kwargs, an id the library does not
            know, kwargs its checker rejects, or (IFEval) a checker that fails its hand examples.
    """
    if kind not in KINDS:
        raise CheckerError(f"unknown constraint scorer {kind!r}; valid: {KINDS}")
    bench = None
    if kind == "ifeval":
        C.self_check()  # a checker that cannot run stops here, before any answer is generated
        known, runnable = C.registry(), set(C.ALLOWED)
    else:
        from selfsteer.benchmark.realbench import ifbench as B

        bench = B.load()
        known = bench.registry
        runnable = set(known) - set(bench.needs_data)
    scorer = ConstraintScorer(kind, bench=bench)
    for n, row in enumerate(rows):
        ids, kwargs, uid = row.get("instruction_id_list"), row.get("kwargs"), row["uuid"]
        at = f"{where}: row {n} ({uid})"
        if not isinstance(ids, list) or not ids or not isinstance(kwargs, list) or len(kwargs) != len(ids):
            raise CheckerError(f"{at}: needs a non-empty 'instruction_id_list' and one 'kwargs' dict per "
                               f"instruction, got {ids!r} / {kwargs!r}")
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise CheckerError(f"{at}: {unknown} are not {kind} instruction ids (--scorer {kind})")
        for iid, kw in zip(ids, kwargs):
            try:  # the kwargs are checked now: a typo must not cost the generation first
                known[iid](iid).build_description(**{k: v for k, v in (kw or {}).items() if v is not None})
            except Exception as exc:  # noqa: BLE001 - the checker's own complaint, one line
                raise CheckerError(f"{at}: kwargs {kw} do not suit {iid!r}: {type(exc).__name__}: {exc}") from None
        offline_gaps = [i for i in ids if i not in runnable]
        if offline_gaps:
            scorer.unscored[uid] = offline_gaps
    return scorer


def accuracy(followed: list[Followed]) -> dict[str, float]:
    """IFEval's four numbers: prompt level (every instruction followed) and instruction level, strict
    and loose, over the scored rows."""
    out = {}
    for mode in ("strict", "loose"):
        lists = [getattr(f, mode) for f in followed]
        flat = [x for fl in lists for x in fl]
        out[f"prompt_{mode}"] = round(sum(all(fl) for fl in lists) / len(lists), 4) if lists else float("nan")
        out[f"instruction_{mode}"] = round(sum(flat) / len(flat), 4) if flat else float("nan")
    return out
