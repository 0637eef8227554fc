"""The HTTP side of the service: API logic, request/response schemas, the guard
(size, media type, auth), path labels, shutdown drain, errors mapped to HTTP."""
