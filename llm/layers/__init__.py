"""Building blocks of the models: linear layers over packed weights, paged attention, RoPE, RMSNorm."""
