"""After each step: logprobs, incremental text, stop strings, metrics, RequestOutputs.

The output processor reports and the engine decides: a stop string found in
the text is returned to the engine, which finishes the sequence through the
scheduler (vLLM's ``reqs_to_abort``); only then are the outputs built.
"""

from __future__ import annotations

import time

from folovllm.engine.detokenizer import IncrementalDetokenizer, find_stop_string, make_decode
from folovllm.logprobs import PromptLogprobs, SampleLogprobs, append_logprobs_for_next_position, create_prompt_logprobs
from folovllm.model_runner_output import LogprobsLists, ModelRunnerOutput
from folovllm.outputs import CompletionOutput, RequestOutput
from folovllm.request import Request, RequestStatus, Sequence
from folovllm.sampling_params import RequestOutputKind


class RequestState:
    def __init__(self, request: Request, tokenizer) -> None:
        self.request = request
        params = request.sampling_params
        # Text is built token by token only when someone needs it before the
        # end (stop strings, streaming); otherwise it is decoded once at the end.
        # Without a tokenizer (skip_tokenizer_init) there is no text at all.
        self.streaming = params.output_kind != RequestOutputKind.FINAL_ONLY  # an output after every step
        self.incremental = tokenizer is not None and (bool(params.stop) or self.streaming)
        # While a sequence runs, its text may end in the start of a stop string that a later token
        # completes (and cuts): streamed text holds back that many characters, as vLLM's does.
        self.stop_buffer = max(map(len, params.stop)) - 1 if params.stop and not params.include_stop_str_in_output else 0
        # DELTA: per sequence, how many tokens and characters earlier outputs carried, and whether
        # its finish was reported; prompt logprobs go out once, with the first output.
        self.delta = params.output_kind == RequestOutputKind.DELTA
        self.sent: dict[int, tuple[int, int, bool]] = {}
        self.prompt_logprobs_sent = False
        self.detokenizers: dict[int, IncrementalDetokenizer] = {}
        # vLLM's layout: None for the first prompt token (nothing predicts it), then one entry per token.
        self.prompt_logprobs: PromptLogprobs | None = (
            None if params.prompt_logprobs is None else create_prompt_logprobs(params.flat_logprobs)
        )
        if self.incremental:
            for seq in request.seqs:
                self.detokenizers[seq.seq_id] = IncrementalDetokenizer(
                    tokenizer, request.prompt_token_ids, params.skip_special_tokens, params.spaces_between_special_tokens
                )


