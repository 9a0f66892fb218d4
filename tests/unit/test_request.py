"""Request / Sequence / SequenceData life cycle and the output types."""

from __future__ import annotations

import pytest

from folovllm import SamplingParams
from folovllm.outputs import CompletionOutput, RequestMetrics
from folovllm.request import Request, RequestStatus, Sequence, SequenceData, SequenceStatus


def test_sequence_data_accessors():
    d = SequenceData([1, 2, 3])
    assert (d.get_len(), d.get_prompt_len(), d.get_output_len(), d.get_last_token_id()) == (3, 3, 0, 3)
    d.append_token_id(9)
    assert d.get_token_ids() == [1, 2, 3, 9] and d.get_last_token_id() == 9 and d.get_output_len() == 1


def test_sequence_life_cycle_and_illegal_transitions():
    s = Sequence(0, "r", [1, 2], SamplingParams())
    assert s.status == SequenceStatus.WAITING and not s.is_finished()
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
     (RequestStatus.FINISHED_ABORTED, "abort"), (RequestStatus.FINISHED_IGNORED, "length"),
     (RequestStatus.RUNNING, None), (RequestStatus.WAITING, None)],
)  # fmt: skip
def test_finish_reasons(status, reason):
    assert RequestStatus.get_finished_reason(status) == reason
    assert RequestStatus.is_finished(status) == (reason is not None)


def test_fork_copies_tokens_independently():
    s = Sequence(0, "r", [1, 2], SamplingParams(n=2))
    s.append_token_id(5)
    c = s.fork(1, 1)
    assert c.get_token_ids() == [1, 2, 5] and c.index == 1 and c.request_id == "r"
    c.append_token_id(6)
    assert s.get_token_ids() == [1, 2, 5]


def test_request_with_n_sequences_and_aggregate_status():
    r = Request("req", "hi", [4, 5], SamplingParams(n=3), first_seq_id=10, arrival_time=100.0)
    assert [s.seq_id for s in r.seqs] == [10, 11, 12] and [s.index for s in r.seqs] == [0, 1, 2]
    assert r.status == RequestStatus.WAITING and r.get_num_seqs(RequestStatus.WAITING) == 3
    r.seqs[1].set_status(RequestStatus.RUNNING)
    assert r.status == RequestStatus.RUNNING
    for s in r.seqs:
        if s.status == RequestStatus.WAITING:
            s.set_status(RequestStatus.RUNNING)
        s.set_status(RequestStatus.FINISHED_STOPPED)
    assert r.is_finished() and r.status == RequestStatus.FINISHED_STOPPED


def test_metrics_latencies():
    m = RequestMetrics(arrival_time=10.0, first_token_time=10.5, last_token_time=12.5, finished_time=13.0, num_generated_tokens=5)
    assert m.time_to_first_token == pytest.approx(0.5)
    assert m.mean_time_per_output_token == pytest.approx(0.5)
    assert m.e2e_latency == pytest.approx(3.0)
    assert RequestMetrics(arrival_time=1.0).time_to_first_token is None


def test_completion_output_finished():
    assert CompletionOutput(0, "", [], finish_reason="stop").finished()
    assert not CompletionOutput(0, "", []).finished()
