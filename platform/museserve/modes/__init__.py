"""Reasoning modes that need more than one pass of the engine (Contemplating)."""
