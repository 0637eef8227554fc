"""The feedback loop's analysis, over the store: which arm of an A/B split is better
(``experiments``), which predictions most need a human label (``review_queue``),
how accurate a model is before labels arrive (``estimation``), labels from files
(``imports``). Imports ``core``, ``model`` and ``storage``; ``service`` and the
command line use it.
"""
