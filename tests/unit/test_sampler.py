"""Each sampling knob against its definition, on hand-made logits."""

from __future__ import annotations

import functools

import pytest
import torch

from folovllm import SamplingParams
from folovllm.sample import Sampler
from folovllm.sample.sampler import gather_logprobs
from folovllm.sample.ops.penalties import apply_penalties
from folovllm.sample.ops.topk_topp import apply_min_p, apply_top_k_top_p
from folovllm.worker.input_batch import CachedRequestState
from folovllm.worker.sampling_metadata_builder import build_sampling_metadata

VOCAB = 8


def metadata(params_list, outputs=None, vocab=VOCAB):
    """SamplingMetadata for rows in the worker's own state; seeded rows get their generator as the worker makes it."""
    states = []
    for i, p in enumerate(params_list):
        gen = None if p.seed is None else torch.Generator().manual_seed(p.seed)
        states.append(CachedRequestState(i, i, [1, 2, 3], list((outputs or {}).get(i, [])), p, gen, 3))
    return build_sampling_metadata(states, vocab, torch.device("cpu"))


def test_greedy_is_argmax_and_top_k_1_equals_greedy():
    logits = torch.randn(4, VOCAB, generator=torch.Generator().manual_seed(0))
    greedy = Sampler()(logits.clone(), metadata([SamplingParams(temperature=0)] * 4)).sampled_token_ids
    assert torch.equal(greedy, logits.argmax(-1))
    topk1 = Sampler()(logits.clone(), metadata([SamplingParams(temperature=1.3, top_k=1)] * 4)).sampled_token_ids
    assert torch.equal(topk1, greedy)


def test_top_p_keeps_exactly_the_nucleus():
    probs = torch.tensor([[0.05, 0.4, 0.1, 0.3, 0.15, 0.0, 0.0, 0.0]])
    logits = probs.clamp_min(1e-12).log()
    # sorted: 0.4, 0.3, 0.15, 0.1, 0.05 -> cumulative 0.4, 0.7, 0.85: p=0.8 keeps {1, 3, 4}
    kept = apply_top_k_top_p(logits.clone(), None, torch.tensor([0.8])).isfinite()[0]
    assert kept.nonzero().flatten().tolist() == [1, 3, 4]
    # p=0.7 needs exactly {1, 3}; a tiny p still keeps the top token
    kept = apply_top_k_top_p(logits.clone(), None, torch.tensor([0.7])).isfinite()[0]
    assert kept.nonzero().flatten().tolist() == [1, 3]
    kept = apply_top_k_top_p(logits.clone(), None, torch.tensor([0.01])).isfinite()[0]
    assert kept.nonzero().flatten().tolist() == [1]


def test_top_k_keeps_k_largest_and_disabled_rows_untouched():
    logits = torch.tensor([[0.0, 5.0, 1.0, 4.0, 2.0, 3.0, -1.0, -2.0]] * 2)
    out = apply_top_k_top_p(logits.clone(), torch.tensor([3, VOCAB]), None)
    assert out[0].isfinite().nonzero().flatten().tolist() == [1, 3, 5]
    assert torch.equal(out[1], logits[1])


def test_min_p_threshold_is_relative_to_the_top_probability():
    probs = torch.tensor([[0.5, 0.3, 0.12, 0.08, 0.0, 0.0, 0.0, 0.0]])
    out = apply_min_p(probs.clamp_min(1e-12).log(), torch.tensor([0.2]))  # threshold 0.1
    assert out[0].isfinite().nonzero().flatten().tolist() == [0, 1, 2]


def test_sampled_frequencies_match_softmax_at_temperature_0_7():
    """Chi-square goodness of fit of 20k draws against softmax(logits / 0.7)."""
    logits = torch.tensor([1.0, 0.5, 0.0, -0.5, 0.2, -1.0, 0.8, 0.1])
    n = 20_000
    md = metadata([SamplingParams(temperature=0.7)] * n)
    torch.manual_seed(0)
    draws = Sampler()(logits.repeat(n, 1), md).sampled_token_ids
    observed = torch.bincount(draws, minlength=VOCAB).double()
    expected = (logits / 0.7).softmax(-1).double() * n
    chi2 = ((observed - expected) ** 2 / expected).sum().item()
    assert chi2 < 24.3, chi2  # 99.9th percentile of chi-square with 7 degrees of freedom


