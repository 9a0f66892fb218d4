"""Executors hide how many workers there are (one, for now)."""

from folovllm.executor.uniproc_executor import UniProcExecutor

__all__ = ["UniProcExecutor"]
