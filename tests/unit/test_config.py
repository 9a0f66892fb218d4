"""Every config validation rule: one accepted and one rejected value each."""

from __future__ import annotations

import argparse

import pytest
import torch

from folovllm import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
from folovllm.engine.arg_utils import EngineArgs


def test_model_config_reads_hf_config_and_infers_max_model_len(tiny_model):
    mc = ModelConfig(model=str(tiny_model))
    assert mc.hf_config.model_type == "qwen3"
    assert mc.max_model_len == mc.hf_config.max_position_embeddings == 512
    assert mc.tokenizer == str(tiny_model)
    assert mc.get_total_num_kv_heads() == 2 and mc.get_head_dim() == 16 and mc.get_num_layers() == 2


def test_model_config_max_model_len_rules(tiny_model):
    assert ModelConfig(model=str(tiny_model), max_model_len=128).max_model_len == 128
    with pytest.raises(ValueError, match="max_model_len=1000 is larger"):
        ModelConfig(model=str(tiny_model), max_model_len=1000)
    with pytest.raises(ValueError, match="max_model_len"):
        ModelConfig(model=str(tiny_model), max_model_len=0)


@pytest.mark.parametrize("field,bad", [("dtype", "int8"), ("tokenizer_mode", "fast"), ("seed", -1), ("model", "")])
def test_model_config_rejects(tiny_model, field, bad):
    kwargs = {"model": str(tiny_model), field: bad}
    with pytest.raises(ValueError, match=field):
        ModelConfig(**kwargs)


@pytest.mark.parametrize("dtype,expected", [("half", torch.float16), ("float16", torch.float16), ("bfloat16", torch.bfloat16), ("float", torch.float32), ("float32", torch.float32)])
def test_model_config_explicit_dtypes(tiny_model, dtype, expected):
    assert ModelConfig(model=str(tiny_model), dtype=dtype).get_torch_dtype(torch.device("cpu")) == expected


def test_auto_dtype_is_float32_on_cpu_and_checkpoint_dtype_on_gpu(tiny_model_factory):
    bf16_model = tiny_model_factory(dtype="bfloat16")
    mc = ModelConfig(model=str(bf16_model))
    assert mc.get_torch_dtype(torch.device("cpu")) == torch.float32
    assert mc.get_torch_dtype(torch.device("cuda")) == torch.bfloat16


def test_cache_config_accepts_defaults_and_valid_values():
    cc = CacheConfig(block_size=32, gpu_memory_utilization=1.0, swap_space=0, num_gpu_blocks_override=10)
    assert cc.block_size == 32 and cc.num_gpu_blocks_override == 10
    assert CacheConfig().block_size == 16


@pytest.mark.parametrize(
    "field,bad",
    [
        ("block_size", 12),
        ("block_size", 0),
        ("gpu_memory_utilization", 0.0),
        ("gpu_memory_utilization", 1.5),
        ("swap_space", -1),
        ("num_gpu_blocks_override", 0),
        ("cpu_kv_cache_space_gib", 0),
        ("enable_prefix_caching", "yes"),
    ],
)
def test_cache_config_rejects(field, bad):
    with pytest.raises(ValueError, match=field) as info:
        CacheConfig(**{field: bad})
    assert repr(bad) in str(info.value)


def test_scheduler_config_budget_rules():
    sc = SchedulerConfig(max_model_len=40960)
    assert sc.enable_chunked_prefill and sc.max_num_batched_tokens == 16384 and sc.max_num_seqs == 256
    # Without chunking the default budget grows to hold a whole prompt.
    assert SchedulerConfig(max_model_len=40960, enable_chunked_prefill=False).max_num_batched_tokens == 40960
    assert SchedulerConfig(max_num_batched_tokens=64, max_model_len=128, max_num_seqs=8).max_num_batched_tokens == 64
    with pytest.raises(ValueError, match="smaller than max_model_len"):
        SchedulerConfig(max_num_batched_tokens=64, max_model_len=128, enable_chunked_prefill=False)
    with pytest.raises(ValueError, match="max_num_seqs"):
        SchedulerConfig(max_num_seqs=0)
    with pytest.raises(ValueError, match="max_num_batched_tokens"):
        SchedulerConfig(max_num_batched_tokens=-5)
    with pytest.raises(ValueError, match="must be >= max_num_seqs"):
        SchedulerConfig(max_num_batched_tokens=512, max_num_seqs=600, max_model_len=512)



def test_async_scheduling_is_on_unless_turned_off():
    """vLLM's default (None) resolves to on: every FoloVLLM feature works with it."""
    assert SchedulerConfig().async_scheduling is True
    assert SchedulerConfig(async_scheduling=False).async_scheduling is False
    with pytest.raises(ValueError, match="async_scheduling"):
        SchedulerConfig(async_scheduling="off")
    parser = EngineArgs.add_cli_args(argparse.ArgumentParser())
    for argv, expected in (([], None), (["--no-async-scheduling"], False), (["--async-scheduling"], True)):
        assert EngineArgs.from_cli_args(parser.parse_args(argv)).async_scheduling is expected

