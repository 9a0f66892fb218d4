"""Drive LLMEngine step by step: add requests while others run, stream, abort.

    python examples/streaming_engine.py [--model PATH]

Every request ends with one output whose ``finished`` is True: "stop" or
"length" normally, "abort" for one that was aborted (reported at the next
step). Request "a" streams deltas (``RequestOutputKind.DELTA``: each output
holds only its new tokens and text); the others report everything so far (the
default, CUMULATIVE). Without --model the demo checkpoint has random weights:
its text is gibberish.
"""

import argparse

from folovllm import LLMEngine, SamplingParams
from folovllm.cli import demo_checkpoint
from folovllm.sampling_params import RequestOutputKind

ap = argparse.ArgumentParser()
ap.add_argument("--model", default=None)
args = ap.parse_args()

engine = LLMEngine.from_engine_args(args.model or demo_checkpoint(), max_num_seqs=4)
engine.add_request("a", "def add(a, b):", SamplingParams(temperature=0, max_tokens=24, output_kind=RequestOutputKind.DELTA))
engine.add_request("b", "class Stack:", SamplingParams(temperature=0.8, seed=1, max_tokens=24))
step, text_a = 0, ""
while engine.has_unfinished_requests():
    for out in engine.step():
        done = f", finish_reason={out.outputs[0].finish_reason}" if out.finished else ""
        if out.request_id == "a":
            text_a += out.outputs[0].text  # a delta: append it
            print(f"step {step:2d} a: +{len(out.outputs[0].token_ids)} token(s) {out.outputs[0].text!r}, finished={out.finished}{done}")
            continue
        print(f"step {step:2d} {out.request_id}: {len(out.outputs[0].token_ids):2d} tokens, finished={out.finished}{done}")
    if step == 3:
        engine.add_request("c", "import os", SamplingParams(max_tokens=8))  # joins the running batch
    if step == 6:
        engine.abort_request("b")
    step += 1
print(f"a, the deltas joined: {text_a!r}")
print(engine.get_stats())
