"""Summed response log-probs of (context, response) token sequences: shared by trainer and reference.

Two layouts for one forward pass: right-padded rows (one sequence per row), or packed rows
(each distinct context once, followed by every response scored under it, several such units
per row, under a 4D mask that keeps units and sibling responses apart). Packing saves the
padding and the repeated contexts: DPO's chosen/rejected share x, SSO's six rows share three.

Log-probs are taken chunk by chunk over the scored tokens (target logit minus logsumexp, upcast
to float32 one chunk at a time), so no [tokens, vocab] float32 tensor exists; with `split_head`
the lm_head itself runs per chunk on the final hidden states, so full logits never exist either.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# Scored tokens per log-softmax chunk: 512 x 152k vocab x 4 B = 311 MB of float32 logits at a time.
DEFAULT_CHUNK = 512


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


def gathered_logps(source: torch.Tensor, row: torch.Tensor, pos: torch.Tensor, target: torch.Tensor, *,
                   head=None, chunk_size: int = DEFAULT_CHUNK) -> torch.Tensor:
    """log p(target) for each scored token, at least float32, `chunk_size` tokens at a time.

    Args:
        source: [R, W, V] logits, or [R, W, H] final hidden states when `head` is given.
        row, pos, target: [M] where each scored token's logit sits (row, position) and the token.
        head: the lm_head ([c, H] -> [c, V]), applied per chunk so [M, V] logits never exist.
        chunk_size: tokens per chunk; 0 takes all M at once through one float32 log-softmax (the
            unchunked path, kept as the memory benchmark's baseline).
    Returns:
        [M] log-probs in float32 (float64 for float64 logits); differentiable w.r.t. `source` and
        the head's weights.
    """
    if chunk_size < 0:
        raise ValueError(f"chunk_size must be >= 0, got {chunk_size}")
    if chunk_size == 0:
        picked = source[row, pos]
        logits = picked if head is None else head(picked)
        return -F.cross_entropy(_upcast(logits), target, reduction="none")
    if head is None and torch.is_grad_enabled() and source.requires_grad:
        return _ChunkedLogps.apply(source, row, pos, target, chunk_size)
    # Under grad each chunk's lm_head is recomputed in backward: autograd keeps the [c, H] hidden
    # states (and the indices), not every chunk's float32 logits.
    grad = torch.is_grad_enabled() and head is not None
    parts = []
    for s in range(0, row.numel(), chunk_size):
        args = (source, row[s:s + chunk_size], pos[s:s + chunk_size], target[s:s + chunk_size], head)
        parts.append(checkpoint(_chunk_logps, *args, use_reentrant=False) if grad else _chunk_logps(*args))
    return torch.cat(parts) if parts else torch.zeros(0, dtype=_upcast(source).dtype, device=source.device)


class _ChunkedLogps(torch.autograd.Function):
    """Chunked log-probs of full logits with a hand-written backward (d/dx = onehot - softmax).

    Per-chunk autograd would give every chunk its own full-size zero-filled gradient of the
    logits; here one gradient tensor takes every chunk's rows in place.
    """

    @staticmethod
    def forward(ctx, source, row, pos, target, chunk_size):
        ctx.save_for_backward(source, row, pos, target)
        ctx.chunk_size = chunk_size
        with torch.no_grad():
            parts = [_chunk_logps(source, row[s:s + chunk_size], pos[s:s + chunk_size], target[s:s + chunk_size], None)
                     for s in range(0, row.numel(), chunk_size)]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=_upcast(source).dtype, device=source.device)

    @staticmethod
    def backward(ctx, grad_out):
        source, row, pos, target = ctx.saved_tensors
        grad = torch.zeros_like(source)
        for s in range(0, row.numel(), ctx.chunk_size):
            r, p, t = row[s:s + ctx.chunk_size], pos[s:s + ctx.chunk_size], target[s:s + ctx.chunk_size]
            g = torch.softmax(_upcast(source[r, p]), -1).neg_()
            g[torch.arange(len(t), device=g.device), t] += 1
            g *= grad_out[s:s + ctx.chunk_size, None]
            # accumulate: a packed context's last position predicts every sibling response's first token.
            grad.index_put_((r, p), g.to(grad.dtype), accumulate=True)
        return grad, None, None, None, None


def _upcast(logits: torch.Tensor) -> torch.Tensor:
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def _chunk_logps(source, row, pos, target, head):
    picked = source[row, pos]
    logits = _upcast(picked if head is None else head(picked))
    return logits.gather(-1, target[:, None]).squeeze(-1) - logits.logsumexp(-1)


@dataclass
class PackedRows:
    """A packed batch: model inputs plus where each scored token's logit sits and whom it counts for."""

    input_ids: torch.Tensor  # [R, W]
    position_ids: torch.Tensor  # [R, W]
    allowed: torch.Tensor | None  # [R, 1, W, W] bool: query may attend key; None: varlen (position ids only)
    row: torch.Tensor  # [M] per scored token: row, position of the logit that predicts it,
    pos: torch.Tensor  # the token itself and the sequence it belongs to
    target: torch.Tensor
    owner: torch.Tensor

    def model_inputs(self, mask_dtype: torch.dtype) -> dict:
        inputs = dict(input_ids=self.input_ids, position_ids=self.position_ids)
        if self.allowed is not None:
            inputs["attention_mask"] = self.attention_mask(mask_dtype)
        return inputs

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


def pack_varlen(contexts: list[list[int]], responses: list[list[int]]) -> PackedRows:
    """Every (context, response) as its own sequence, all in one row, positions restarting at 0.

    The layout flash-attention's varlen kernel takes (HF derives the sequence boundaries from the
    position ids when no attention mask is given; SDPA then builds the block-diagonal mask). A
    context shared by several responses is repeated: varlen sequences cannot share a prefix.
    """
    if len(contexts) != len(responses):
        raise ValueError(f"{len(contexts)} contexts but {len(responses)} responses")
    ids, positions, row, pos, target, owner = [], [], [], [], [], []
    for i, (ctx, resp) in enumerate(zip(contexts, responses)):
        if not ctx:
            raise ValueError(f"row {i}: empty context (nothing to predict the response's first token from)")
        at, seq = len(ids), list(ctx) + list(resp)
        ids += seq
        positions += range(len(seq))
        pos += range(at + len(ctx) - 1, at + len(seq) - 1)  # logit at t predicts token t + 1
        target += resp
        owner += [i] * len(resp)
    as_row = lambda xs: torch.tensor(xs, dtype=torch.long)[None]  # noqa: E731
    return PackedRows(as_row(ids), as_row(positions), None, torch.zeros(len(pos), dtype=torch.long),
                      as_row(pos)[0], as_row(target)[0], as_row(owner)[0])


def score_sequences(model, contexts, responses, *, pad_id: int, device, micro_batch_size: int = 16,
                    packed: bool = False, mask_dtype: torch.dtype = torch.float32, masks=None,
                    split_head: bool = False, chunk_size: int = DEFAULT_CHUNK, varlen: bool = False, progress=None):
    """Forward `model` over (context, response) rows in micro-batches; grads flow if enabled.

    `packed` shares contexts and fills rows (see pack_rows) under a 4D attention mask of
    `mask_dtype` (the model's dtype); results match the padded path to float32 rounding. Rows are
    then grouped by context first, so rows sharing one land in the same micro-batch. `masks`
    (SePO's selected tokens, see pack_sequences) are scored on padded rows. `varlen` packs as
    pack_varlen does (flash-attention) instead of pack_rows. `split_head` runs the
    HF model's decoder and applies its lm_head per chunk (see split_head_supported); `chunk_size`
    as in gathered_logps. `progress(n)`, if
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
            p = pack_varlen(ctx, resp) if varlen else pack_rows(ctx, resp, pad_id)
            inputs = p.model_inputs(mask_dtype)
            row, pos, target, owner = p.row, p.pos, p.target, p.owner
            c = torch.tensor([float(len(r)) for r in resp])
        else:
            ids, attn, labels = pack_sequences(ctx, resp, pad_id,
                                               None if masks is None else masks[start:start + micro_batch_size])
            inputs = dict(input_ids=ids, attention_mask=attn)
            row, pos = (labels != -100).nonzero(as_tuple=True)  # row-major: each row's tokens in order
            target, owner = labels[row, pos], row
            c = (labels != -100).sum(-1).float()
        source, head = _forward(model, inputs, device, split_head)
        token_logps = gathered_logps(source, row.to(device), pos.to(device), target.to(device), head=head,
                                     chunk_size=chunk_size)
        sums.append(torch.zeros(len(ctx), dtype=token_logps.dtype, device=token_logps.device)
                    .index_add(0, owner.to(token_logps.device), token_logps))
        counts.append(c.to(token_logps.device))
        if progress is not None:
            progress(len(ctx))
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order))
    sums, counts = torch.cat(sums), torch.cat(counts)
    return sums[inverse.to(sums.device)], counts[inverse.to(counts.device)]


def _forward(model, inputs: dict, device, split_head: bool):
    """(logits, None), or (final hidden states, lm_head) when `split_head`."""
    inputs = {k: v.to(device) for k, v in inputs.items()}
    if split_head:
        return model.get_decoder()(**inputs, use_cache=False).last_hidden_state, model.get_output_embeddings()
    return model(**inputs, use_cache=False).logits, None


def _probe_rows(vocab_size: int):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(4, max(vocab_size, 5), (22,), generator=gen).tolist()
    # Lengths 12, 5, 5, 5: the short ones share a row of the long one's width; two share a context.
    return [ids[:8], ids[8:11], ids[11:14], ids[11:14]], [ids[14:18], ids[18:20], ids[20:22], ids[8:10]]


@torch.no_grad()
def packing_supported(model, *, pad_id: int, device, vocab_size: int, mask_dtype: torch.dtype = torch.float32,
                      varlen: bool = False) -> bool:
    """True if `model` honours the packed layout (scores packed sequences as it scores them padded).

    A model (or attention kernel) that ignores a custom 4D mask (or, `varlen`, the sequence
    boundaries in the position ids) would let packed sequences attend to each other; callers fall
    back to padded rows then. All ZeRO-3 ranks must call this together.
    """
    contexts, responses = _probe_rows(vocab_size)
    padded, _ = score_sequences(model, contexts, responses, pad_id=pad_id, device=device, micro_batch_size=4)
    packed, _ = score_sequences(model, contexts, responses, pad_id=pad_id, device=device, micro_batch_size=4,
                                packed=True, mask_dtype=mask_dtype, varlen=varlen)
    return torch.allclose(packed.float(), padded.float(), rtol=1e-3, atol=1e-3)


@torch.no_grad()
def split_head_supported(model, *, pad_id: int, device, vocab_size: int) -> bool:
    """True if decoder-then-lm_head scores as the full forward does.

    A model that scales or soft-caps its logits after the lm_head (Gemma 2, Granite, Cohere) would
    be scored wrong by the split path; callers keep full logits then (still chunked). Calls the
    submodules directly, so only for a plain HF model (not a DeepSpeed engine).
    """
    try:
        if not (callable(model.get_decoder()) and isinstance(model.get_output_embeddings(), torch.nn.Module)):
            return False
    except (AttributeError, NotImplementedError):
        return False
    contexts, responses = _probe_rows(vocab_size)
    full, _ = score_sequences(model, contexts, responses, pad_id=pad_id, device=device, micro_batch_size=4)
    split, _ = score_sequences(model, contexts, responses, pad_id=pad_id, device=device, micro_batch_size=4,
                               split_head=True)
    return torch.allclose(split.float(), full.float(), rtol=1e-3, atol=1e-3)


@torch.no_grad()
def token_logprobs(model, contexts, responses, *, pad_id: int, device, micro_batch_size: int = 16,
                   split_head: bool = False, chunk_size: int = DEFAULT_CHUNK) -> list[list[float]]:
    """Per-token log p(y_t | x, y_<t) of every response token (EOS included), one list per row."""
    out = []
    for start in range(0, len(contexts), micro_batch_size):
        resp = responses[start:start + micro_batch_size]
        ids, attn, labels = pack_sequences(contexts[start:start + micro_batch_size], resp, pad_id)
        row, pos = (labels != -100).nonzero(as_tuple=True)  # row-major: each row's tokens in order
        source, head = _forward(model, dict(input_ids=ids, attention_mask=attn), device, split_head)
        logps = gathered_logps(source, row.to(device), pos.to(device), labels[row, pos].to(device), head=head,
                               chunk_size=chunk_size)
        out += [part.tolist() for part in logps.cpu().split([len(r) for r in resp])]
    return out
