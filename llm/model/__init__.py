"""The decoder (Llama, Mistral, Qwen2/3, Gemma 3, Phi-3: one model configured by presets) and the checkpoint
loader."""
