"""Command-line entry points: ``sb3pv-tune`` and ``sb3pv-ablate`` (``python tuning/tune.py``, ``python tuning/ablate.py``)."""
