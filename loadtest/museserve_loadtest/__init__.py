"""museserve-loadtest: an open-loop load generator for museserve (gRPC ChatStream and the OpenAI HTTP API)."""
