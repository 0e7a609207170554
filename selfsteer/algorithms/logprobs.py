"""Summed response log-probs of (context, response) token sequences: shared by trainer and reference.

Two layouts for one forward pass: right-padded rows (one sequence per row), or packed rows
(each distinct context once, followed by every response scored under it, several such units
per row, under a 4D mask that keeps units and sibling responses apart). Packing saves the
padding and the repeated contexts: DPO's chosen/rejected share x, SSO's six rows share three.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def pack_sequences(contexts: list[list[int]], responses: list[list[int]], pad_id: int, masks=None):
    """Right-pad context+response rows into one batch.

    `masks` (one bool list per response, optional) leaves only the marked response tokens scored:
    SePO trains on a selected subset of each response's tokens.

    Returns:
        input_ids [N, T], attention_mask [N, T], labels [N, T] where labels hold the next token at
        response positions and -100 elsewhere (so only response tokens are scored, EOS included).
    """
    if len(contexts) != len(responses):
        raise ValueError(f"{len(contexts)} contexts but {len(responses)} responses")
    lengths = [len(c) + len(r) for c, r in zip(contexts, responses)]
    width = max(lengths)
    input_ids = torch.full((len(lengths), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(lengths), width), dtype=torch.long)
    labels = torch.full((len(lengths), width), -100, dtype=torch.long)
    for row, (ctx, resp) in enumerate(zip(contexts, responses)):
        seq = torch.tensor(list(ctx) + list(resp), dtype=torch.long)
        input_ids[row, : len(seq)] = seq
        attention[row, : len(seq)] = 1
        # logits at position t predict token t+1: response token j sits at len(ctx)+j.
        labels[row, len(ctx) - 1 : len(seq) - 1] = seq[len(ctx):]
        if masks is not None and masks[row] is not None:
            keep = torch.tensor(list(masks[row]), dtype=torch.bool)
            if keep.numel() != len(resp):
                raise ValueError(f"row {row}: token mask of {keep.numel()} for a {len(resp)}-token response")
            labels[row, len(ctx) - 1 : len(seq) - 1][~keep] = -100
    return input_ids, attention, labels


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of log p(label) over labelled positions, per row, in float32.

    Args:
        logits: [N, T, V] next-token logits.
        labels: [N, T] target ids, -100 where unscored.
    Returns:
        (summed log-probs [N] float32, scored token counts [N] float32)
    """
    n, t, v = logits.shape
    token_logps = -F.cross_entropy(logits.reshape(n * t, v).float(), labels.reshape(n * t),
                                   ignore_index=-100, reduction="none").view(n, t)
    mask = labels != -100
    return (token_logps * mask).sum(-1), mask.sum(-1).float()


@dataclass
class PackedRows:
    """A packed batch: model inputs plus where each scored token's logit sits and whom it counts for."""

    input_ids: torch.Tensor  # [R, W]
    position_ids: torch.Tensor  # [R, W]
    allowed: torch.Tensor  # [R, 1, W, W] bool: query may attend key
    row: torch.Tensor  # [M] per scored token: row, position of the logit that predicts it,
    pos: torch.Tensor  # the token itself and the sequence it belongs to
    target: torch.Tensor
    owner: torch.Tensor

    def attention_mask(self, dtype: torch.dtype) -> torch.Tensor:
        """Additive float mask (0 / dtype min): what sdpa and eager attention both take as given."""
        mask = torch.zeros(self.allowed.shape, dtype=dtype)
        return mask.masked_fill_(~self.allowed, torch.finfo(dtype).min)


def pack_rows(contexts: list[list[int]], responses: list[list[int]], pad_id: int) -> PackedRows:
    """Pack sequences into as few rows as fit the longest unit, sharing each distinct context.

    A unit is one context followed by every response scored under it (DPO's chosen and rejected
    share x; SSO's six rows share three contexts): the context is run once, each response attends
    the context and itself only, its positions continuing after the context. Units are placed
    first-fit decreasing; padding attends to itself only.
    """
    if len(contexts) != len(responses):
        raise ValueError(f"{len(contexts)} contexts but {len(responses)} responses")
    units: dict[tuple, list[int]] = {}
    for i, ctx in enumerate(contexts):
        if not ctx:
            raise ValueError(f"row {i}: empty context (nothing to predict the response's first token from)")
        units.setdefault(tuple(ctx), []).append(i)
    unit_list = list(units.items())
    sizes = [len(ctx) + sum(len(responses[i]) for i in members) for ctx, members in unit_list]
    width = max(sizes)
    bins: list[list[int]] = []
    free: list[int] = []
    for u in sorted(range(len(unit_list)), key=lambda u: -sizes[u]):
        b = next((b for b, room in enumerate(free) if room >= sizes[u]), None)
        if b is None:
            bins.append([])
            free.append(width)
            b = len(bins) - 1
        bins[b].append(u)
        free[b] -= sizes[u]
    shape = (len(bins), width)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    unit_of = torch.full(shape, -1, dtype=torch.long)  # -1: padding
    part_of = torch.zeros(shape, dtype=torch.long)  # 0: context, j + 1: the unit's j-th response
    row, pos, target, owner = [], [], [], []
    for r, members in enumerate(bins):
        at = 0
        for u in members:
            ctx, seqs = unit_list[u]
            n = len(ctx)
            input_ids[r, at:at + n] = torch.tensor(ctx, dtype=torch.long)
            position_ids[r, at:at + n] = torch.arange(n)
            unit_of[r, at:at + n] = u
            start = at + n
            for j, i in enumerate(seqs):
                resp, m = responses[i], len(responses[i])
                input_ids[r, start:start + m] = torch.tensor(resp, dtype=torch.long)
                position_ids[r, start:start + m] = torch.arange(n, n + m)
                unit_of[r, start:start + m] = u
                part_of[r, start:start + m] = j + 1
                # Token 0 is predicted by the context's last position (shared), token t by token t-1.
                if m:
                    pos += [at + n - 1] + list(range(start, start + m - 1))
                row += [r] * m
                target += list(resp)
                owner += [i] * m
                start += m
            at = start
    q, k = torch.arange(width).view(-1, 1), torch.arange(width).view(1, -1)
    same_unit = (unit_of[:, :, None] == unit_of[:, None, :]) & (unit_of[:, :, None] >= 0)
    visible = (part_of[:, None, :] == 0) | (part_of[:, :, None] == part_of[:, None, :])
    allowed = (same_unit & visible & (k <= q)) | (q == k)
    as_tensor = lambda xs: torch.tensor(xs, dtype=torch.long)  # noqa: E731
    return PackedRows(input_ids, position_ids, allowed[:, None], as_tensor(row), as_tensor(pos), as_tensor(target),
                      as_tensor(owner))


