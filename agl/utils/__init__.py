"""Helpers Agent Lightning keeps under `agentlightning.utils`; each module says where AGL implements it."""
