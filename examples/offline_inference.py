"""Offline batched generation with FoloVLLM, as with vLLM's ``LLM``.

    python examples/offline_inference.py                      # random demo model, no download
    python examples/offline_inference.py --model Qwen/Qwen3-0.6B
    python examples/offline_inference.py --model /path/to/local/checkpoint --temperature 0.7 --top-p 0.9

Without --model a small random-weight checkpoint is built locally (cached in
the temp directory), so the output text is gibberish but everything runs.
"""

from folovllm.cli import main

if __name__ == "__main__":
    main()
