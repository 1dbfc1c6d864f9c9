"""LoRA adapters: the PEFT file format (`adapter`), serving them unmerged inside the engine
(`llm.layers.lora`), and a generic training loop on (prompt, target) token pairs (`train`)."""