def test_penalties_on_a_hand_made_case():
    logits = torch.tensor([[2.0, -1.0, 0.5, 1.0, 0.0, 0.0, 0.0, 0.0]])
    prompt = torch.tensor([[0, 8]])  # token 0 in the prompt (8 = padding)
    output = torch.tensor([[2, 2, 3]])  # token 2 twice, token 3 once
    out = apply_penalties(logits.clone(), prompt, output, torch.tensor([0.5]), torch.tensor([0.25]), torch.tensor([2.0]))
    # rep: 0 -> 2/2 = 1; 2 -> 0.5/2 = 0.25; 3 -> 1/2 = 0.5; freq + presence on outputs only
    expected = torch.tensor([[1.0, -1.0, 0.25 - 0.5 - 0.5, 0.5 - 0.25 - 0.5, 0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(out, expected)
    neg = apply_penalties(torch.tensor([[-2.0] * VOCAB]), prompt, torch.tensor([[8]]), torch.zeros(1), torch.zeros(1), torch.tensor([2.0]))
    assert neg[0, 0] == -4.0 and neg[0, 1] == -2.0  # negative logits are multiplied


def test_min_tokens_masks_stop_ids_until_reached():
    logits = torch.zeros(2, VOCAB)
    logits[:, 5] = 10.0  # token 5 is both the favourite and a stop token
    p = SamplingParams(temperature=0, min_tokens=2, stop_token_ids=[5])
    p.update_from_generation_config(set())
    md = metadata([p, p], outputs={1: [1, 1]})  # row 1 already has 2 outputs
    out = Sampler()(logits, md).sampled_token_ids.tolist()
    assert out[0] != 5 and out[1] == 5


def test_logprobs_are_raw_log_softmax_with_ranks():
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.0, -1.0, -2.0, -3.0, 0.5]])
    md = metadata([SamplingParams(temperature=0, logprobs=3, repetition_penalty=1.5)])
    out = Sampler()(logits.clone(), md)
    raw = logits.log_softmax(-1)
    lp = out.logprobs_tensors
    assert lp.logprob_token_ids[0].tolist() == [0, 0, 2, 1]  # the sampled token, then the top 3
    torch.testing.assert_close(lp.logprobs[0], raw[0, [0, 0, 2, 1]])
    assert lp.selected_token_ranks.tolist() == [1]


def test_gather_logprobs_ranks_a_given_token():
    raw = torch.tensor([[3.0, 1.0, 2.0, 0.0], [0.0, 1.0, 2.0, 3.0]]).log_softmax(-1)
    lp = gather_logprobs(raw, 1, torch.tensor([1, 3]))
    assert lp.logprob_token_ids.tolist() == [[1, 0], [3, 3]]
    assert lp.selected_token_ranks.tolist() == [3, 1]
    torch.testing.assert_close(lp.logprobs, raw[[[0, 0], [1, 1]], [[1, 0], [3, 3]]])
    assert gather_logprobs(raw, 0, torch.tensor([2, 2])).logprob_token_ids.tolist() == [[2], [2]]


@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_seeded_rows_use_their_own_generator(top_p):
    """A seeded row's draws depend only on its seed: not on the global RNG, nor on its neighbours.

    32 draws from a uniform 1000-token distribution: a sampler that used the
    global generator would repeat the same sequence with probability ~1e-96.
    """
    logits = torch.zeros(3, 1000)

    def draws(batch_rows, global_seed):
        torch.manual_seed(global_seed)
        params = [SamplingParams(temperature=1.0, top_p=top_p, seed=123)] + [SamplingParams(temperature=1.0, top_p=top_p)] * (batch_rows - 1)
        md = metadata(params, vocab=1000)  # one generator, reused across the 32 steps
        return [Sampler()(logits[:batch_rows].clone(), md).sampled_token_ids[0].item() for _ in range(32)]

    alone = draws(1, global_seed=0)
    assert draws(2, global_seed=1) == alone and draws(3, global_seed=2) == alone
    assert len(set(alone)) > 20  # really random draws, not a constant
    unseeded = [Sampler()(logits[1:2].clone(), metadata([SamplingParams(temperature=1.0)], vocab=1000)).sampled_token_ids.item() for _ in range(32)]
    assert unseeded != alone


@pytest.mark.parametrize("temperature", [0.5, 1.5])
def test_mixed_greedy_and_random_rows(temperature):
    """A greedy row stays argmax beside a random row, and the random row is the draw it makes alone."""
    logits = torch.randn(2, 1000, generator=torch.Generator().manual_seed(1))
    random_params = SamplingParams(temperature=temperature, seed=5)
    mixed = metadata([SamplingParams(temperature=0), random_params], vocab=1000)
    assert mixed.greedy_mask is not None and not mixed.all_greedy and not mixed.all_random
    out = Sampler()(logits.clone(), mixed).sampled_token_ids
    alone = Sampler()(logits[1:].clone(), metadata([random_params], vocab=1000)).sampled_token_ids
    assert alone[0] != logits[1].argmax()  # so a row wrongly treated as greedy would show
    assert out[0] == logits[0].argmax()
    assert out[1] == alone[0]


