"""The model: Qwen3 (and Qwen2) over a flattened token batch, plus its layers."""
