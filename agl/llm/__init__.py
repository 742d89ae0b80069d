"""LLM serving for training: the LLM proxy that records every call as spans, and a local model server."""
