"""Answering questions: the RAG pipeline (retrieve, prompt, generate, ground), extracted answers, the
answer cache, question rewriting, conversations, and the generation runs the API streams."""
