"""Shared pytest setup.

Without CUDA, Triton kernels run in Triton's CPU interpreter: the variable
must be set before any kernel module is imported, hence here.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest_plugins = ["tests.fixtures.tiny_models"]