def _chi2(draws: torch.Tensor, probs: torch.Tensor, keep: torch.Tensor | None = None) -> float:
    """Pearson's statistic of ``draws`` against ``probs``; with ``keep``, the other ids pooled into one bucket."""
    observed = torch.bincount(draws.cpu(), minlength=len(probs)).double()
    expected = probs.double() * len(draws)
    if keep is not None:
        observed = torch.cat([observed[keep], observed[~keep].sum().view(1)])
        expected = torch.cat([expected[keep], expected[~keep].sum().view(1)])
    return ((observed - expected) ** 2 / expected).sum().item()


def test_fused_sampler_matches_softmax_frequencies():
    """The Triton sampler (interpreter on CPU) against softmax(logits / T), by chi-square."""
    pytest.importorskip("triton")
    from folovllm.sample.ops.triton_sample import inverse_cdf_sample

    device = "cuda" if torch.cuda.is_available() else "cpu"
    logits = torch.tensor([1.0, 0.5, 0.0, -0.5, 0.2, -1.0, 0.8, 0.1], device=device)
    n = 800  # each draw is one program: the interpreter is slow
    torch.manual_seed(0)
    draws = inverse_cdf_sample(logits.repeat(n, 1), torch.full((n,), 0.7, device=device))
    assert _chi2(draws, (logits.cpu() / 0.7).softmax(-1)) < 24.3  # 7 degrees of freedom, p = 0.001
    # a near-zero temperature is greedy; the same global seed repeats the draw
    assert inverse_cdf_sample(logits.repeat(3, 1), torch.full((3,), 1e-4, device=device)).tolist() == [0, 0, 0]
    torch.manual_seed(5)
    a = inverse_cdf_sample(logits.repeat(16, 1), torch.ones(16, device=device))
    torch.manual_seed(5)
    assert torch.equal(a, inverse_cdf_sample(logits.repeat(16, 1), torch.ones(16, device=device)))


def test_fused_sampler_frequencies_across_blocks():
    """A row spread over many blocks (a last one cut short by the vocabulary's end), with -inf ids:
    the first uniform picks the block, the second the id in it; chi-square over every id that can win."""
    pytest.importorskip("triton")
    from folovllm.sample.ops.triton_sample import inverse_cdf_sample

    device = "cuda" if torch.cuda.is_available() else "cpu"
    vocab, n = 150, 500  # blocks of 32: 4 full ones and 22 ids in the fifth (each block is a loop step in the interpreter)
    logits = torch.full((vocab,), float("-inf"))
    live = torch.tensor([0, 5, 17, 40, 63, 64, 100, 131, 144, 149])  # first and last ids, block edges
    logits[live] = torch.tensor([0.3, -0.2, 0.9, 0.0, 0.5, -0.6, 0.1, 0.7, -0.1, 0.4])  # least likely: 1.4% (7 of 500)
    torch.manual_seed(2)
    draws = inverse_cdf_sample(logits.repeat(n, 1).to(device), torch.full((n,), 0.5, device=device), splits=1, block=32)
    assert set(draws.tolist()) <= set(live.tolist())
    probs = (logits / 0.5).softmax(-1)[live]
    assert _chi2(torch.searchsorted(live, draws.cpu()), probs) < 27.9  # 9 degrees of freedom, p = 0.001


def test_fused_sampler_rows_far_below_zero_beside_empty_blocks():
    """Blocks of -inf logits beside live logits far below zero (their exponentials underflow if scaled
    against 0 instead of the row's largest): only live ids are drawn; a row of -inf draws id 0, in range."""
    pytest.importorskip("triton")
    from folovllm.sample.ops.triton_sample import inverse_cdf_sample

    device = "cuda" if torch.cuda.is_available() else "cpu"
    logits = torch.full((41, 300), float("-inf"))
    logits[:40, 250], logits[:40, 260] = -150.0, -150.5  # blocks 0-2 (of 64 ids) hold no live id
    torch.manual_seed(4)
    draws = inverse_cdf_sample(logits.to(device), torch.ones(41, device=device), splits=2, block=64).tolist()
    assert set(draws[:40]) == {250, 260} and draws[40] == 0


