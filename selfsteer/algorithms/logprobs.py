"""Summed response log-probs of (context, response) token sequences: shared by trainer and reference."""

from __future__ import annotations

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


def score_sequences(model, contexts, responses, *, pad_id: int, device, micro_batch_size: int = 16, masks=None):
    """Forward `model` over (context, response) rows in micro-batches; grads flow if enabled."""
    sums, counts = [], []
    for start in range(0, len(contexts), micro_batch_size):
        ids, attn, labels = pack_sequences(contexts[start:start + micro_batch_size],
                                           responses[start:start + micro_batch_size], pad_id,
                                           None if masks is None else masks[start:start + micro_batch_size])
        logits = model(input_ids=ids.to(device), attention_mask=attn.to(device), use_cache=False).logits
        s, c = sequence_logprobs(logits, labels.to(device))
        sums.append(s)
        counts.append(c)
    return torch.cat(sums), torch.cat(counts)


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
