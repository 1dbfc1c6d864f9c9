"""Measuring and teaching answers: the SQuAD and question-set evaluations, answer scoring, and the LoRA
fine-tuning of the RAG answer format with its training examples."""
