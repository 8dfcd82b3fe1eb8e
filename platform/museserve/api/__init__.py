"""The API edge: gRPC methods, protobuf <-> domain conversion, error statuses."""