def test_fused_sampler_greedy_rows_beside_random_ones():
    """Greedy rows take torch.argmax's id (the lowest among equal maxima, across blocks too, and in
    a block after the first); the random rows draw what they draw without greedy rows beside them."""
    pytest.importorskip("triton")
    from folovllm.sample.ops.triton_sample import inverse_cdf_sample

    device = "cuda" if torch.cuda.is_available() else "cpu"
    logits = torch.randn(6, 300, generator=torch.Generator().manual_seed(0))
    logits[0, 250] = logits[0, 290] = 9.0  # a tie across blocks 3 and 4
    logits[2, 3] = logits[2, 40] = 8.0  # a tie inside block 0
    logits[4, 299] = 7.0  # the max in the last, short block
    logits = logits.to(device)
    greedy = torch.tensor([True, False, True, False, True, False], device=device)
    temperature = torch.tensor([1.0, 0.7, 1.0, 1.3, 1.0, 0.9], device=device)
    torch.manual_seed(1)
    mixed = inverse_cdf_sample(logits, temperature, block=64, greedy=greedy).cpu()
    torch.manual_seed(1)
    alone = inverse_cdf_sample(logits, temperature, block=64).cpu()
    assert mixed[0::2].tolist() == logits.argmax(-1)[0::2].tolist() == [250, 3, 299]
    assert torch.equal(mixed[1::2], alone[1::2])


def test_fused_sampler_draws_the_same_however_the_vocabulary_is_split():
    """Splits only share out the block sums: the draw of a row is fixed by the seed and the logits."""
    pytest.importorskip("triton")
    from folovllm.sample.ops.triton_sample import inverse_cdf_sample, num_vocab_splits

    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(6, 5000, generator=g) * 0.1).to(device)  # flat: draws spread over the blocks
    temperature = torch.full((6,), 1.0, device=device)
    draws = []
    for splits in (1, 2, 3, 64):
        torch.manual_seed(11)
        draws.append(inverse_cdf_sample(logits, temperature, splits=splits, block=256).cpu())
    assert all(torch.equal(draws[0], d) for d in draws[1:])
    assert (draws[0] >= 2048).any()  # some draws sit beyond the first split's blocks
    # Qwen3's vocabulary on an H100 (132 SMs): 64 splits for batch 1 and 8, 32 for 64 rows, 8 for 256
    assert [num_vocab_splits(b, 151_936, 132, 2048) for b in (1, 8, 64, 256)] == [64, 64, 32, 8]
    assert num_vocab_splits(1, 100, 132, 128) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="Qwen3's vocabulary at scale: too slow for the interpreter")
def test_fused_sampler_frequencies_at_qwen3_vocabulary_on_gpu():
    """Qwen3's 151,936 ids (75 blocks of 2,048, the last one short), bf16 logits, 50,000 draws at the
    engine's split count and at one split: chi-square over every id expected 5 times or more, the
    rest pooled. (The rows are one row repeated by a zero stride; the kernels read it as any row.)"""
    from folovllm.sample.ops.triton_sample import inverse_cdf_sample

    vocab, n = 151_936, 50_000
    g = torch.Generator(device="cuda").manual_seed(0)
    row = (torch.randn(vocab, device="cuda", generator=g) * 2.0).to(torch.bfloat16)
    probs = (row.float() / 0.8).softmax(-1).double().cpu()
    keep = probs * n >= 5
    for splits in (None, 1):
        torch.manual_seed(9)
        draws = inverse_cdf_sample(row.expand(n, vocab), torch.full((n,), 0.8, device="cuda"), splits=splits)
        chi2, dof = _chi2(draws, probs, keep), int(keep.sum())  # kept ids + the pooled bucket - 1
        assert chi2 < dof + 4 * (2 * dof) ** 0.5, (splits, chi2, dof)  # ~p = 0.0001 by the normal approximation


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the fused path runs on a GPU only")
def test_sampler_sends_greedy_and_temperature_rows_to_the_fused_kernels_on_gpu(monkeypatch):
    """A batch of greedy and unseeded temperature rows goes to the fused kernels with its greedy mask;
    the greedy rows come back as torch.argmax's ids."""
    from folovllm.sample.ops import triton_sample

    calls = []
    real = triton_sample.inverse_cdf_sample
    monkeypatch.setattr(triton_sample, "inverse_cdf_sample", lambda *a, **k: calls.append(k.get("greedy")) or real(*a, **k))
    params = [SamplingParams(temperature=0), SamplingParams(temperature=0.7), SamplingParams(temperature=0), SamplingParams(temperature=1.2)]
    states = [CachedRequestState(i, i, [1, 2, 3], [], p, None, 3) for i, p in enumerate(params)]
    md = build_sampling_metadata(states, 5000, torch.device("cuda"))
    logits = torch.randn(4, 5000, generator=torch.Generator().manual_seed(3)).to("cuda", torch.bfloat16)
    out = Sampler()(logits, md).sampled_token_ids.cpu()
    assert len(calls) == 1 and calls[0].tolist() == [True, False, True, False]
    assert out[[0, 2]].tolist() == logits.float().argmax(-1)[[0, 2]].tolist()


