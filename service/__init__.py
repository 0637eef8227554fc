"""Serving: templates, routing, classifiers, and the thin BentoML classes in ``service.bento``.

Only ``service.bento`` imports BentoML's service machinery; everything else is plain Python.
"""
