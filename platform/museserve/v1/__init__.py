"""Generated gRPC stubs of proto/museserve/v1 (`make proto`); do not edit."""