def _filtered_probs(logits: torch.Tensor, temperature: float, top_k, top_p, min_p) -> torch.Tensor:
    """What ``Sampler.sample`` samples from: min-p, then top-k and top-p, on logits / T (torch's filters)."""
    scaled = (logits.float() / temperature).unsqueeze(0)
    if min_p is not None:
        scaled = apply_min_p(scaled, torch.tensor([min_p]))
    scaled = apply_top_k_top_p(scaled, None if top_k is None else torch.tensor([top_k]), None if top_p is None else torch.tensor([top_p]))
    return scaled.softmax(-1)[0]


def _filtering_kernel(window: int | None):
    """The kernel a batch's filtered rows go to: a program per whole row (``window`` None), or a window
    of ``window`` ids from torch.topk (the whole-row passes for rows it does not settle); blocks of 32."""
    pytest.importorskip("triton")
    if window is None:
        from folovllm.sample.ops.triton_filtered_sample import filtered_sample

        return functools.partial(filtered_sample, block=32)
    from folovllm.sample.ops.triton_window_sample import window_sample

    return functools.partial(window_sample, window=window, block=32)


@pytest.mark.parametrize(
    "top_k,top_p,min_p,window",
    [(5, None, None, None), (None, 0.3, None, None), (12, 0.8, None, None), (None, 0.9, 0.1, None), (30, 0.6, 0.02, None),
     (5, None, None, 16), (None, 0.3, None, 16), (12, 0.8, None, 16)],
)  # fmt: skip
def test_filtering_sampler_draws_what_the_torch_filters_keep(top_k, top_p, min_p, window):
    """The filtering kernels (interpreter on CPU) against torch's min-p / top-k / top-p on distinct logits:
    no draw outside what torch keeps, and chi-square over it. top_p=0.3 on a flat row rejects most first
    draws, so the whole-row kernel's rounds run; 64 ids in two blocks of 32. A window of 16 settles the
    three sets it is given here (top-p alone by the row's mass); it would leave the other two to the
    whole-row passes, which ``test_window_sampler_leaves_what_its_window_cannot_settle...`` checks."""
    filtered_sample = _filtering_kernel(window)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    logits = torch.randn(64, generator=torch.Generator().manual_seed(7)) * 0.8
    n, temperature = 200, 0.9
    probs = _filtered_probs(logits, temperature, top_k, top_p, min_p)

    def col(value):
        return None if value is None else torch.full((n,), value, device=device)

    torch.manual_seed(3)
    draws = filtered_sample(logits.repeat(n, 1).to(device), col(temperature), col(top_k), col(top_p), col(min_p))
    support = probs.nonzero().flatten()
    assert set(draws.tolist()) <= set(support.tolist())
    probs = probs[support]  # ids torch keeps, draws as their index among them
    keep = probs * n >= 5
    if keep.all():  # the pooled bucket must not be empty
        keep[probs.argmin()] = False
    dof = int(keep.sum())  # kept ids + the pooled bucket - 1
    assert _chi2(torch.searchsorted(support, draws.cpu()), probs, keep) < dof + 4 * (2 * dof) ** 0.5  # ~p = 0.0001


@pytest.mark.parametrize(
    "dtype,window",
    [(torch.bfloat16, None), (torch.float16, None), (torch.float32, None), (torch.bfloat16, 4), (torch.float32, 8)],
)  # fmt: skip
def test_filtering_sampler_top_k_keeps_every_tie_of_the_kth_logit(dtype, window):
    """top_k=3 over 5 > 4 = 4 = 4 = 4 > 3 > the rest keeps the 5 and every 4, as torch's filter does:
    the radix select over the logits' bit patterns (two bytes for bf16, four otherwise) finds 4; a
    window of 8 holds every 4, one of 4 ends on a 4 (a tie may lie outside: the whole-row passes).
    A seed repeats the draws."""
    filtered_sample = _filtering_kernel(window)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    logits = torch.full((64,), -1.0)
    logits[[1, 9, 30, 40, 63]] = torch.tensor([5.0, 4.0, 4.0, 4.0, 4.0])
    logits[5] = 3.0
    kept = apply_top_k_top_p(logits.unsqueeze(0).clone(), torch.tensor([3]), None).isfinite()[0].nonzero().flatten().tolist()
    assert kept == [1, 9, 30, 40, 63]
    n = 40
    rows = logits.to(dtype).repeat(n, 1).to(device)
    draws = filtered_sample(rows, torch.ones(n, device=device), torch.full((n,), 3, device=device), None, None,
                            torch.Generator().manual_seed(1))  # fmt: skip
    assert sorted(set(draws.tolist())) == kept
    again = filtered_sample(rows, torch.ones(n, device=device), torch.full((n,), 3, device=device), None, None,
                            torch.Generator().manual_seed(1))  # fmt: skip
    assert torch.equal(draws, again)


