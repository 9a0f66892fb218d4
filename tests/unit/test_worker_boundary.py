"""The scheduler -> worker boundary: plain data that pickles, and the import rule that keeps it so."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest

from folovllm import LLM, SamplingParams
from folovllm.core.sched.output import CachedRequestData, SchedulerOutput
from folovllm.model_runner_output import AsyncModelRunnerOutput
from tests.integration.hf_reference import hf_greedy

PKG = Path(__file__).resolve().parents[2] / "folovllm"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The folovllm modules a file imports (``from a.b import c`` counts as a.b.c when that is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("folovllm"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("folovllm"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                is_module = (PKG.parent / Path(*sub.split("."))).with_suffix(".py").exists()
                found.add(sub if is_module else node.module)
    return found


MODULES = {_module_name(p): p for p in PKG.rglob("*.py")}
WORKER_SIDE = ("folovllm.worker", "folovllm.model_executor", "folovllm.attention", "folovllm.sample")
ALLOWED_FROM_CORE = {"folovllm.core.sched.output"}


def _parents(module: str) -> list[str]:
    """The packages whose __init__ runs when ``module`` is imported (the root package aside:
    it re-exports the whole engine for users)."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts))]


def _reachable(module: str) -> set[str]:
    """Every module that importing ``module`` runs, following imports (package __init__s included)."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name in seen or name not in MODULES:
            continue
        seen.add(name)
        todo.extend(_parents(name))
        todo.extend(_imports(MODULES[name]) - {"folovllm"})
    return seen


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith(WORKER_SIDE)))
def test_worker_side_never_imports_the_scheduler_or_requests(module):
    reached = _reachable(module) - ALLOWED_FROM_CORE - {"folovllm.core", "folovllm.core.sched"}
    bad = {m for m in reached if m == "folovllm.request" or m.startswith("folovllm.core")}
    assert not bad, f"{module} depends on {sorted(bad)}"


@pytest.mark.parametrize("module", ["folovllm.core.sched.output", "folovllm.model_runner_output"])
def test_plain_data_modules_import_no_live_state(module):
    live = ("folovllm.request", "folovllm.core.sched.scheduler", "folovllm.core.kv_cache")
    assert not {m for m in _reachable(module) if m.startswith(live)}


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("folovllm.engine")))
def test_engine_reaches_the_worker_only_through_the_executor(module):
    assert not {m for m in _imports(MODULES[module]) if m.startswith("folovllm.worker")}


class _PicklingExecutor:
    """Sends every SchedulerOutput and ModelRunnerOutput through pickle, as a second process would."""

    def __init__(self, inner):
        self.inner = inner
        self.outputs = []  # every SchedulerOutput, as the worker received it

    def execute_model(self, scheduler_output):
        received = pickle.loads(pickle.dumps(scheduler_output))
        self.outputs.append(received)
        return _PickledResult(self.inner.execute_model(received))


class _PickledResult(AsyncModelRunnerOutput):
    def __init__(self, handle):
        self.handle = handle

    def get(self):
        return pickle.loads(pickle.dumps(self.handle.get()))


PROMPTS = [list(range(10, 10 + n)) for n in (3, 40, 17, 60, 9)]


def _params():
    return [
        SamplingParams(temperature=0, max_tokens=25, ignore_eos=True, logprobs=3),
        SamplingParams(temperature=0.8, seed=3, n=2, max_tokens=30, ignore_eos=True),
        SamplingParams(temperature=0, max_tokens=20, ignore_eos=True, repetition_penalty=1.2, min_tokens=5),
        SamplingParams(temperature=0.7, seed=9, top_k=20, max_tokens=35, ignore_eos=True),
        SamplingParams(temperature=0, max_tokens=40, ignore_eos=True),
    ]


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_engine_runs_with_every_boundary_crossing_pickled(tiny_model, async_scheduling):
    """The worker gets only unpickled copies (with preemption, chunking, n > 1, seeds, logprobs) and
    the results are those of the in-process engine: it depends on nothing but the plain data."""
    kw = dict(device="cpu", block_size=8, num_gpu_blocks_override=16, max_model_len=128, max_num_seqs=4,
              enable_chunked_prefill=True, max_num_batched_tokens=32, async_scheduling=async_scheduling)  # fmt: skip
    prompts = [{"prompt_token_ids": p} for p in PROMPTS]
    plain = LLM(str(tiny_model), **kw)
    expected = [[(c.token_ids, c.logprobs) for c in o.outputs] for o in plain.generate(prompts, _params(), use_tqdm=False)]
    llm = LLM(str(tiny_model), **kw)
    executor = _PicklingExecutor(llm.llm_engine.executor)
    llm.llm_engine.executor = executor
    got = [[(c.token_ids, c.logprobs) for c in o.outputs] for o in llm.generate(prompts, _params(), use_tqdm=False)]
    assert got == expected
    assert llm.llm_engine.get_stats()["num_preemptions"] > 0
    sent = executor.outputs
    assert any(so.preempted_req_ids for so in sent) and any(so.finished_req_ids for so in sent)
    # After its first step a sequence travels as a delta: at most the token(s) it sampled since it was last sent.
    new_ids = [r.req_id for so in sent for r in so.scheduled_new_reqs]
    assert len(new_ids) == len(set(new_ids)) == 6  # 5 prompts, one with n=2: each sent whole exactly once
    # (A resumed sequence whose blocks all come back from the prefix cache also computes one
    # token, but gets its block list again: such steps are not pure decodes.)
    decode_steps = [
        so for so in sent
        if not so.scheduled_new_reqs and set(so.num_scheduled_tokens.values()) == {1}
        and all(len(b) <= 1 for b in so.scheduled_cached_reqs.new_block_ids)
    ]  # fmt: skip
    assert decode_steps
    empty = len(pickle.dumps(SchedulerOutput([], CachedRequestData(), {}, 0)))
    for so in decode_steps:
        assert all(len(t) <= 1 for t in so.scheduled_cached_reqs.new_token_ids)
        per_seq = (len(pickle.dumps(so)) - empty) / len(so.num_scheduled_tokens)
        assert per_seq < 30, per_seq  # a few small ints per sequence, whatever its context length


def test_generate_aborts_its_requests_when_a_step_fails(tiny_model):
    llm = LLM(str(tiny_model), device="cpu", max_model_len=128)
    engine = llm.llm_engine
    prompts = [[1, 2, 3], list(range(5, 30)), [7, 8]]
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    expected = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]

    real = engine.executor
    calls = []

    class FailingExecutor:
        def execute_model(self, so):
            handle = real.execute_model(so)
            calls.append(1)
            if len(calls) == 3:
                raise RuntimeError("injected device failure")
            return handle

    engine.executor = FailingExecutor()
    with pytest.raises(RuntimeError, match="injected device failure"):
        llm.generate(prompts, params, use_tqdm=False)
    engine.executor = real
    stats = engine.get_stats()
    assert not engine.has_unfinished_requests() and stats["num_running"] == stats["num_waiting"] == 0
    assert stats["num_free_blocks"] == stats["num_total_blocks"]
    assert [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)] == expected


def test_profile_run_allocates_what_the_worker_subtracts_with_one_seat(tiny_model):
    """max_num_seqs=1: the dummy batch is one max_model_len sequence, and its throw-away cache is reported exactly."""
    import torch

    from folovllm.engine.arg_utils import EngineArgs
    from folovllm.worker.model_runner import ModelRunner

    config = EngineArgs.from_kwargs(str(tiny_model), device="cpu", max_model_len=100, max_num_seqs=1,
                                    max_num_batched_tokens=4096, block_size=16).create_engine_config()  # fmt: skip
    runner = ModelRunner(config, torch.device("cpu"))
    runner.load_model()
    cache_bytes = runner.profile_run()
    assert cache_bytes == 7 * runner.get_kv_cache_bytes_per_block()  # 100 tokens -> 7 blocks of 16, not 4096 / 16
    assert runner.kv_cache is None and not runner.input_batch.requests


def test_warm_up_leaves_no_request_behind_and_does_not_shift_seeded_sampling(tiny_model):
    """The start-up warm-up samples (to compile each sampler path); the engine's random streams must not notice."""
    prompts = [{"prompt_token_ids": list(range(10, 10 + n))} for n in (3, 17)]
    params = SamplingParams(temperature=1.0, max_tokens=12, ignore_eos=True)
    outputs = []
    for extra_warm_ups in (0, 2):
        llm = LLM(str(tiny_model), device="cpu", seed=3)
        runner = llm.llm_engine.executor.worker.model_runner
        for _ in range(extra_warm_ups):
            runner.warm_up()
        assert not runner.input_batch.requests and runner.prev_sampled is None
        outputs.append([o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)])
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize("enforce_eager,compile_only", [(True, False), (False, True)])
def test_eager_warm_up_also_runs_the_decode_kernel_split_and_unsplit_and_each_matmul_row_bucket(tiny_model, enforce_eager, compile_only):
    """Without CUDA graphs nothing captures the decode kernel or the matmul kernels, so the warm-up
    runs a decode step of a short sequence (no split), one of a sequence at the longest context
    (split, on a GPU's SMs), decode steps of 2 and 4 sequences (the GEMV's variants for 2 and 3-4
    rows), and prompts of 8 to 256 tokens (the skinny GEMM's row buckets). Start-up's parallel
    compile pass (``compile_only``) runs them with graphs on too: they reach what capture reaches."""
    llm = LLM(str(tiny_model), device="cpu", enforce_eager=enforce_eager)
    runner = llm.llm_engine.executor.worker.model_runner
    runner.num_sms = 132  # an H100's: the CPU's 1 never splits
    steps = []
    make_metadata = runner._make_metadata
    num_tokens = []  # each step's, from its query start locations (the metadata's are reused buffers)
    runner._make_metadata = lambda *a: num_tokens.append(int(a[0][-1])) or steps.append(make_metadata(*a)) or steps[-1]
    runner.warm_up()
    if not enforce_eager:  # graph capture compiles these: the warm-up leaves them out, the compile pass not
        assert all(m.max_query_len > 1 for m in steps) and max(num_tokens) <= 16
        steps.clear(), num_tokens.clear()
        runner.warm_up(compile_only=True)
    decodes = [(m.max_seq_len, m.num_kv_splits) for m in steps if m.max_query_len == 1]
    assert decodes[0] == (2, 1) and decodes[1][0] == runner.max_model_len and decodes[1][1] > 1, decodes
    assert [m.num_seqs for m in steps if m.max_query_len == 1] == [1, 1, 2, 4]
    prompt_tokens = {n for n, m in zip(num_tokens, steps) if m.max_query_len > 1}
    assert {8, 16, 32, 64, 128, 256} <= prompt_tokens, prompt_tokens
    assert not runner.input_batch.requests and runner.prev_sampled is None
    prompts = [list(range(10, 10 + n)) for n in (3, 17)]
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], SamplingParams(temperature=0, max_tokens=6), use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == hf_greedy(tiny_model, prompts, 6)