def score_sequences(model, contexts, responses, *, pad_id: int, device, micro_batch_size: int = 16,
                    packed: bool = False, mask_dtype: torch.dtype = torch.float32, masks=None, progress=None):
    """Forward `model` over (context, response) rows in micro-batches; grads flow if enabled.

    `packed` shares contexts and fills rows (see pack_rows) under a 4D attention mask of
    `mask_dtype` (the model's dtype); results match the padded path to float32 rounding. Rows are
    then grouped by context first, so rows sharing one land in the same micro-batch. `masks`
    (SePO's selected tokens, see pack_sequences) are scored on padded rows. `progress(n)`, if
    given, is called with each micro-batch's row count after its forward pass.
    """
    packed = packed and masks is None
    order = list(range(len(contexts)))
    if packed and len(contexts) > micro_batch_size:
        order.sort(key=lambda i: contexts[i])
        contexts, responses = [contexts[i] for i in order], [responses[i] for i in order]
    sums, counts = [], []
    for start in range(0, len(contexts), micro_batch_size):
        ctx, resp = contexts[start:start + micro_batch_size], responses[start:start + micro_batch_size]
        if packed:
            p = pack_rows(ctx, resp, pad_id)
            logits = model(input_ids=p.input_ids.to(device), position_ids=p.position_ids.to(device),
                           attention_mask=p.attention_mask(mask_dtype).to(device), use_cache=False).logits
            picked = logits[p.row.to(device), p.pos.to(device)].float()  # [M, V]: only the scored positions
            token_logps = -F.cross_entropy(picked, p.target.to(device), reduction="none")
            s = torch.zeros(len(ctx), dtype=torch.float32, device=logits.device).index_add(0, p.owner.to(device), token_logps)
            c = torch.tensor([float(len(r)) for r in resp], device=logits.device)
        else:
            ids, attn, labels = pack_sequences(ctx, resp, pad_id,
                                               None if masks is None else masks[start:start + micro_batch_size])
            logits = model(input_ids=ids.to(device), attention_mask=attn.to(device), use_cache=False).logits
            s, c = sequence_logprobs(logits, labels.to(device))
        sums.append(s)
        counts.append(c)
        if progress is not None:
            progress(len(ctx))
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order))
    sums, counts = torch.cat(sums), torch.cat(counts)
    return sums[inverse.to(sums.device)], counts[inverse.to(counts.device)]


@torch.no_grad()
def packing_supported(model, *, pad_id: int, device, vocab_size: int, mask_dtype: torch.dtype = torch.float32) -> bool:
    """True if `model` honours the packed layout (scores packed sequences as it scores them padded).

    A model (or attention kernel) that ignores a custom 4D mask would let packed sequences attend
    to each other; callers fall back to padded rows then. All ZeRO-3 ranks must call this together.
    """
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(4, max(vocab_size, 5), (22,), generator=gen).tolist()
    # Lengths 12, 5, 5, 5: the short ones share a row of the long one's width; two share a context.
    contexts = [ids[:8], ids[8:11], ids[11:14], ids[11:14]]
    responses = [ids[14:18], ids[18:20], ids[20:22], ids[8:10]]
    padded, _ = score_sequences(model, contexts, responses, pad_id=pad_id, device=device, micro_batch_size=4)
    packed, _ = score_sequences(model, contexts, responses, pad_id=pad_id, device=device, micro_batch_size=4,
                                packed=True, mask_dtype=mask_dtype)
    return torch.allclose(packed.float(), padded.float(), rtol=1e-3, atol=1e-3)


@torch.no_grad()
def token_logprobs(model, contexts, responses, *, pad_id: int, device, micro_batch_size: int = 16) -> list[list[float]]:
    """Per-token log p(y_t | x, y_<t) of every response token (EOS included), one list per row."""
    out = []
    for start in range(0, len(contexts), micro_batch_size):
        resp = responses[start:start + micro_batch_size]
        ids, attn, labels = pack_sequences(contexts[start:start + micro_batch_size], resp, pad_id)
        logits = model(input_ids=ids.to(device), attention_mask=attn.to(device), use_cache=False).logits
        n, t, v = logits.shape
        logps = -F.cross_entropy(logits.reshape(n * t, v).float(), labels.to(device).reshape(n * t),
                                 ignore_index=-100, reduction="none").view(n, t)
        for row, r in enumerate(resp):
            keep = labels[row] != -100
            out.append(logps[row][keep.to(logps.device)].tolist()[:len(r)])
    return out