@pytest.mark.parametrize("window", [None, 16])
def test_filtering_sampler_small_top_p_and_greedy_rows_take_the_first_argmax(window):
    """top_p=0.01 leaves only the most likely id; greedy rows beside filtered ones take torch.argmax's
    id (the first of equal maxima, here in the second block); a disabled top-k row (k = vocabulary)
    samples the whole row."""
    filtered_sample = _filtering_kernel(window)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    logits = torch.randn(4, 64, generator=torch.Generator().manual_seed(2))
    logits[:, [40, 50]] = 9.0  # two equal maxima
    greedy = torch.tensor([True, False, True, False], device=device)
    top_p = torch.tensor([1.0, 0.01, 1.0, 1.0], device=device)
    top_k = torch.tensor([64, 64, 2, 64], device=device)
    out = filtered_sample(logits.to(device), torch.ones(4, device=device), top_k, top_p, None, greedy=greedy).tolist()
    assert out[0] == out[2] == 40 and out[1] in (40, 50)
    torch.manual_seed(0)
    many = filtered_sample(logits[3:].repeat(200, 1).to(device), torch.full((200,), 5.0, device=device),
                           torch.full((200,), 64, device=device), None, None)  # fmt: skip
    assert len(set(many.tolist())) > 10  # temperature 5 over the whole row, not just its top


def test_window_sampler_leaves_what_its_window_cannot_settle_to_the_whole_row_passes():
    """Rows the window settles are drawn from it; the others (top_k above the window, a min-p that keeps
    more than it, a flat row under top-p, no filter at all) take the whole-row kernel's passes in the
    same program: the very draws ``filtered_sample`` makes with that seed."""
    whole_row, window = _filtering_kernel(None), _filtering_kernel(16)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    peaked = torch.randn(64, generator=torch.Generator().manual_seed(4)) * 0.5
    peaked[[3, 20, 41]] += 6.0  # three ids hold nearly all the mass
    flat = torch.randn(64, generator=torch.Generator().manual_seed(5)) * 0.1
    n = 20
    rows = torch.cat([peaked.repeat(n, 1), flat.repeat(n, 1), peaked.repeat(n, 1), peaked.repeat(n, 1)]).to(device)
    top_k = torch.tensor([5] * n + [64] * n + [40] * n + [64] * n, device=device)
    top_p = torch.tensor([1.0] * n + [0.9] * n + [1.0] * n + [1.0] * n, device=device)
    settled = torch.arange(4 * n) < n  # the first block: top_k=5 within the window
    ones = torch.ones(4 * n, device=device)
    draws = [f(rows, ones, top_k, top_p, None, torch.Generator().manual_seed(2)).cpu() for f in (window, whole_row)]
    assert torch.equal(draws[0][~settled], draws[1][~settled])
    assert not torch.equal(draws[0][settled], draws[1][settled])  # a draw of its own from the window
    assert set(draws[0][settled].tolist()) <= set(peaked.topk(5).indices.tolist())
    # top-p alone on the peaked row: the window (16 ids) holds 0.9 of the row's mass, so it settles
    alone = [f(rows[:n], ones[:n], None, top_p[n : 2 * n], None, torch.Generator().manual_seed(2)).cpu() for f in (window, whole_row)]
    assert set(alone[0].tolist()) <= {3, 20, 41} and not torch.equal(alone[0], alone[1])


def test_min_tokens_and_penalties_change_the_logits_the_fused_kernels_sample(monkeypatch):
    """The fused kernels (interpreter; forced on the CPU) sample from the logits as min_tokens and the
    penalties leave them, in float32: a greedy row with a repetition penalty takes the penalized argmax
    (torch's path's id), a row that may not stop yet never draws its stop id, and a top-k row whose
    favourite was penalized draws only among the penalized top 3."""
    pytest.importorskip("triton")
    from folovllm.sample import sampler as sampler_module
    from folovllm.sample.ops import triton_window_sample

    vocab = 64
    logits = torch.randn(3, vocab, generator=torch.Generator().manual_seed(1)) * 0.5
    logits[:, 2] = 6.0  # id 2: the favourite, in every row's prompt ([1, 2, 3])
    stop = SamplingParams(temperature=1.0, min_tokens=5, stop_token_ids=[2])
    stop.update_from_generation_config(set())
    params = [SamplingParams(temperature=0, repetition_penalty=10.0), stop, SamplingParams(temperature=0.8, top_k=3, presence_penalty=2.0, frequency_penalty=2.0)]
    outputs = {2: [2, 2, 2]}
    torch_path = Sampler()(logits.clone(), metadata(params, outputs, vocab)).sampled_token_ids
    assert torch_path[0] != 2 and torch_path[1] != 2
    dtypes = []
    real = triton_window_sample.window_sample
    monkeypatch.setattr(triton_window_sample, "window_sample", lambda x, *a, **k: dtypes.append(x.dtype) or real(x, *a, **k))
    monkeypatch.setattr(sampler_module, "_fused_kernels_run_on", lambda logits: True)
    penalized = apply_penalties(logits.clone(), torch.tensor([[1, 2, 3]] * 3), torch.tensor([[vocab] * 3, [vocab] * 3, [2] * 3]),
                                torch.tensor([0.0, 0.0, 2.0]), torch.tensor([0.0, 0.0, 2.0]), torch.tensor([10.0, 1.0, 1.0]))  # fmt: skip
    assert 2 not in penalized[2].topk(3).indices.tolist()
    top3 = set(penalized[2].topk(3).indices.tolist())
    for seed in range(12):
        out = Sampler(seed=seed)(logits.to(torch.bfloat16), metadata(params, outputs, vocab)).sampled_token_ids.tolist()
        assert out[0] == torch_path[0] and out[1] != 2 and out[2] in top3
    assert dtypes == [torch.float32] * 12  # the window kernel (64 ids: every row's window), on the float32 logits


