"""Offline quantization: turn a float checkpoint into a GPTQ one (``scripts/quantize_gptq.py``)."""
