"""Token-level stop conditions, checked right after a token is appended."""

from __future__ import annotations

from folovllm.request import RequestStatus, Sequence


def reaches_length_limit(seq: Sequence, max_model_len: int, num_pending: int = 0) -> bool:
    """Whether ``seq``, with ``num_pending`` more tokens, hits max_model_len or max_tokens."""
    max_tokens = seq.sampling_params.max_tokens
    return seq.num_tokens + num_pending >= max_model_len or (
        max_tokens is not None and seq.num_output_tokens + num_pending >= max_tokens
    )


def check_stop(seq: Sequence, max_model_len: int) -> RequestStatus | None:
    """The finished status ``seq`` reaches with its last token, or None."""
    params = seq.sampling_params
    if reaches_length_limit(seq, max_model_len):
        return RequestStatus.FINISHED_LENGTH_CAPPED
    if seq.num_output_tokens < params.min_tokens:
        return None
    last = seq.output_token_ids[-1]
    if last in params.all_stop_token_ids:
        # A user's stop_token_ids are reported as stop_reason; EOS is not.
        if last in params.stop_token_ids:
            seq.stop_reason = last
        return RequestStatus.FINISHED_STOPPED
    return None
