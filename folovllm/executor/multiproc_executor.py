"""Tensor parallelism on one node: the driver (rank 0) in this process, ranks 1..N-1 in child processes.

Each step the driver pickles the ``SchedulerOutput`` once and writes the
bytes to every child over a local socket (a ``multiprocessing`` connection),
then runs its own share of the step; the ranks meet in the model's
all-reduces. Only the driver's ``ModelRunnerOutput`` goes back to the engine:
every rank gathers the full logits and samples with the same seeds, so they
all hold the same sampled tokens, which is what async scheduling needs
(the next step's inputs are the last step's samples, already on each rank).

Why a socket per child and not shared memory or ``broadcast_object_list``:
it is the simplest channel that also reports a dead peer (a closed socket),
and one pickled decode step for 256 sequences costs tens of microseconds to
send (see ``benchmarks/bench_tp_broadcast.py`` and docs/dev/tensor_parallel.md).

Lifecycle: children are started with ``python -m folovllm.executor.multiproc_worker``
(a fresh interpreter: the user's script is not re-imported, unlike
``multiprocessing``'s spawn), connect back to a port chosen free by the OS,
and exit when they receive ``None``, when the connection closes (the driver
died), or on an error (reported back first). The driver stops them when the
executor is garbage-collected or the interpreter exits (``weakref.finalize``),
and checks before every step that they are alive, so a killed child surfaces
as a ``RuntimeError`` instead of a hang.
"""

from __future__ import annotations

import logging
import pickle
import secrets
import socket
import subprocess
import sys
import time
import weakref
from multiprocessing.connection import Connection

from folovllm.config import EngineConfig
from folovllm.core.sched.output import SchedulerOutput
from folovllm.distributed.parallel_state import destroy_distributed_environment, ensure_no_model_parallel_group
from folovllm.executor.uniproc_executor import start_worker
from folovllm.model_runner_output import AsyncModelRunnerOutput
from folovllm.worker.gpu_worker import Worker

logger = logging.getLogger(__name__)

_SHUTDOWN_GRACE_S = 5.0


def get_open_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Child:
    def __init__(self, rank: int, proc: subprocess.Popen) -> None:
        self.rank, self.proc = rank, proc
        self.conn: Connection | None = None

    def error_message(self) -> str:
        """What the child reported before exiting, if anything."""
        try:
            if self.conn is not None and self.conn.poll(0.5):
                return self.conn.recv_bytes().decode(errors="replace").strip().splitlines()[-1]
        except (EOFError, OSError):
            pass
        return "no error message (killed?)"


def _stop_children(children: list[_Child]) -> None:
    """Ask every child to exit, wait a little, then kill and reap what is left. Idempotent."""
    for child in children:
        if child.conn is not None and child.proc.poll() is None:
            try:
                child.conn.send_bytes(pickle.dumps(None))
            except OSError:
                pass
    deadline = time.monotonic() + _SHUTDOWN_GRACE_S
    for child in children:
        try:
            child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait()
        if child.conn is not None:
            child.conn.close()
    try:
        destroy_distributed_environment()
    except Exception:  # noqa: BLE001 - at interpreter exit torch may be half torn down
        pass


class MultiprocExecutor:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.world_size = config.parallel_config.tensor_parallel_size
        self.failure: str | None = None
        ensure_no_model_parallel_group()
        init_method = f"tcp://127.0.0.1:{get_open_port()}"
        self.children = self._spawn_children()
        self._finalizer = weakref.finalize(self, _stop_children, self.children)
        try:
            for child in self.children:
                child.conn.send_bytes(pickle.dumps((config, child.rank, init_method)))
            self.worker = Worker(config, 0, init_method)
            self.num_kv_blocks = start_worker(self.worker)
        except BaseException as exc:
            reason = self._dead_child_reason(wait_s=2.0) or f"{type(exc).__name__}: {exc}"
            self._finalizer()
            raise RuntimeError(f"tensor-parallel start-up failed: {reason}") from exc
        logger.info("Tensor parallel: %d ranks (driver + %d worker processes)", self.world_size, len(self.children))

    @property
    def worker_pids(self) -> list[int]:
        return [child.proc.pid for child in self.children]

    def _spawn_children(self) -> list[_Child]:
        token = secrets.token_hex(16)
        with socket.create_server(("127.0.0.1", 0)) as server:
            server.settimeout(0.5)
            port = server.getsockname()[1]
            cmd = [sys.executable, "-m", "folovllm.executor.multiproc_worker", "127.0.0.1", str(port), token]
            children = [_Child(rank, subprocess.Popen(cmd)) for rank in range(1, self.world_size)]
            by_pid = {child.proc.pid: child for child in children}
            waiting = len(children)
            while waiting:
                for child in children:
                    if child.conn is None and child.proc.poll() is not None:
                        _stop_children(children)
                        raise RuntimeError(f"tensor-parallel worker rank {child.rank} exited with code {child.proc.returncode} while starting")
                try:
                    sock, _ = server.accept()
                except socket.timeout:
                    continue
                sock.settimeout(None)
                conn = Connection(sock.detach())
                their_token, _, pid = conn.recv_bytes().decode().partition(" ")
                if their_token != token or int(pid) not in by_pid:
                    conn.close()
                    continue
                by_pid[int(pid)].conn = conn
                waiting -= 1
        return children

    def _dead_child_reason(self, wait_s: float = 0.0) -> str | None:
        """Which child has exited and why; after a failed collective, give a dying child ``wait_s`` to be reaped."""
        deadline = time.monotonic() + wait_s
        while True:
            for child in self.children:
                if child.proc.poll() is not None:
                    return (
                        f"tensor-parallel worker rank {child.rank} (pid {child.proc.pid}) exited with code "
                        f"{child.proc.returncode}: {child.error_message()}"
                    )
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def _fail(self, reason: str) -> RuntimeError:
        """Stop every child; this executor refuses all later steps with ``reason``."""
        self.failure = reason
        self._finalizer()
        return RuntimeError(f"{reason}; this LLM can no longer run, create a new one")

    def execute_model(self, scheduler_output: SchedulerOutput) -> AsyncModelRunnerOutput:
        if self.failure is not None:
            raise RuntimeError(f"{self.failure}; this LLM can no longer run, create a new one")
        reason = self._dead_child_reason()
        if reason is not None:
            raise self._fail(reason)
        payload = pickle.dumps(scheduler_output, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            for child in self.children:
                child.conn.send_bytes(payload)
        except OSError as exc:
            raise self._fail(self._dead_child_reason(wait_s=2.0) or f"lost a tensor-parallel worker ({exc})") from exc
        try:
            return self.worker.execute_model(scheduler_output)
        except BaseException as exc:
            # The other ranks may be waiting in a collective this rank never reached: stop them all.
            reason = self._dead_child_reason(wait_s=2.0)
            raise self._fail(reason or f"the driver's step failed ({type(exc).__name__}: {exc})") from exc

    def shutdown(self) -> None:
        self._finalizer()