class OutputProcessor:
    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.request_states: dict[str, RequestState] = {}
        # Requests with prompt_logprobs, by the id of the sequence that computes them (sibling 0).
        self.prompt_logprob_states: dict[int, RequestState] = {}
        # Each token's text on its own, for logprob entries: k + 1 lookups per sequence per step.
        self.token_texts: dict[int, str] = {}

    def add_request(self, request: Request) -> None:
        state = RequestState(request, self.tokenizer)
        self.request_states[request.request_id] = state
        if state.prompt_logprobs is not None:
            self.prompt_logprob_states[request.seqs[0].seq_id] = state

    def _drop(self, state: RequestState) -> None:
        del self.request_states[state.request.request_id]
        self.prompt_logprob_states.pop(state.request.seqs[0].seq_id, None)

    def finish_requests(self, request_ids: list[str]) -> list[RequestOutput]:
        """Final outputs of requests that ended outside a step (aborted, failed); their state is dropped."""
        outputs = []
        now = time.time()
        for rid in request_ids:
            state = self.request_states.get(rid)
            if state is not None:
                self._drop(state)
                state.request.metrics.finished_time = now
                outputs.append(self._make_output(state, finished=True))
        return outputs

    def has_unfinished_requests(self) -> bool:
        return bool(self.request_states)

    def process_new_tokens(self, updated: list[Sequence], model_output: ModelRunnerOutput) -> list[Sequence]:
        """Logprobs and text of each sequence's new token.

        Returns the sequences whose text now contains a stop string; their
        ``output_text`` and ``stop_reason`` are set, the caller finishes them.
        """
        lps = model_output.logprobs
        row_of = {req_id: i for i, req_id in enumerate(model_output.req_ids)} if lps is not None else {}
        stopped = []
        for seq in updated:
            state = self.request_states.get(seq.request_id)
            if state is None:
                continue
            if seq.sampling_params.logprobs is not None:
                self._append_logprobs(seq, lps, row_of[seq.seq_id])
            if state.incremental and self._detokenize(seq, state):
                stopped.append(seq)
        return stopped

    def make_request_outputs(self, updated: list[Sequence]) -> list[RequestOutput]:
        """RequestOutputs of the requests that got a token: finished ones, and all when streaming."""
        now = time.time()
        states = self.request_states
        touched = {seq.request_id: states[seq.request_id] for seq in updated if seq.request_id in states}
        outputs = []
        for rid, state in touched.items():
            metrics = state.request.metrics
            if metrics.first_token_time is None:
                metrics.first_token_time = now
            metrics.last_token_time = now
            metrics.num_generated_tokens += 1
            finished = state.request.is_finished()
            if finished:
                metrics.finished_time = now
                self._drop(state)
            if finished or state.streaming:
                outputs.append(self._make_output(state, finished))
        return outputs

    def process_prompt_logprobs(self, model_output: ModelRunnerOutput) -> None:
        """Append the prompt logprobs a step computed (rows a recomputation repeats are skipped)."""
        for seq_id, chunk in model_output.prompt_logprobs_dict.items():
            state = self.prompt_logprob_states.get(seq_id)
            if state is None:
                continue  # finished or aborted while the step was in flight
            entries, k = state.prompt_logprobs, state.request.sampling_params.prompt_logprobs
            for row in range(len(chunk.lists.sampled_token_ranks)):
                if chunk.start + 1 + row == len(entries):  # the prompt token this row is about
                    self._append_entry(entries, chunk.lists, row, k)

    def _append_logprobs(self, seq: Sequence, lps: LogprobsLists, row: int) -> None:
        self._append_entry(seq.output_logprobs, lps, row, seq.sampling_params.logprobs)
        seq.cumulative_logprob += lps.logprobs[row][0]

    def _append_entry(self, entries: PromptLogprobs | SampleLogprobs, lps: LogprobsLists, row: int, k: int) -> None:
        """vLLM's entry for one position: the row's chosen token with its own rank, then the top ``k``
        (ranks 1..k). A row holds the batch's largest k; this request's k are its first."""
        ids = lps.logprob_token_ids[row][: k + 1]
        decoded = [self._decode_one(t) for t in ids]
        append_logprobs_for_next_position(entries, ids, lps.logprobs[row][: k + 1], decoded, lps.sampled_token_ranks[row], k)

    def _decode_one(self, token_id: int) -> str | None:
        if self.tokenizer is None:
            return None
        text = self.token_texts.get(token_id)
        if text is None:
            text = self.token_texts[token_id] = self.tokenizer.decode([token_id])
        return text

    def _detokenize(self, seq: Sequence, state: RequestState) -> bool:
        """Add the new token's text; True when a stop string now ends the sequence."""
        params = seq.sampling_params
        token = seq.output_token_ids[-1]
        stopped_by_token = seq.status == RequestStatus.FINISHED_STOPPED
        if stopped_by_token and not params.include_stop_str_in_output:
            return False  # the stop token itself contributes no text
        delta = state.detokenizers[seq.seq_id].add_token(token)
        seq.output_text += delta
        if not params.stop or seq.is_finished() or seq.num_output_tokens <= params.min_tokens:
            return False
        hit = find_stop_string(seq.output_text, len(delta), params.stop, params.include_stop_str_in_output)
        if hit is None:
            return False
        seq.stop_reason, seq.output_text = hit
        return True

    def _completion(self, state: RequestState, seq: Sequence) -> CompletionOutput | None:
        """One sequence's part of an output; with DELTA only what is new (None when nothing is).

        Otherwise the output carries the sequence's own token and logprob lists, as vLLM's does:
        a streamed CUMULATIVE output's lists keep growing with later steps. (Copying them for
        every output would cost each step time in proportion to the length generated so far.)
        """
        done = seq.is_finished()
        text = seq.output_text if state.incremental else self._final_text(seq)
        if state.stop_buffer and not done:
            text = text[: max(0, len(text) - state.stop_buffer)]
        token_ids, logprobs = seq.output_token_ids, seq.output_logprobs
        if state.delta:
            num_tokens, num_chars, done_sent = state.sent.get(seq.seq_id, (0, 0, False))
            if done_sent or (num_tokens == len(token_ids) and num_chars == len(text) and not done):
                return None
            state.sent[seq.seq_id] = (len(token_ids), len(text), done)
            text, token_ids, logprobs = text[num_chars:], token_ids[num_tokens:], logprobs[num_tokens:]
        want_lp = seq.sampling_params.logprobs is not None
        return CompletionOutput(
            index=seq.index,
            text=text,
            token_ids=token_ids,
            cumulative_logprob=seq.cumulative_logprob if want_lp else None,
            logprobs=logprobs if want_lp else None,
            finish_reason=seq.get_finish_reason(),
            stop_reason=seq.stop_reason,
        )

    def _final_text(self, seq: Sequence) -> str:
        if self.tokenizer is None:
            return ""
        ids = seq.output_token_ids
        params = seq.sampling_params
        if seq.status == RequestStatus.FINISHED_STOPPED and not params.include_stop_str_in_output:
            ids = ids[:-1]
        decode = make_decode(
            self.tokenizer,
            skip_special_tokens=params.skip_special_tokens,
            spaces_between_special_tokens=params.spaces_between_special_tokens,
        )
        return decode(ids)

    def _make_output(self, state: RequestState, finished: bool) -> RequestOutput:
        request = state.request
        completions = [self._completion(state, seq) for seq in request.seqs]
        prompt_logprobs = state.prompt_logprobs
        if state.delta:
            completions = [c for c in completions if c is not None]
            prompt_logprobs, state.prompt_logprobs_sent = (None if state.prompt_logprobs_sent else prompt_logprobs), True
        return RequestOutput(
            request_id=request.request_id,
            prompt=request.prompt,
            prompt_token_ids=request.prompt_token_ids,
            prompt_logprobs=prompt_logprobs,
            outputs=completions,
            finished=finished,
            metrics=request.metrics,
            # As vLLM reports it: the prompt tokens the prefix cache supplied at first admission.
            num_cached_tokens=max(request.seqs[0].num_cached_tokens, 0),
        )
