"""Request / Sequence / SequenceData life cycle and the output types."""

from __future__ import annotations

import pytest

from folovllm import SamplingParams
from folovllm.outputs import CompletionOutput, RequestMetrics
from folovllm.request import Request, RequestStatus, Sequence, SequenceData


def test_sequence_data_accessors():
    d = SequenceData([1, 2, 3])
    assert (d.get_len(), d.get_prompt_len(), d.get_output_len()) == (3, 3, 0)
    d.append_token_id(9)
    assert d.get_token_ids() == [1, 2, 3, 9] and d.get_output_len() == 1 and d.get_len() == 4


def test_sequence_life_cycle_and_illegal_transitions():
    s = Sequence(0, "r", [1, 2], SamplingParams())
    assert s.status == RequestStatus.WAITING and not s.is_finished()
    s.set_status(RequestStatus.RUNNING)
    s.set_status(RequestStatus.PREEMPTED)
    s.set_status(RequestStatus.RUNNING)
    s.set_status(RequestStatus.FINISHED_LENGTH_CAPPED)
    assert s.is_finished() and s.get_finish_reason() == "length"
    with pytest.raises(RuntimeError, match="illegal transition"):
        s.set_status(RequestStatus.RUNNING)
    w = Sequence(1, "r", [1], SamplingParams())
    with pytest.raises(RuntimeError):
        w.set_status(RequestStatus.FINISHED_STOPPED)  # a waiting sequence cannot have stopped
    w.set_status(RequestStatus.FINISHED_ABORTED)
    assert w.get_finish_reason() == "abort"


@pytest.mark.parametrize(
    "status,reason",
    [(RequestStatus.FINISHED_STOPPED, "stop"), (RequestStatus.FINISHED_LENGTH_CAPPED, "length"),
     (RequestStatus.FINISHED_ABORTED, "abort"),
     (RequestStatus.RUNNING, None), (RequestStatus.WAITING, None)],
)  # fmt: skip
def test_finish_reasons(status, reason):
    assert RequestStatus.get_finished_reason(status) == reason
    assert RequestStatus.is_finished(status) == (reason is not None)


def test_request_with_n_sequences():
    r = Request("req", "hi", [4, 5], SamplingParams(n=3), first_seq_id=10)
    assert [s.seq_id for s in r.seqs] == [10, 11, 12] and [s.index for s in r.seqs] == [0, 1, 2]
    assert all(s.status == RequestStatus.WAITING and s.prompt_token_ids == [4, 5] for s in r.seqs)
    r.seqs[0].append_token_id(9)
    assert r.seqs[1].output_token_ids == []  # siblings do not share token lists
    for s in r.seqs:
        s.set_status(RequestStatus.RUNNING)
        assert not r.is_finished()
        s.set_status(RequestStatus.FINISHED_STOPPED)
    assert r.is_finished()


def test_seeded_siblings_draw_from_seed_plus_index():
    """As vLLM v1: sibling i of a seeded request samples with seed + i (its own stream)."""
    params = SamplingParams(n=3, seed=40, temperature=1.0)
    r = Request("req", None, [1], params, first_seq_id=0)
    assert [s.sampling_params.seed for s in r.seqs] == [40, 41, 42]
    assert params.seed == 40  # the user's object is untouched
    unseeded = Request("u", None, [1], SamplingParams(n=2), first_seq_id=3)
    assert [s.sampling_params.seed for s in unseeded.seqs] == [None, None]


def test_metrics_latencies():
    m = RequestMetrics(arrival_time=10.0, first_token_time=10.5, last_token_time=12.5, finished_time=13.0, num_generated_tokens=5)
    assert m.time_to_first_token == pytest.approx(0.5)
    assert m.mean_time_per_output_token == pytest.approx(0.5)
    assert m.e2e_latency == pytest.approx(3.0)
    assert RequestMetrics(arrival_time=1.0).time_to_first_token is None


def test_completion_output_finished():
    assert CompletionOutput(0, "", [], finish_reason="stop").finished()
    assert not CompletionOutput(0, "", []).finished()
