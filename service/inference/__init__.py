"""The inference side of the service: scoring engines, model processes, the
adaptive batcher and the worker that ties them together."""
