"""The library behind ``tuning/tune.py`` and ``tuning/ablate.py``: storages, search spaces, objectives,
grids of runs, statistics, plots and reports -- small functions composed by thin command-line scripts."""
