"""Scheduling and KV-cache bookkeeping (CPU side; no tensors live here)."""
