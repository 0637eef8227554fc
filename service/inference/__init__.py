"""The inference side of the service: scorers, model processes, the
adaptive batcher and the worker that ties them together."""
