"""Summed response log-probs of (context, response) token sequences: shared by trainer and reference.

Two layouts for one forward pass: right-padded rows (one sequence per row), or packed rows
(several sequences per row, position ids restarting at 0 for each, so transformers' mask
utilities build a block-diagonal causal mask and no sequence attends to another). Packing
fills the padding the longest sequence forces on the shorter ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pack_sequences(contexts: list[list[int]], responses: list[list[int]], pad_id: int):
    """Right-pad context+response rows into one batch.

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
    return input_ids, attention, labels


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of log p(label) over labelled positions, per row, in float32.

    Args:
        logits: [N, T, V] next-token logits.
        labels: [N, T] target ids, -100 where unscored.
    Returns:
        (summed log-probs [N] float32, scored token counts [N] float32)
    """
    token_logps, mask = _token_logprobs(logits, labels)
    return (token_logps * mask).sum(-1), mask.sum(-1).float()


def _token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n, t, v = logits.shape
    token_logps = -F.cross_entropy(logits.reshape(n * t, v).float(), labels.reshape(n * t),
                                   ignore_index=-100, reduction="none").view(n, t)
    return token_logps, labels != -100


def pack_rows(contexts: list[list[int]], responses: list[list[int]], pad_id: int):
    """Pack context+response sequences into as few rows as fit the longest one (first-fit decreasing).

    Returns:
        input_ids, position_ids, labels, owner: [R, W] each; `owner` holds the sequence index at
        scored (response) positions and -1 elsewhere, so per-sequence sums are one scatter-add.
    """
    if len(contexts) != len(responses):
        raise ValueError(f"{len(contexts)} contexts but {len(responses)} responses")
    lengths = [len(c) + len(r) for c, r in zip(contexts, responses)]
    width = max(lengths)
    rows: list[list[int]] = []  # sequence indices per row
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((b for b, room in enumerate(free) if room >= lengths[i]), None)
        if row is None:
            rows.append([])
            free.append(width)
            row = len(rows) - 1
        rows[row].append(i)
        free[row] -= lengths[i]
    shape = (len(rows), width)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    labels = torch.full(shape, -100, dtype=torch.long)
    owner = torch.full(shape, -1, dtype=torch.long)
    # Padding at a row's end counts up from 0 too: its own segment, never attended to by a sequence.
    position_ids = torch.zeros(shape, dtype=torch.long)
    for r, members in enumerate(rows):
        at = 0
        for i in members:
            ctx, n = contexts[i], lengths[i]
            seq = torch.tensor(list(ctx) + list(responses[i]), dtype=torch.long)
            input_ids[r, at:at + n] = seq
            position_ids[r, at:at + n] = torch.arange(n)
            labels[r, at + len(ctx) - 1:at + n - 1] = seq[len(ctx):]
            owner[r, at + len(ctx) - 1:at + n - 1] = i
            at += n
        position_ids[r, at:] = torch.arange(width - at)
    return input_ids, position_ids, labels, owner


def score_sequences(model, contexts, responses, *, pad_id: int, device, micro_batch_size: int = 16,
                    packed: bool = False):
    """Forward `model` over (context, response) rows in micro-batches; grads flow if enabled.

    `packed` puts several sequences in one row (see pack_rows); the model must build its mask with
    transformers' masking utilities (every current HF decoder does); results match the padded path
    to float32 rounding.
    """
    sums, counts = [], []
    for start in range(0, len(contexts), micro_batch_size):
        ctx, resp = contexts[start:start + micro_batch_size], responses[start:start + micro_batch_size]
        if packed:
            ids, pos, labels, owner = pack_rows(ctx, resp, pad_id)
            logits = model(input_ids=ids.to(device), position_ids=pos.to(device), use_cache=False).logits
            token_logps, _ = _token_logprobs(logits, labels.to(device))
            owner = owner.to(device)
            scored = owner >= 0
            s = torch.zeros(len(ctx), dtype=torch.float32, device=token_logps.device)
            s = s.index_add(0, owner[scored], token_logps[scored])
            c = torch.tensor([float(len(r)) for r in resp], device=token_logps.device)
        else:
            ids, attn, labels = pack_sequences(ctx, resp, pad_id)
            logits = model(input_ids=ids.to(device), attention_mask=attn.to(device), use_cache=False).logits
            s, c = sequence_logprobs(logits, labels.to(device))
        sums.append(s)
        counts.append(c)
    return torch.cat(sums), torch.cat(counts)


@torch.no_grad()
def packing_supported(model, *, pad_id: int, device, vocab_size: int) -> bool:
    """True if `model` isolates packed sequences (scores two packed ones as it scores them padded).

    A model that ignores position-id segment boundaries would let packed sequences attend to each
    other; callers fall back to padded rows then. All ZeRO-3 ranks must call this together.
    """
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(4, max(vocab_size, 5), (22,), generator=gen).tolist()
    # Lengths 12, 5, 5: the two short ones share a row of the long one's width.
    contexts, responses = [ids[:8], ids[8:11], ids[11:14]], [ids[14:18], ids[18:20], ids[20:22]]
    padded, _ = score_sequences(model, contexts, responses, pad_id=pad_id, device=device, micro_batch_size=3)
    packed, _ = score_sequences(model, contexts, responses, pad_id=pad_id, device=device, micro_batch_size=3,
                                packed=True)
    return torch.allclose(packed.float(), padded.float(), rtol=1e-3, atol=1e-3)
