"""Repetition (prompt + output), frequency and presence (output) penalties.

Each step builds, per row, which ids the prompt holds and how often each id was generated: [B, V]
tables, ~39 MB per byte of entry for 256 rows of Qwen3's vocabulary. So the prompt's is one byte an
entry (bool) and the output counts four (int32), not torch's default int64.
"""

from __future__ import annotations

import torch


def _token_counts(token_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[B, L] ids padded with ``vocab_size`` -> [B, vocab] occurrence counts (int32)."""
    counts = torch.zeros(token_ids.shape[0], vocab_size + 1, dtype=torch.int32, device=token_ids.device)
    counts.scatter_add_(1, token_ids, torch.ones_like(token_ids, dtype=torch.int32))
    return counts[:, :vocab_size]


def _token_mask(token_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[B, L] ids padded with ``vocab_size`` -> [B, vocab]: whether each id occurs."""
    mask = torch.zeros(token_ids.shape[0], vocab_size + 1, dtype=torch.bool, device=token_ids.device)
    mask.scatter_(1, token_ids, True)
    return mask[:, :vocab_size]


def apply_penalties(
    logits: torch.Tensor,
    prompt_token_ids: torch.Tensor,
    output_token_ids: torch.Tensor,
    presence_penalties: torch.Tensor,
    frequency_penalties: torch.Tensor,
    repetition_penalties: torch.Tensor,
) -> torch.Tensor:
    vocab_size = logits.shape[1]
    output_counts = _token_counts(output_token_ids, vocab_size)
    output_mask = output_counts > 0
    prompt_mask = _token_mask(prompt_token_ids, vocab_size)
    # Repetition penalty: shrink the logits of every token seen so far
    # (divide positive logits, multiply negative ones).
    rep = repetition_penalties.unsqueeze(1).expand_as(logits)
    seen = prompt_mask | output_mask
    penalized = torch.where(logits > 0, logits / rep, logits * rep)
    logits = torch.where(seen, penalized, logits)
    # OpenAI-style penalties on the generated tokens only.
    logits = logits - frequency_penalties.unsqueeze(1) * output_counts
    logits = logits - presence_penalties.unsqueeze(1) * output_mask
    return logits
