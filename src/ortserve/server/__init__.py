"""The gRPC side: servicers, tensor conversion, interceptors, health, metrics and the composition root."""
