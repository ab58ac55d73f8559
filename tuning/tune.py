"""Tune a PPO variant with Optuna: ``python tuning/tune.py --help`` (the same as the ``sb3pv-tune`` command)."""

import sys

from sb3_ppo_variants.studies.cli.tune import main

if __name__ == "__main__":
    sys.exit(main())
