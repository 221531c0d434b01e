"""The server API over GRPC: an adapter beside ``web/`` over the same executor."""