def test_a_step_of_decodes_samples_every_row_without_a_gather(tiny_model):
    """The rows that sample are gathered from the hidden states only when some rows do not sample (a
    prompt's chunk, or a prompt whose tokens before the last do not); in a step of decodes alone
    every row samples, and the hidden states go to the LM head as they are."""
    llm = LLM(str(tiny_model), device="cpu", max_num_batched_tokens=32, max_num_seqs=4)
    runner = llm.llm_engine.executor.worker.model_runner
    gathers, num_tokens = [], []
    prepare = runner._prepare_inputs

    def spy(so):
        inputs = prepare(so)
        gathers.append(None if inputs.logits_indices is None else inputs.logits_indices.tolist())  # the buffers are reused
        num_tokens.append(len(inputs.input_ids))
        return inputs

    runner._prepare_inputs = spy
    prompts = [list(range(10, 10 + n)) for n in (3, 40)]  # the 40-token prompt takes two steps
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], SamplingParams(temperature=0, max_tokens=5), use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == hf_greedy(tiny_model, prompts, 5)
    # 3 + 29 tokens (the 40-token prompt's first chunk does not sample), then a decode + its last 11
    assert gathers[:2] == [[2], [0, 11]], gathers
    assert gathers[2:] == [None] * 4 and num_tokens[2:] == [2, 2, 2, 1], gathers
