"""Streaming through ``LLMEngine.step()``: CUMULATIVE and DELTA outputs tell the story that
``generate()`` tells at the end, and streamed text never shows what a stop string later cuts."""

from __future__ import annotations

import copy

import pytest

from folovllm import LLMEngine, SamplingParams
from folovllm.sampling_params import RequestOutputKind

PROMPTS = [[5, 17, 99, 3], list(range(40, 70)), [7] * 9]


def _stop_string_of(text: str, length: int) -> str:
    """A clean ``length``-character piece of the latter half of ``text``."""
    for i in range(len(text) // 2, len(text) - length):
        piece = text[i : i + length]
        if piece.isprintable() and piece.strip() == piece and "\ufffd" not in piece:
            return piece
    pytest.skip("no clean stop string in this random text")


def _engine(tiny_model, async_scheduling: bool) -> LLMEngine:
    return LLMEngine.from_engine_args(str(tiny_model), device="cpu", max_model_len=128, async_scheduling=async_scheduling)


def _stream(engine: LLMEngine, params: list[SamplingParams], kind: RequestOutputKind) -> list[list]:
    """Every output of every request, in the order the steps reported them, each copied as it
    arrives (a CUMULATIVE output shares its sequence's lists, which later steps extend)."""
    for i, (prompt, p) in enumerate(zip(PROMPTS, params)):
        p = p.clone()
        p.output_kind = kind
        engine.add_request(str(i), {"prompt_token_ids": prompt}, p)
    seen: list[list] = [[] for _ in PROMPTS]
    while engine.has_unfinished_requests():
        for out in engine.step():
            seen[int(out.request_id)].append(copy.deepcopy(out))
    return seen


def _params(engine: LLMEngine, flat_logprobs: bool = False) -> list[SamplingParams]:
    probe = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    text = engine.generate([{"prompt_token_ids": PROMPTS[2]}], probe, use_tqdm=False)[0].outputs[0].text
    return [
        SamplingParams(temperature=0.8, seed=5, n=2, max_tokens=10, logprobs=2, ignore_eos=True, flat_logprobs=flat_logprobs),
        SamplingParams(temperature=0, max_tokens=12, prompt_logprobs=1, logprobs=0, ignore_eos=True, flat_logprobs=flat_logprobs),
        SamplingParams(temperature=0, max_tokens=24, stop=[_stop_string_of(text, 4)], ignore_eos=True),
    ]


@pytest.mark.parametrize("async_scheduling, flat_logprobs", [(False, False), (True, False), (True, True)])
def test_delta_outputs_add_up_to_the_final_output(tiny_model, async_scheduling, flat_logprobs):
    engine = _engine(tiny_model, async_scheduling)
    params = _params(engine, flat_logprobs)
    finals = engine.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    assert finals[2].outputs[0].finish_reason == "stop"  # the stop string really fired
    for final, outs in zip(finals, _stream(engine, params, RequestOutputKind.DELTA)):
        assert [o.finished for o in outs] == [False] * (len(outs) - 1) + [True]
        assert len(outs) > 2
        # Prompt logprobs come once, with the first output.
        assert outs[0].prompt_logprobs == final.prompt_logprobs and all(o.prompt_logprobs is None for o in outs[1:])
        for want in final.outputs:
            parts = [c for o in outs for c in o.outputs if c.index == want.index]
            assert "".join(c.text for c in parts) == want.text
            assert [t for c in parts for t in c.token_ids] == want.token_ids
            if want.logprobs is not None:
                assert [lp for c in parts for lp in c.logprobs] == list(want.logprobs)
                assert parts[-1].cumulative_logprob == pytest.approx(want.cumulative_logprob)
            assert (parts[-1].finish_reason, parts[-1].stop_reason) == (want.finish_reason, want.stop_reason)
            assert all(c.finish_reason is None for c in parts[:-1])
            assert all(c.token_ids or c.text or c.finish_reason for c in parts)  # nothing is sent twice or empty


def test_streamed_text_never_shows_what_a_stop_string_cuts(tiny_model):
    engine = _engine(tiny_model, async_scheduling=False)
    params = _params(engine)
    final = engine.generate([{"prompt_token_ids": PROMPTS[2]}], params[2], use_tqdm=False)[0].outputs[0]
    outs = _stream(engine, params, RequestOutputKind.CUMULATIVE)[2]
    texts = [o.outputs[0].text for o in outs]
    assert texts[-1] == final.text and final.finish_reason == "stop"
    assert all(final.text.startswith(t) for t in texts)
    # Held back while running: the last three characters could start the 4-character stop string.
    for o in outs[:-1]:
        n = len(engine.get_tokenizer().decode(o.outputs[0].token_ids, skip_special_tokens=True))
        assert len(o.outputs[0].text) == max(0, n - 3)
