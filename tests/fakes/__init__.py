"""Fakes of the systems sentiloop talks to, at the I/O boundary: real local servers."""