def test_engine_config_syncs_max_model_len_and_resolves_device(tiny_model):
    ec = EngineConfig(ModelConfig(model=str(tiny_model), max_model_len=200), device="cpu")
    assert ec.scheduler_config.max_model_len == 200
    assert ec.device_obj.type == "cpu" and ec.dtype == torch.float32
    with pytest.raises(ValueError, match="device"):
        EngineConfig(ModelConfig(model=str(tiny_model)), device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            EngineConfig(ModelConfig(model=str(tiny_model)), device="cuda")


def test_parallel_config_checks_what_must_split_over_ranks():
    from types import SimpleNamespace

    from folovllm.config import ParallelConfig

    def model(heads=8, kv=4, intermediate=64):
        hf = SimpleNamespace(num_attention_heads=heads, intermediate_size=intermediate)
        return SimpleNamespace(hf_config=hf, get_total_num_kv_heads=lambda: kv)

    cpu = torch.device("cpu")
    assert ParallelConfig(2).distributed_executor_backend == "mp" and ParallelConfig().distributed_executor_backend == "uni"
    ParallelConfig(4).check_model(model(kv=2), cpu)  # fewer kv heads than ranks: replicated
    ParallelConfig(2).check_model(model(kv=4), cpu)
    for tp, kwargs, match in [
        (3, {}, "tensor_parallel_size=3 must divide num_attention_heads=8"),
        (4, {"kv": 6}, "num_key_value_heads=6: one must divide the other"),
        (4, {"intermediate": 66}, "must divide intermediate_size=66"),
    ]:
        with pytest.raises(ValueError, match=match):
            ParallelConfig(tp).check_model(model(**kwargs), cpu)
    with pytest.raises(ValueError, match="tensor_parallel_size must be a positive integer, got 0"):
        ParallelConfig(0)
    with pytest.raises(ValueError, match="distributed_executor_backend must be one of"):
        ParallelConfig(2, "ray")
    with pytest.raises(ValueError, match="'uni' runs one rank only"):
        ParallelConfig(2, "uni")


@pytest.mark.parametrize(
    "name,gib,expected",
    [
        ("NVIDIA H100 80GB HBM3", 79.2, (16384, 1024)),
        ("NVIDIA H200", 139.8, (16384, 1024)),
        ("NVIDIA A100-SXM4-80GB", 79.2, (8192, 256)),  # vLLM measured the large budget slower there
        ("NVIDIA L40S", 44.4, (8192, 256)),
    ],
)
def test_batch_defaults_follow_vllm_by_gpu(monkeypatch, name, gib, expected):
    """vLLM's LLM-class defaults: a GPU of 70 GiB or more that is not an A100 gets 16,384 tokens and
    1,024 sequences a step, other GPUs 8,192 and 256; FoloVLLM's CPU path 16,384 and 256."""
    from types import SimpleNamespace

    from folovllm.config import batch_defaults

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(name=name, total_memory=int(gib * 2**30)))
    gpu = torch.device("cuda", 0)
    assert batch_defaults(gpu) == expected
    assert batch_defaults(torch.device("cpu")) == batch_defaults(None) == (16384, 256)
    sc = SchedulerConfig()
    sc.set_max_model_len(40960, gpu)
    assert (sc.max_num_batched_tokens, sc.max_num_seqs) == expected
    # The default budget holds no more than max_num_seqs full-length sequences; the default
    # sequences no more than the budget; what the user set stays.
    sc = SchedulerConfig(max_num_seqs=4)
    sc.set_max_model_len(160, gpu)
    assert (sc.max_num_batched_tokens, sc.max_num_seqs) == (640, 4)
    sc = SchedulerConfig(max_num_batched_tokens=64)
    sc.set_max_model_len(160, gpu)
    assert (sc.max_num_batched_tokens, sc.max_num_seqs) == (64, 64)
    sc = SchedulerConfig(enable_chunked_prefill=False)
    sc.set_max_model_len(40960, gpu)
    assert sc.max_num_batched_tokens == 40960  # a whole prompt fits one step


def test_decode_graphs_stop_at_512_sequences_as_vllms_captures_do():
    """With vLLM's 1,024 sequences on an H100, decode graphs go up to 512 (vLLM's largest capture
    size); a step of more sequences runs eagerly."""
    from types import SimpleNamespace

    from folovllm.worker.cuda_graph_runner import CUDAGraphRunner

    backend = SimpleNamespace(orders_decode_rows=False, max_prefill_tiles=lambda tokens, seqs, head_dim: tokens // 64 + min(seqs, tokens))

    def runner(max_num_seqs):
        return CUDAGraphRunner(None, backend, None, max_num_seqs, 16384, 4, 2048, 128, torch.device("cpu"), lambda n, length: 1)

    assert runner(1024).decode_sizes[-3:] == [384, 448, 512]
    assert runner(1024).graph_size(600, 600, decode=True) is None
    assert runner(1024).graph_size(500, 500, decode=True) == 512
    assert runner(300).decode_sizes[-3:] == [224, 256, 300]
