"""The routing tier: request validation and the path from client to model pool."""
