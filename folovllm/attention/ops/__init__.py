"""Attention kernels: plain-torch references and their Triton counterparts."""
