"""Choosing the model replica for a request by the KV blocks each replica holds. No torch."""
