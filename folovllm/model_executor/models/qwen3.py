"""Qwen3 (and Qwen2/Qwen2.5) decoder, written for a flattened token batch.

Every tensor here is ``[num_tokens, ...]``: the tokens of all sequences in a
step laid end to end. Which token belongs to which sequence, and where its
K/V live in the paged cache, is carried by ``AttentionMetadata`` and matters
only inside attention. Qwen2 differs from Qwen3 only by a bias on q/k/v and
the absence of the per-head q/k RMSNorm, so one code path serves both.
"""

from __future__ import annotations

import torch
from torch import nn

from folovllm.attention.backends.abstract import AttentionBackend, AttentionMetadata
from folovllm.model_executor.layers.activation import SiluAndMul
from folovllm.model_executor.layers.attention import Attention
from folovllm.model_executor.layers.dispatch import rms_norm_then_linear, silu_and_mul_then_linear, use_fused_kernels
from folovllm.model_executor.layers.layernorm import RMSNorm
from folovllm.model_executor.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from folovllm.model_executor.layers.rotary_embedding import RotaryEmbedding, get_rope
from folovllm.model_executor.layers.vocab_embedding import ParallelLMHead, VocabParallelEmbedding
from folovllm.model_loader import get_head_dim


class Qwen3Attention(nn.Module):
    def __init__(
        self, config, rotary_emb: RotaryEmbedding, backend: AttentionBackend, qk_norm: bool, qkv_bias: bool, quant_config
    ) -> None:
        super().__init__()
        self.head_dim = get_head_dim(config)
        self.qkv_proj = QKVParallelLinear(
            config.hidden_size, self.head_dim, config.num_attention_heads, config.num_key_value_heads,
            bias=qkv_bias, quant_config=quant_config,
        )  # fmt: skip
        # This rank's heads (all of them without tensor parallelism).
        self.num_heads, self.num_kv_heads = self.qkv_proj.num_heads, self.qkv_proj.num_kv_heads
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.o_proj = RowParallelLinear(
            config.num_attention_heads * self.head_dim, config.hidden_size, bias=False, quant_config=quant_config
        )
        self.rotary_emb = rotary_emb  # one cos/sin table, shared by every layer
        self.attn = Attention(self.head_dim**-0.5, backend)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps) if qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps) if qk_norm else None
        self.eps = config.rms_norm_eps

    def forward(self, positions: torch.Tensor, qkv: torch.Tensor, attn_metadata: AttentionMetadata) -> torch.Tensor:
        """Attention from ``qkv``, the output of ``qkv_proj`` (which the decoder layer runs with the norm before it)."""
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        if use_fused_kernels(q):
            from folovllm.model_executor.layers.fused_kernels import fused_qk_norm_rope_store

            rope, cache = self.rotary_emb, self.attn.kv_cache
            weights = (self.q_norm.weight, self.k_norm.weight) if self.q_norm else (None, None)
            if self.attn.backend.fuses_new_token_in(attn_metadata):  # one kernel does it all
                from folovllm.attention.ops.triton_decode_attention import NewTokenKV

                new_token = NewTokenKV(k, v, *weights, rope.cos_cache, rope.sin_cache, positions, attn_metadata.slot_mapping, self.eps)
                return self.o_proj(self.attn.decode_with_new_token(q, new_token, attn_metadata).reshape(-1, self.q_size))
            q = fused_qk_norm_rope_store(
                q, k, v, *weights, rope.cos_cache, rope.sin_cache, positions, self.eps, cache[0], cache[1], attn_metadata.slot_mapping,
            )  # fmt: skip
            out = self.attn(q, None, None, attn_metadata)  # this step's k and v are in the cache already
        else:
            if self.q_norm is not None:
                q, k = self.q_norm(q), self.k_norm(k)
            q, k = self.rotary_emb(positions, q, k)
            out = self.attn(q, k, v, attn_metadata)
        return self.o_proj(out.reshape(-1, self.q_size))


