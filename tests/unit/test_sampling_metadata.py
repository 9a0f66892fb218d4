"""The model runner's sampling settings: reused while the same sequences sample, rebuilt otherwise."""

from __future__ import annotations

import pytest

from folovllm import LLMEngine, SamplingParams


def _decoding_engine(tiny_model, params: list[SamplingParams]):
    engine = LLMEngine.from_engine_args(str(tiny_model), device="cpu", max_model_len=128, async_scheduling=False)
    for i, p in enumerate(params):
        engine.add_request(str(i), {"prompt_token_ids": [5 + i, 6, 7, 8]}, p)
    engine.step()  # the prompts
    runner = engine.executor.worker.model_runner
    return engine, runner, list(runner.input_batch.requests.values())


def test_settings_are_reused_while_the_same_sequences_sample_in_the_same_order(tiny_model):
    engine, runner, states = _decoding_engine(tiny_model, [
        SamplingParams(temperature=0.8, seed=1, max_tokens=30), SamplingParams(temperature=0, max_tokens=30),
        SamplingParams(temperature=0.5, top_p=0.9, top_k=5, max_tokens=30),
    ])  # fmt: skip
    md = runner._sampling_metadata(states)
    engine.step()
    assert runner._sampling_metadata(list(states)) is md  # the step in between reused them too
    assert md.generators and md.greedy_mask is not None and md.top_p is not None
    for other in (states[::-1], states[:2]):
        rebuilt = runner._sampling_metadata(other)
        assert rebuilt is not md
        assert rebuilt.temperature.tolist() == pytest.approx([s.sampling_params.temperature or 1.0 for s in other])


def test_settings_that_follow_the_tokens_are_rebuilt_every_step(tiny_model):
    penalised = SamplingParams(temperature=0.8, repetition_penalty=1.3, max_tokens=30)
    min_tokens = SamplingParams(temperature=0.8, min_tokens=4, stop_token_ids=[3], max_tokens=30)
    engine, runner, states = _decoding_engine(tiny_model, [penalised])
    seen = []
    for _ in range(3):
        engine.step()
        md = runner._sampling_metadata(states)
        tokens = states[0].output_token_ids
        assert md.output_token_ids[0, : len(tokens)].tolist() == tokens and all(md is not old for old in seen)
        seen.append(md)
    assert len(tokens) >= 2

    engine, runner, states = _decoding_engine(tiny_model, [min_tokens])
    while len(states[0].output_token_ids) < 4:
        assert 3 in runner._sampling_metadata(states).min_tokens_stop_ids[0]  # with the model's EOS ids
        assert runner._sampling_metadata(states) is not runner._sampling_metadata(states)
        engine.step()
    reached = runner._sampling_metadata(states)  # min_tokens reached: nothing follows the tokens any more
    assert not reached.min_tokens_stop_ids and runner._sampling_metadata(states) is reached


def test_max_top_k_is_the_largest_top_k_of_the_rows_that_draw():
    """The host's view of the rows' top-k, which picks the filtering kernel: a row with no top-k keeps
    the whole vocabulary; greedy rows do not count, whatever their top-k."""
    import torch

    from folovllm.worker.input_batch import CachedRequestState
    from folovllm.worker.sampling_metadata_builder import build_sampling_metadata

    def max_top_k(*params):
        states = [CachedRequestState(i, i, [1, 2], [], p, None, 2) for i, p in enumerate(params)]
        return build_sampling_metadata(states, 500, torch.device("cpu")).max_top_k

    greedy = SamplingParams(temperature=0)
    assert max_top_k(SamplingParams(temperature=0.7, top_k=20), SamplingParams(temperature=0.7, top_k=40)) == 40
    assert max_top_k(SamplingParams(temperature=0.7, top_k=20), SamplingParams(temperature=0.7, top_p=0.9)) == 500
    assert max_top_k(greedy, SamplingParams(temperature=0.7, top_k=20)) == 20
    assert max_top_k(greedy, greedy) == 0


def test_select_rows_keeps_what_a_draw_reads_of_those_rows_renumbered():
    """The seeded rows' own settings, for drawing them apart from the fused kernels: their
    temperature, filters and greedy mask, their generators under the new row numbers; nothing of
    penalties, min_tokens or logprobs, which the sampler has applied or gathers for the whole batch."""
    import torch

    from folovllm.worker.input_batch import CachedRequestState
    from folovllm.worker.sampling_metadata_builder import build_sampling_metadata

    params = [SamplingParams(temperature=0.5, top_k=5, repetition_penalty=1.2, logprobs=2),
              SamplingParams(temperature=0.8, top_p=0.9, seed=3, min_tokens=4, stop_token_ids=[1]),
              SamplingParams(temperature=0), SamplingParams(temperature=1.1, min_p=0.1, seed=4)]  # fmt: skip
    gens = [None, torch.Generator().manual_seed(3), None, torch.Generator().manual_seed(4)]
    states = [CachedRequestState(i, i, [1, 2], [], p, g, 2) for i, (p, g) in enumerate(zip(params, gens))]
    md = build_sampling_metadata(states, 50, torch.device("cpu"))
    picked = md.select_rows([1, 2, 3], torch.tensor([1, 2, 3]))
    assert picked.temperature.tolist() == pytest.approx([0.8, 1.0, 1.1])
    assert picked.top_k.tolist() == [50, 50, 50] and picked.top_p.tolist() == pytest.approx([0.9, 1.0, 1.0])
    assert picked.min_p.tolist() == pytest.approx([0.0, 0.0, 0.1]) and picked.greedy_mask.tolist() == [False, True, False]
    assert picked.generators == {0: gens[1], 2: gens[3]} and not picked.all_greedy and not picked.all_random
    assert picked.repetition_penalties is None and picked.prompt_token_ids is None
    assert picked.min_tokens_stop_ids == {} and picked.max_num_logprobs is None
    assert md.min_tokens_stop_ids and md.max_num_logprobs == 2  # the batch's own are left as they were
