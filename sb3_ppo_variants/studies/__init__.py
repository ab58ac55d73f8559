"""Studies: tuning and ablation on one runner, on Optuna's public API."""