class Qwen3MLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, quant_config) -> None:
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(
            hidden_size, [intermediate_size, intermediate_size], bias=False, quant_config=quant_config
        )
        self.down_proj = RowParallelLinear(intermediate_size, hidden_size, bias=False, quant_config=quant_config)
        self.act_fn = SiluAndMul()

    def forward(self, gate_up: torch.Tensor) -> torch.Tensor:
        """The MLP from ``gate_up``, the output of ``gate_up_proj`` (which the decoder layer runs with the norm before it)."""
        return silu_and_mul_then_linear(self.act_fn, self.down_proj, gate_up)


class Qwen3DecoderLayer(nn.Module):
    def __init__(
        self, config, rotary_emb: RotaryEmbedding, backend: AttentionBackend, qk_norm: bool, qkv_bias: bool, quant_config
    ) -> None:
        super().__init__()
        self.self_attn = Qwen3Attention(config, rotary_emb, backend, qk_norm, qkv_bias, quant_config)
        self.mlp = Qwen3MLP(config.hidden_size, config.intermediate_size, quant_config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        positions: torch.Tensor,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        attn_metadata: AttentionMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Pre-norm block. The residual add is fused into the norm after it; at one row on a GPU (a
        # single sequence decoding) the norm can run inside the GEMV after it, as SiLU-and-mul inside
        # down's, for the shapes where that was measured faster (triton_gemv.FUSED_GEMV_CONFIGS).
        qkv, residual = rms_norm_then_linear(self.input_layernorm, self.self_attn.qkv_proj, hidden, residual)
        hidden = self.self_attn(positions, qkv, attn_metadata)
        gate_up, residual = rms_norm_then_linear(self.post_attention_layernorm, self.mlp.gate_up_proj, hidden, residual)
        return self.mlp(gate_up), residual


class Qwen3Model(nn.Module):
    def __init__(self, config, backend: AttentionBackend, qk_norm: bool, qkv_bias: bool, quant_config) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        rotary_emb = get_rope(get_head_dim(config), config.max_position_embeddings, config)
        self.layers = nn.ModuleList(
            Qwen3DecoderLayer(config, rotary_emb, backend, qk_norm, qkv_bias, quant_config)
            for _ in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attn_metadata: AttentionMetadata) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)
        residual = None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual, attn_metadata)
        hidden, _ = self.norm(hidden, residual)
        return hidden


class Qwen3ForCausalLM(nn.Module):
    # checkpoint module -> (our merged module, shard index); see weight_loading.load_weights
    packed_modules_mapping = {
        "q_proj": ("qkv_proj", 0),
        "k_proj": ("qkv_proj", 1),
        "v_proj": ("qkv_proj", 2),
        "gate_proj": ("gate_up_proj", 0),
        "up_proj": ("gate_up_proj", 1),
    }
    skip_substrs = ("rotary_emb.inv_freq",)  # a buffer some older checkpoints saved
    qk_norm = True
    qkv_bias = False

    def __init__(self, config, backend: AttentionBackend, quant_config=None) -> None:
        """``quant_config`` (e.g. ``GPTQConfig``) reaches every linear layer, which asks it for its weight format."""
        super().__init__()
        self.config = config
        qkv_bias = self.qkv_bias or bool(getattr(config, "attention_bias", False))
        self.model = Qwen3Model(config, backend, self.qk_norm, qkv_bias, quant_config)
        if config.tie_word_embeddings:
            self.lm_head = self.model.embed_tokens
            self.skip_prefixes = ("lm_head.",)  # a saved copy of the tied weight
        else:
            self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size)
            self.skip_prefixes = ()

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attn_metadata: AttentionMetadata) -> torch.Tensor:
        """Hidden states ``[T, hidden]`` for the flattened batch."""
        return self.model(input_ids, positions, attn_metadata)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits for the (already selected) rows of ``hidden`` (the whole vocabulary on every rank)."""
        return self.lm_head.compute_logits(hidden)


class Qwen2ForCausalLM(Qwen3ForCausalLM):
    qk_norm = False
    qkv_bias = True
