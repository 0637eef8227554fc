"""sentiloop: sentiment-analysis serving with a feedback loop.

This package is the top layer: the command line and an HTTP client. The work
itself lives in ``service`` (serving) and ``training`` (re-fine-tuning), over
``model`` (the sentiment model), ``storage`` (the database) and ``core``
(settings, database engine, logging, file locks).
"""

__version__ = "0.1.0"
