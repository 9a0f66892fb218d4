"""What tensor parallelism adds to every step: sending the SchedulerOutput to the other ranks.

Records the real ``SchedulerOutput``s of nano-vllm's workload (256 sequences)
on a one-rank engine, then replays them to a child process over

* ``socket``: what ``MultiprocExecutor`` does (pickle once, ``send_bytes`` per child);
* ``gloo``: ``torch.distributed.broadcast_object_list`` over a 2-process gloo group;

and reports, per kind of step, the payload size and the median time from
"driver starts sending" to "child holds the unpickled object" (the child
answers with a one-byte ack; half the round trip is not subtracted, so the
figures are upper bounds). Runs on the CPU; the engine's device does not
matter for this cost.

    python benchmarks/bench_tp_broadcast.py
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
import socket
import statistics
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import get_checkpoint, nano_vllm_workload
from folovllm import LLM, SamplingParams
from folovllm.executor.multiproc_executor import get_open_port


def record_scheduler_outputs(model: str, num_seqs: int) -> list:
    llm = LLM(model, device="cpu", max_num_seqs=num_seqs, max_model_len=512)
    executor = llm.llm_engine.executor
    recorded, execute = [], executor.execute_model

    def recording(scheduler_output):
        recorded.append(scheduler_output)
        return execute(scheduler_output)

    executor.execute_model = recording
    wl = nano_vllm_workload(num_seqs, 16, 256, 64, llm.llm_engine.config.model_config.get_vocab_size())
    params = [SamplingParams(temperature=0.6, ignore_eos=True, max_tokens=n) for n in wl.output_lens]
    llm.generate([{"prompt_token_ids": p} for p in wl.prompts], params, use_tqdm=False)
    return recorded


def _socket_child(port: int) -> None:
    conn = Connection(socket.create_connection(("127.0.0.1", port)).detach())
    while True:
        obj = pickle.loads(conn.recv_bytes())
        conn.send_bytes(b"k")
        if obj is None:
            return


def _gloo_child(port: int, count: int) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=1, world_size=2)
    ack = __import__("torch").zeros(1)
    for _ in range(count):
        box = [None]
        dist.broadcast_object_list(box, src=0)
        dist.send(ack, dst=0)
    dist.destroy_process_group()


def time_socket(outputs: list) -> list[float]:
    ctx = mp.get_context("spawn")
    with socket.create_server(("127.0.0.1", 0)) as server:
        child = ctx.Process(target=_socket_child, args=(server.getsockname()[1],))
        child.start()
        sock, _ = server.accept()
    conn = Connection(sock.detach())
    secs = []
    for so in outputs:
        t0 = time.perf_counter()
        conn.send_bytes(pickle.dumps(so, protocol=pickle.HIGHEST_PROTOCOL))
        conn.recv_bytes()
        secs.append(time.perf_counter() - t0)
    conn.send_bytes(pickle.dumps(None))
    conn.recv_bytes()
    child.join()
    return secs


def time_gloo(outputs: list) -> list[float]:
    import torch
    import torch.distributed as dist

    port = get_open_port()
    child = mp.get_context("spawn").Process(target=_gloo_child, args=(port, len(outputs)))
    child.start()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=2)
    ack, secs = torch.zeros(1), []
    for so in outputs:
        t0 = time.perf_counter()
        dist.broadcast_object_list([so], src=0)
        dist.recv(ack, src=1)
        secs.append(time.perf_counter() - t0)
    dist.destroy_process_group()
    child.join()
    return secs


def main() -> None:
    model = get_checkpoint(None, "tiny", "cpu")
    outputs = record_scheduler_outputs(model, 256)
    kinds = {
        "decode, 256 sequences": [i for i, so in enumerate(outputs) if not so.scheduled_new_reqs and so.num_scheduled_tokens and len(so.num_scheduled_tokens) >= 200],
        "admission (new requests with prompts)": [i for i, so in enumerate(outputs) if so.scheduled_new_reqs],
        "all steps": list(range(len(outputs))),
    }  # fmt: skip
    repeats = 5  # the whole replay, so every step is timed 5 times (the first replay includes warm-up)
    socket_secs, gloo_secs = time_socket(outputs * repeats), time_gloo(outputs * repeats)
    sizes = [len(pickle.dumps(so, protocol=pickle.HIGHEST_PROTOCOL)) for so in outputs]
    pickle_secs = []
    for so in outputs * repeats:
        t0 = time.perf_counter()
        pickle.loads(pickle.dumps(so, protocol=pickle.HIGHEST_PROTOCOL))
        pickle_secs.append(time.perf_counter() - t0)
    print(f"{len(outputs)} recorded steps of nano-vllm's workload (256 sequences), each sent {repeats} times; "
          f"python {sys.version.split()[0]}")
    print("| steps | count | payload (median) | pickle + unpickle alone | socket (ours), median | gloo broadcast_object_list, median |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, idx in kinds.items():
        if not idx:
            continue
        every = [i + r * len(outputs) for r in range(repeats) for i in idx]
        med = lambda xs, ids: statistics.median(xs[i] for i in ids)  # noqa: E731
        print(f"| {name} | {len(idx)} | {med(sizes, idx) / 1024:.1f} KiB | {med(pickle_secs, every) * 1e6:.0f} us "
              f"| {med(socket_secs, every) * 1e6:.0f} us "
              f"| {med(gloo_secs, every) * 1e6:.0f} us |")


if __name__ == "__main__":
    main()
