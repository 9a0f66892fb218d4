"""Runs the model on one device: inputs in, sampled tokens out."""
