"""Ablation study: python tuning/ablate.py --help (the same as the sb3pv-ablate console script)."""

from sb3_ppo_variants.studies.cli.ablate import main

if __name__ == "__main__":
    raise SystemExit(main())
