"""A tensor-parallel rank > 0: a child process that mirrors the driver's steps.

Started by ``MultiprocExecutor`` as ``python -m folovllm.executor.multiproc_worker HOST PORT TOKEN``
(a fresh interpreter, so the user's script is never re-imported). It connects
back, receives ``(config, rank, init_method)``, joins the process group,
loads its shard of the model, then runs every ``SchedulerOutput`` the driver
sends until it receives ``None`` or the connection closes (the driver is
gone). Its results are the driver's too (all ranks sample identically), so
it sends none back; an exception is reported over the connection before the
process exits, which also breaks the peers out of their collectives.
"""

from __future__ import annotations

import os
import pickle
import socket
import sys
import traceback
from multiprocessing.connection import Connection


def serve(conn: Connection) -> None:
    import torch

    from folovllm.distributed.parallel_state import destroy_distributed_environment
    from folovllm.executor.uniproc_executor import start_worker
    from folovllm.utils.gc_utils import freeze_gc_heap
    from folovllm.worker.gpu_worker import Worker

    config, rank, init_method = pickle.loads(conn.recv_bytes())
    tp = config.parallel_config.tensor_parallel_size
    if config.device_obj.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // tp))  # ranks share the cores
    worker = Worker(config, rank, init_method)
    start_worker(worker)
    freeze_gc_heap()  # this process serves one engine: its start-up heap lives as long as it does
    try:
        while True:
            try:
                scheduler_output = pickle.loads(conn.recv_bytes())
            except EOFError:
                return  # the driver exited
            if scheduler_output is None:
                return
            worker.execute_model(scheduler_output)
    finally:
        destroy_distributed_environment()


def main() -> None:
    host, port, token = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    conn = Connection(socket.create_connection((host, port)).detach())
    conn.send_bytes(f"{token} {os.getpid()}".encode())
    try:
        serve(conn)
    except BaseException:  # noqa: BLE001 - report whatever it was, then die
        try:
            conn.send_bytes(traceback.format_exc().encode())
        except OSError:
            pass
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
