"""sentiloop: sentiment-analysis serving with a feedback loop.

This package is the composition root: the settings object and the CLI.
The work itself lives in ``service`` (serving), ``feedback`` (the store)
and ``training`` (re-fine-tuning).
"""

__version__ = "0.1.0"