def test_warm_up_launches_every_fused_sampling_kernel_in_the_models_dtype_and_float32(monkeypatch):
    """On bf16 logits: the temperature kernels with and without greedy rows and both filtering
    kernels with every filter and greedy rows, each on bf16 and on float32 logits (the interpreter
    runs them all: the arguments fit each kernel)."""
    pytest.importorskip("triton")
    from folovllm.sample.ops import triton_filtered_sample, triton_sample, triton_window_sample
    from folovllm.sample.sampler import warm_up_fused_kernels

    calls = []
    for module, name in ((triton_sample, "inverse_cdf_sample"), (triton_filtered_sample, "filtered_sample"),
                         (triton_window_sample, "window_sample")):  # fmt: skip
        real = getattr(module, name)

        def record(logits, *a, real=real, name=name, **k):
            filters = tuple(x is not None for x in a[1:4]) if name != "inverse_cdf_sample" else ()
            calls.append((name, logits.dtype, k.get("greedy") is not None) + filters)
            return real(logits, *a, **k)

        monkeypatch.setattr(module, name, record)
    warm_up_fused_kernels(torch.randn(2, 100).to(torch.bfloat16))
    expected = []
    for dtype in (torch.bfloat16, torch.float32):
        expected += [("inverse_cdf_sample", dtype, False), ("inverse_cdf_sample", dtype, True)]
        expected += [(name, dtype, True, True, True, True) for name in ("filtered_sample", "window_sample")]
    assert calls == expected


# (rows' settings, the filtering kernel they go to): the window kernel where every row that draws keeps
# fewer than WINDOW (1,024) ids by its top-k, greedy rows whatever theirs; else the whole-row kernel
# (a top_k of 1,024 could never settle in a window of 1,024: its last value is the k-th one)
FILTER_DISPATCH = [
    ([SamplingParams(temperature=0), SamplingParams(temperature=0.6, top_k=20, top_p=0.95)], "window_sample"),
    ([SamplingParams(temperature=0.6, top_k=20), SamplingParams(temperature=0.9, top_k=1023, min_p=0.05)], "window_sample"),
    ([SamplingParams(temperature=0.6, top_k=20), SamplingParams(temperature=0.9, top_k=1024, min_p=0.05)], "filtered_sample"),
    ([SamplingParams(temperature=0.6, top_k=20), SamplingParams(temperature=0.6, top_p=0.9)], "filtered_sample"),
    ([SamplingParams(temperature=0.6, min_p=0.1), SamplingParams(temperature=0)], "filtered_sample"),
    ([SamplingParams(temperature=0.6, top_k=1025, top_p=0.9)], "filtered_sample"),
]


def _spy_on_fused_kernels(monkeypatch) -> list:
    """Record, by name, each call of the fused sampling kernels' entry points (they still compute)."""
    from folovllm.sample.ops import triton_filtered_sample, triton_sample, triton_window_sample

    calls = []
    for module, name in ((triton_sample, "inverse_cdf_sample"), (triton_filtered_sample, "filtered_sample"), (triton_window_sample, "window_sample")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, real=real, name=name, **k: calls.append(name) or real(*a, **k))
    return calls


