"""Building blocks of the decoder: norms, RoPE, activations, linear layers, attention."""
