"""`agl demo`: train SmolLM2-135M with GRPO on a small arithmetic task, through the whole AGL loop, on CPU."""