def test_sampler_picks_the_filtering_kernel_by_the_rows_top_k(monkeypatch):
    """The window kernel for batches whose drawing rows all keep fewer than a window's ids by top-k
    (bench_kernels.py on an H200: faster at every batch size there, slower for top-p alone); the
    whole-row kernel otherwise; a batch of seeded rows only stays on torch's path. Interpreter, the
    fused path allowed on the CPU, a vocabulary larger than the window."""
    pytest.importorskip("triton")
    from folovllm.sample import sampler as sampler_module

    calls = _spy_on_fused_kernels(monkeypatch)
    monkeypatch.setattr(sampler_module, "_fused_kernels_run_on", lambda logits: True)
    vocab = 1500
    logits = torch.randn(2, vocab, generator=torch.Generator().manual_seed(3))
    for params, kernel in FILTER_DISPATCH:
        calls.clear()
        out = Sampler(seed=0)(logits[: len(params)], metadata(params, vocab=vocab)).sampled_token_ids
        assert calls == [kernel], (params, calls)
        assert all(out[i] == logits[i].argmax() for i, p in enumerate(params) if p.temperature == 0)
    calls.clear()
    Sampler()(logits, metadata([SamplingParams(temperature=0.6, top_k=20, seed=4)] * 2, vocab=vocab))
    assert calls == []  # every row seeded: torch's path alone


@pytest.mark.parametrize("filters", [{}, {"top_k": 20, "top_p": 0.9}, {"top_p": 0.8, "min_p": 0.02}])
def test_seeded_rows_beside_the_fused_kernels_draw_what_they_draw_alone(monkeypatch, filters):
    """Seeded rows in a batch the fused kernels take (interpreter, the fused path allowed on the CPU):
    the kernels draw the batch, then each seeded row is drawn again on torch's path by itself; its
    ids are those it gets alone, wherever it sits and whoever its neighbours are (greedy, unseeded,
    other seeds), over several steps of its generator. A greedy row still gets the argmax."""
    pytest.importorskip("triton")
    from folovllm.sample import sampler as sampler_module

    kernels = _spy_on_fused_kernels(monkeypatch)
    vocab = 1500
    logits = torch.randn(5, vocab, generator=torch.Generator().manual_seed(2)) * 2

    def seeded(seed):
        return SamplingParams(temperature=0.9, seed=seed, **filters)

    def draws(params, logit_rows, picked, steps=4):  # rows `picked`'s ids over `steps` steps, each generator going on
        md = metadata(params, vocab=vocab)
        return [Sampler(seed=0)(logits[logit_rows].clone(), md).sampled_token_ids[picked].tolist() for _ in range(steps)]

    alone = {row: [ids[0] for ids in draws([seeded(10 + row)], [row], [0])] for row in (1, 3)}
    assert not kernels  # alone: torch's path
    monkeypatch.setattr(sampler_module, "_fused_kernels_run_on", lambda logits: True)
    unseeded = SamplingParams(temperature=0.9, **filters)
    together = draws([unseeded, seeded(11), SamplingParams(temperature=0), seeded(13), unseeded], [0, 1, 2, 3, 4], [1, 3, 2])
    assert [ids[0] for ids in together] == alone[1] and [ids[1] for ids in together] == alone[3]
    assert all(ids[2] == logits[2].argmax().item() for ids in together)
    assert len(kernels) == 4 and len(set(kernels)) == 1  # one fused launch a step for the batch
    assert [ids[0] for ids in draws([seeded(13), unseeded, seeded(11)], [3, 0, 1], [2])] == alone[1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the fused path runs on a GPU only")
def test_sampler_picks_the_filtering_kernel_by_the_rows_top_k_on_gpu(monkeypatch):
    """As above, on the GPU's own dispatch (nothing forced), at Qwen3's vocabulary in bf16; a seeded row
    beside an unseeded one leaves the kernel the batch."""
    calls = _spy_on_fused_kernels(monkeypatch)
    vocab = 151936
    logits = torch.randn(2, vocab, device="cuda").to(torch.bfloat16)

    def md(params):
        states = [CachedRequestState(i, i, [1, 2, 3], [], p, None if p.seed is None else torch.Generator("cuda").manual_seed(p.seed), 3)
                  for i, p in enumerate(params)]  # fmt: skip
        return build_sampling_metadata(states, vocab, torch.device("cuda"))

    for params, kernel in FILTER_DISPATCH:
        calls.clear()
        out = Sampler()(logits[: len(params)], md(params)).sampled_token_ids.cpu()
        assert calls == [kernel], (params, calls)
        assert all(out[i] == logits[i].float().argmax().cpu() for i, p in enumerate(params) if p.temperature == 0)
    calls.clear()
    Sampler()(logits, md([SamplingParams(temperature=0.6, top_k=20), SamplingParams(temperature=0.6, top_k=20, seed=4)]))
    assert calls == ["window_sample"]  # the unseeded row; the seeded one on torch's path
    calls.clear()
    Sampler()(logits, md([SamplingParams(temperature=0.6, top_k=20, seed=4)] * 2))
    assert calls == []
