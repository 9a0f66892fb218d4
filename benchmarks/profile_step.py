"""Where does a step's time go? Two views of the throughput workload.

    python benchmarks/profile_step.py breakdown   # wall time per phase of steady decode steps (GPU synced)
    python benchmarks/profile_step.py cprofile    # host-side cProfile of the whole run
    python benchmarks/profile_step.py kernels     # torch.profiler kernel table of steady decode steps (GPU)
"""

import cProfile
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import benchmarks.bench_throughput as bench  # noqa: E402
from benchmarks.common import get_checkpoint  # noqa: E402


def breakdown(num_seqs: int = 256, prompt_len: int = 562 if torch.cuda.is_available() else 200, steps: int = 50) -> None:
    from folovllm import LLM, SamplingParams
    from folovllm.model_runner_output import ModelRunnerOutput
    from folovllm.worker.sampling_metadata_builder import build_sampling_metadata

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = get_checkpoint(None, "qwen3-0.6b" if device == "cuda" else "tiny", device)
    llm = LLM(model, max_model_len=2048 if device == "cuda" else 512, device=device)
    engine = llm.llm_engine
    runner = engine.executor.worker.model_runner
    vocab = engine.config.model_config.get_vocab_size()
    for i in range(num_seqs):
        engine.add_request(str(i), [(i * 7 + j) % vocab for j in range(prompt_len)], SamplingParams(temperature=0.6, max_tokens=10_000, ignore_eos=True))
    while any(s.num_computed_tokens < len(s.prompt_token_ids) for s in engine.scheduler.running) or engine.scheduler.waiting:
        engine.step()
    phases = dict.fromkeys(["schedule", "prepare", "forward", "logits+sample", "update+outputs"], 0.0)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(steps):
        t0 = time.perf_counter()
        so = engine.scheduler.schedule()
        t1 = time.perf_counter()
        runner._update_states(so)
        inputs = runner._prepare_inputs(so)
        sync()
        t2 = time.perf_counter()
        meta = inputs.attn_metadata
        with torch.inference_mode():
            if runner.graph_runner is not None and runner.graph_runner.can_run(inputs.input_ids.shape[0], meta):
                hidden = runner.graph_runner.run(inputs.input_ids, inputs.positions, meta)
            else:
                hidden = runner.model(inputs.input_ids, inputs.positions, meta)
            sync()
            t3 = time.perf_counter()
            logits = runner.model.compute_logits(hidden[inputs.logits_indices])
            md = build_sampling_metadata(inputs.sample_states, runner.vocab_size, runner.device)
            tokens = runner.sampler(logits, md).sampled_token_ids.tolist()
        t4 = time.perf_counter()
        model_output = ModelRunnerOutput([s.req_id for s in inputs.sample_states], tokens)
        updated = engine.scheduler.update_from_output(model_output)
        engine.output_processor.process_new_tokens(updated, model_output)
        engine.output_processor.make_request_outputs(updated)
        t5 = time.perf_counter()
        for k, dt in zip(phases, [t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4]):
            phases[k] += dt
    total = sum(phases.values())
    print(f"{num_seqs} sequences decoding at context ~{prompt_len}: {total / steps * 1e3:.2f} ms per step")
    for k, v in phases.items():
        print(f"  {k:15s} {v / steps * 1e3:7.3f} ms  ({v / total:.0%})")


def kernel_table(num_seqs: int = 256, prompt_len: int = 562, steps: int = 20) -> None:
    """torch.profiler over steady decode steps: where the GPU time goes, per kernel."""
    from torch.profiler import ProfilerActivity, profile

    from folovllm import LLM, SamplingParams

    model = get_checkpoint(None, "qwen3-0.6b", "cuda")
    llm = LLM(model, max_model_len=2048, async_scheduling=True)
    engine = llm.llm_engine
    vocab = engine.config.model_config.get_vocab_size()
    for i in range(num_seqs):
        engine.add_request(str(i), [(i * 7 + j) % vocab for j in range(prompt_len)], SamplingParams(temperature=0.6, max_tokens=10_000, ignore_eos=True))
    for _ in range(30):
        engine.step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            engine.step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60))


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "breakdown"
    sys.argv = [sys.argv[0]] + sys.argv[2:]
    if mode == "breakdown":
        breakdown()
    elif mode == "kernels":
        kernel_table()
    else:
        prof = cProfile.Profile()
        prof.runcall(bench.main)
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
