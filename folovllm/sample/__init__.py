"""Turning logits into tokens: SamplingMetadata + Sampler."""

from folovllm.sample.metadata import SamplingMetadata
from folovllm.sample.sampler import Sampler, SamplerOutput

__all__ = ["SamplingMetadata", "Sampler", "SamplerOutput"]
