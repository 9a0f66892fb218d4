"""HF transformers as the reference implementation for parity tests."""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=8)
def _load(path: str, device: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()


def hf_greedy(path, prompts: list[list[int]], max_new_tokens: int, device: str = "cpu", dtype=torch.float32) -> list[list[int]]:
    """Greedy continuation of each prompt, one at a time (no padding), EOS ignored."""
    model = _load(str(path), device, dtype)
    outs = []
    with torch.inference_mode():
        for p in prompts:
            ids = torch.tensor([p], device=device)
            g = model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                do_sample=False, eos_token_id=None, pad_token_id=0,
            )  # fmt: skip
            outs.append(g[0, len(p) :].tolist())
    return outs


def hf_logprobs(path, prompt: list[int], continuation: list[int]) -> torch.Tensor:
    """log_softmax of HF's logits at each position that predicts a continuation token."""
    model = _load(str(path), "cpu", torch.float32)
    ids = torch.tensor([prompt + continuation])
    with torch.inference_mode():
        logits = model(ids).logits[0].float()
    return logits[len(prompt) - 1 : len(prompt) + len(continuation) - 1].log_softmax(-1)


# How far apart, in HF's float32 logprobs, two ids may be for a bf16 run to pick either: on the tiny
# model, bf16 moves a logprob off its float32 value by up to ~0.05 (HF's own bf16 run picks the
# float32 runner-up where the gap is 0.005-0.011), so two bf16 runs summing in other orders may
# differ by twice that. A wrong kernel moves the pick much further: the top two ids of the tiny
# model's wide initialisation are ~0.5 apart as a rule.
NEAR_TIE = 0.1


def assert_greedy_prefixes_agree(path, prompts: list[list[int]], outputs: list[list[int]], reference: list[list[int]], n: int) -> None:
    """Each output's first ``n`` tokens equal HF's, or part from them at a near-tie: where they first
    differ, HF's float32 logprobs must not prefer its id to ours by ``NEAR_TIE`` or more (the tokens
    after that point follow other contexts and are not compared; vLLM's ``check_logprobs_close``
    forgives such a divergence the same way). Otherwise the message names the prompt and the gap."""
    for i, (prompt, got, want) in enumerate(zip(prompts, outputs, reference)):
        if got[:n] == want[:n]:
            continue
        j = next(k for k in range(n) if got[k] != want[k])
        logprobs = hf_logprobs(path, prompt, want[: j + 1])[-1]
        gap = (logprobs[want[j]] - logprobs[got[j]]).item()
        if gap < NEAR_TIE:
            continue
        raise AssertionError(
            f"prompt {i} ({len(prompt)} tokens): {got[:n]} against HF's {want[:n]}; at token {j} HF's "
            f"float32 logprob of its id exceeds that of ours by {gap:.4f} (a near-tie is < {NEAR_TIE})"
        )
