"""Model definitions (the llama family, configured by presets) and the checkpoint loader."""
