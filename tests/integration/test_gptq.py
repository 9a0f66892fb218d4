"""GPTQ end to end: quantize a tiny checkpoint with our script, load it, and match HF on the dequantized weights.

HF transformers runs the *float* weights that the packed tensors stand for
(dequantized by the format's reference), so greedy outputs must be identical
token for token (float32, CPU).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from folovllm import LLM, SamplingParams
from folovllm.model_executor.layers.quantization.gptq import ZERO_OFFSETS
from folovllm.model_executor.layers.quantization.gptq_packing import dequantize
from folovllm.model_loader import ModelLoadError
from folovllm.quantize.gptq_checkpoint import GPTQRecipe, quantize_checkpoint
from tests.integration.hf_reference import hf_greedy

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = [[5, 17, 300, 42, 9], [100, 200, 300, 400, 500, 600, 700, 800, 900, 11, 12], [7], [64] * 20]


def dequantized_float_checkpoint(gptq_dir: Path, out_dir: Path) -> Path:
    """The same model with every GPTQ layer replaced by its float weight, for HF to run."""
    from safetensors.torch import load_file, save_file

    config = json.loads((gptq_dir / "config.json").read_text())
    qc = config.pop("quantization_config")
    tensors = load_file(str(gptq_dir / "model.safetensors"))
    out = {}
    for name, tensor in tensors.items():
        if name.endswith(".qweight"):
            prefix = name[: -len(".qweight")]
            weight = dequantize(
                tensor, tensors[f"{prefix}.qzeros"], tensors[f"{prefix}.scales"], tensors[f"{prefix}.g_idx"],
                qc["bits"], ZERO_OFFSETS[qc["checkpoint_format"]],
            )  # fmt: skip
            out[f"{prefix}.weight"] = weight.T.contiguous()
        elif not name.endswith((".qzeros", ".scales", ".g_idx")):
            out[name] = tensor
    shutil.copytree(gptq_dir, out_dir, ignore=shutil.ignore_patterns("*.safetensors", "config.json"))
    save_file(out, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(config))
    return out_dir


CASES = {
    "4bit_g32": dict(bits=4, group_size=32),
    "4bit_g32_act_order": dict(bits=4, group_size=32, desc_act=True),
    "8bit_per_channel_asym": dict(bits=8, group_size=-1, sym=False),
    "8bit_g32_act_order": dict(bits=8, group_size=32, desc_act=True),
    "4bit_untied_act_order_asym": dict(bits=4, group_size=32, desc_act=True, sym=False, shape="gqa4_untied"),
}


@pytest.fixture(scope="module")
def gptq_models(tiny_model_factory, tmp_path_factory):
    from tests.fixtures.tiny_models import SHAPES

    built = {}

    def build(case: str) -> tuple[Path, Path]:
        if case not in built:
            kwargs = dict(CASES[case])
            shape = kwargs.pop("shape", None)
            float_dir = tiny_model_factory(**SHAPES[shape]) if shape else tiny_model_factory()
            root = tmp_path_factory.mktemp(f"gptq_{case}")
            recipe = GPTQRecipe(num_samples=16, seq_len=64, **kwargs)
            gptq_dir = quantize_checkpoint(str(float_dir), str(root / "gptq"), recipe, progress=False)
            built[case] = gptq_dir, dequantized_float_checkpoint(gptq_dir, root / "dequantized")
        return built[case]

    return build


@pytest.mark.parametrize("case", sorted(CASES))
def test_greedy_output_equals_hf_on_the_dequantized_weights(gptq_models, case):
    gptq_dir, float_dir = gptq_models(case)
    llm = LLM(str(gptq_dir), device="cpu", max_num_seqs=4)
    assert llm.llm_engine.config.model_config.quantization == "gptq"
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))
    assert [o.outputs[0].token_ids for o in outs] == hf_greedy(float_dir, PROMPTS, 12)


def test_the_quantized_model_differs_from_the_float_one(gptq_models, tiny_model):
    """Guards the test above: a loader that ignored the quantized tensors could not pass it."""
    from safetensors.torch import load_file

    float_dir = gptq_models("4bit_g32")[1]
    ours = load_file(str(float_dir / "model.safetensors"))["model.layers.0.mlp.down_proj.weight"]
    original = load_file(str(tiny_model / "model.safetensors"))["model.layers.0.mlp.down_proj.weight"]
    assert not torch.equal(ours, original)
    assert (ours - original).abs().max() < 0.2 * original.abs().max()


def test_quantize_config_json_beside_the_config_is_read(gptq_models, tmp_path):
    gptq_dir, _ = gptq_models("4bit_g32")
    moved = tmp_path / "old_style"
    shutil.copytree(gptq_dir, moved)
    config = json.loads((moved / "config.json").read_text())
    qc = config.pop("quantization_config")
    (moved / "config.json").write_text(json.dumps(config))
    (moved / "quantize_config.json").write_text(json.dumps({k: v for k, v in qc.items() if k != "quant_method"}))
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    expected = LLM(str(gptq_dir), device="cpu").generate({"prompt_token_ids": PROMPTS[0]}, params)[0].outputs[0].token_ids
    got = LLM(str(moved), device="cpu", quantization="gptq").generate({"prompt_token_ids": PROMPTS[0]}, params)
    assert got[0].outputs[0].token_ids == expected


def test_clear_errors_for_options_and_damaged_checkpoints(gptq_models, tiny_model, tmp_path):
    with pytest.raises(ValueError, match="has no quantization_config"):
        LLM(str(tiny_model), device="cpu", quantization="gptq")
    with pytest.raises(ValueError, match=r"quantization must be one of \['gptq', 'gptq_marlin'\]"):
        LLM(str(tiny_model), device="cpu", quantization="awq")
    gptq_dir, _ = gptq_models("4bit_g32")
    from safetensors.torch import load_file, save_file

    for dropped in ("g_idx", "qzeros"):
        damaged = tmp_path / dropped
        shutil.copytree(gptq_dir, damaged)
        tensors = load_file(str(damaged / "model.safetensors"))
        del tensors[f"model.layers.1.self_attn.o_proj.{dropped}"]
        save_file(tensors, str(damaged / "model.safetensors"))
        with pytest.raises(ModelLoadError, match=rf"lacks weights for: \['model.layers.1.self_attn.o_proj.{dropped}'\]"):
            LLM(str(damaged), device="cpu")
    for field, value, match in [("bits", 3, "bits must be one of"), ("group_size", 128, "group_size 128 does not divide")]:
        bad = tmp_path / f"bad_{field}"
        shutil.copytree(gptq_dir, bad)
        config = json.loads((bad / "config.json").read_text())
        config["quantization_config"][field] = value
        (bad / "config.json").write_text(json.dumps(config))
        with pytest.raises(ValueError, match=match):
            LLM(str(bad), device="cpu")


def test_quantize_script_writes_a_checkpoint_the_engine_runs(tiny_model, tmp_path):
    out = tmp_path / "rtn"
    cmd = [sys.executable, str(ROOT / "scripts/quantize_gptq.py"), "--model", str(tiny_model), "--out", str(out),
           "--bits", "4", "--group-size", "32", "--rtn"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((out / "config.json").read_text())["quantization_config"]["bits"] == 4
    outs = LLM(str(out), device="cpu").generate("def main():", SamplingParams(max_tokens=5, temperature=0))
    assert len(outs[0].outputs[0].token_ids) == 5
