"""ReferenceModel: the frozen start model, scoring responses under every context the loss reads.

`reference.num_actors` > 1 runs several, data-parallel: shard_rows deals a call's rows out to them.
"""

from __future__ import annotations

from selfsteer.actors.scoring import ScoringModel
from selfsteer.utils.runtime import limit_threads


class ReferenceModel:
    def __init__(self, model_path: str, ref_cfg, model_cfg, *, torch_threads: int = 1):
        from selfsteer.utils.storage import check_marker

        check_marker("reference")  # output_dir shared with the driver, before loading
        limit_threads(torch_threads)
        self.scorer = ScoringModel.load(model_path, model_cfg, device=ref_cfg.device,
                                        micro_batch_size=ref_cfg.micro_batch_size, packing=ref_cfg.packing,
                                        role="reference")
        self.model, self.device = self.scorer.model, self.scorer.device

    # What the loader and its start-up probes chose (tests/gpu asserts the flash-attention path).
    pad_id = property(lambda self: self.scorer.pad_id)
    packed = property(lambda self: self.scorer.packed)
    split_head = property(lambda self: self.scorer.split_head)
    varlen = property(lambda self: self.scorer.varlen)

    def ready(self) -> str:
        return self.device

    def fallbacks(self) -> dict[str, float]:
        """The start-up probes that turned a feature off here (`startup/fallback/<feature>` metrics)."""
        return dict(self.scorer.fallbacks)

    def load_buckets(self, buckets: list, flats: list, verify: bool) -> list[str]:
        """Take the policy's weights (reference.refresh_every): the trainer's object-store buckets."""
        from selfsteer.sync.buckets import copy_named, unpack_bucket
        from selfsteer.sync.objectstore import load_object_buckets

        def load(bucket, flat):
            copy_named(self.model, unpack_bucket(bucket, flat), "reference model")
        return load_object_buckets(buckets, flats, load, verify)

    def weights_fingerprint(self, buckets: list) -> list[str]:
        from selfsteer.sync.buckets import fingerprint, pack_bucket

        params = {n: p.detach() for n, p in self.model.named_parameters()}
        return [fingerprint(pack_bucket(b, params, "cpu")) for b in buckets]

    def score(self, contexts: list[list[int]], responses: list[list[int]]) -> tuple[list[float], list[float]]:
        """Summed response log-probs and scored token counts, one per (context, response) row."""
        from selfsteer.utils.progress import ProgressLine

        bar = ProgressLine("reference scoring", len(contexts), "rows")
        try:
            return self.scorer.score(contexts, responses, progress=bar.update)
        finally:
            bar.close()

    def token_scores(self, contexts: list[list[int]], responses: list[list[int]]) -> list[list[float]]:
        """Per-token response log-probs, one list per row (SePO's token rewards read these)."""
        return self.scorer.token_scores(contexts, responses)


def shard_rows(contexts: list[list[int]], responses: list[list[int]], num_shards: int) -> list[list[int]]:
    """Row indices for each of `num_shards` reference actors, balanced by tokens.

    Rows sharing a context stay together (the packed scorer runs a context once per micro-batch);
    context groups go largest first to the least-loaded shard. Each shard lists its rows in
    request order, so results are put back by index.
    """
    groups: dict[tuple, list[int]] = {}
    for i, ctx in enumerate(contexts):
        groups.setdefault(tuple(ctx), []).append(i)
    sized = sorted(groups.items(), key=lambda g: -(len(g[0]) + sum(len(responses[i]) for i in g[1])))
    shards: list[list[int]] = [[] for _ in range(num_shards)]
    load = [0] * num_shards
    for ctx, rows in sized:
        k = min(range(num_shards), key=lambda j: (load[j], j))
        shards[k] += rows
        load[k] += len(ctx) + sum(len(responses[i]) for i in rows)
    return [sorted(rows) for rows in shards]


def score_on_ranks(submit, wait, ranks: list, contexts: list[list[int]], responses: list[list[int]],
                   every_rank: bool) -> tuple[list, list]:
    """Deal reference rows out to the trainer ranks (contexts kept together) and put the results back in
    request order; `every_rank` (ZeRO-3, whose forwards run in lockstep): every rank is called, those
    with no rows too.

    `submit(rank, contexts, responses)` -> a result ref; `wait(refs)` -> the results."""
    shards = [(r, rows) for r, rows in zip(ranks, shard_rows(contexts, responses, len(ranks))) if rows or every_rank]
    parts = wait([submit(r, [contexts[i] for i in rows], [responses[i] for i in rows]) for r, rows in shards])
    sums, counts = [None] * len(contexts), [None] * len(contexts)
    for (_, rows), (s, c) in zip(shards, parts):
        for j, i in enumerate(rows):
            sums[i] = s[j]
            if c:
                counts[i] = c[j]
    return sums, counts
