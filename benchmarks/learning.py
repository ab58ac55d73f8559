"""Sample efficiency: every variant and SB3's PPO against rl-zoo3's published PPO scores.

Built on the ablation tool (one study per environment, rl-zoo3's tuned PPO entries shipped with the package,
deterministic evaluation on a separately seeded env). rl-zoo3's reference figures are single runs with the std
taken over evaluation episodes, not over seeds; ours are over seeds (mean, std, IQM with 95% bootstrap CI from
the ablation report).

    python benchmarks/learning.py                          # rl-zoo3's budgets, 5 seeds (hours on 2 cores)
    python benchmarks/learning.py --budget Acrobot-v1=200000 --seeds 3 --workers 2
    python benchmarks/learning.py --quick                  # smoke test: CartPole-v1, 2 algorithms, 1 seed
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import datetime, timezone
from importlib.resources import files
from pathlib import Path

import pandas as pd

from sb3_ppo_variants.studies.cli import ablate as ablate_cli

ALGORITHMS = ["sb3_ppo", "clip", "kl", "adaptive_kl", "clip_kl"]
#: rl-zoo3's budgets for its published PPO scores.
BUDGETS = {"CartPole-v1": 100_000, "Acrobot-v1": 1_000_000, "Pendulum-v1": 100_000, "LunarLander-v3": 1_000_000}


def _budget(text: str) -> tuple[str, int]:
    env_id, _, steps = text.partition("=")
    if env_id not in BUDGETS or not steps.isdigit() or int(steps) < 1:
        raise argparse.ArgumentTypeError(f"--budget takes ENV=STEPS with ENV in {list(BUDGETS)}, got {text!r}")
    return env_id, int(steps)


def table(out: Path, envs: list[str], budgets: dict[str, int], algorithms: list[str]) -> str:
    references = pd.read_csv(str(files("sb3_ppo_variants") / "data" / "reference_scores.csv")).set_index("env_id")
    lines = [
        "| env | budget (rl-zoo3's) | algorithm | seeds | final return mean +- std over seeds "
        "| rl-zoo3 PPO (1 run, std over episodes) |",
        "|---|---|---|---:|---|---|",
    ]
    for env_id in envs:
        runs = pd.read_csv(out / env_id / "runs.csv")
        ref = references.loc[env_id]
        for algorithm in algorithms if not runs.empty else []:
            scores = runs[runs.variant == algorithm]["final_score"]
            if scores.empty:
                continue
            lines.append(
                f"| {env_id} | {budgets[env_id]:,} ({int(ref.ppo_reference_timesteps):,}) | {algorithm} | {len(scores)} | "
                f"{scores.mean():.1f} +- {scores.std(ddof=0):.1f} | "
                f"{ref.ppo_reference_mean:.1f} +- {ref.ppo_reference_std:.1f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", choices=list(BUDGETS), default=list(BUDGETS))
    parser.add_argument("--budget", type=_budget, action="append", default=[], help="ENV=STEPS: cut an env's budget")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", default="runs/benchmark-learning")
    parser.add_argument("--quick", action="store_true", help="smoke test: CartPole-v1, sb3_ppo and clip, 1 seed, 2048 steps")
    args = parser.parse_args(argv)
    budgets = dict(BUDGETS) | dict(args.budget)
    algorithms = ["sb3_ppo", "clip"] if args.quick else ALGORITHMS
    if args.quick:
        args.envs, args.seeds, budgets["CartPole-v1"] = ["CartPole-v1"], 1, 2048
    out = Path(args.out)
    started = time.time()
    for env_id in args.envs:
        steps = budgets[env_id]
        code = ablate_cli.main(
            ["--envs", env_id, "--variants", *algorithms, "--seeds", str(args.seeds), "--timesteps", str(steps),
             "--eval-freq", str(max(steps // 10, 1)), "--workers", str(args.workers), "--out", str(out / env_id)]
        )  # fmt: skip
        if code != 0:
            print(f"ablation of {env_id} exited with {code}", file=sys.stderr)
            return code
    print(
        f"Learning benchmark, {datetime.now(timezone.utc):%Y-%m-%d} UTC, {platform.platform()}, "
        f"{args.seeds} seed(s), {time.time() - started:.0f} s wall time. Reports: {out}/<env>/report.md\n"
    )
    print(table(out, args.envs, budgets, algorithms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
