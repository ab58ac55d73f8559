"""rl-zoo3 entry point: zoo's own commands (train, enjoy, plots, hyperparameter search) with our variants.

    python -m sb3_ppo_variants.zoo train --algo clip_kl --env CartPole-v1
    python -m sb3_ppo_variants.zoo enjoy --algo clip_kl --env CartPole-v1 -f logs --no-render
    python -m sb3_ppo_variants.zoo train --algo adaptive_kl --env CartPole-v1 -optimize --n-trials 20 \\
        --storage runs/zoo.log --study-name adaptive_kl-cartpole

rl-zoo3 checks ``--algo`` against its ``ALGOS`` dict while parsing, before ``--gym-packages`` is imported, so a
package cannot register itself from zoo's command line. Its documented route for outside algorithms is a wrapper
that adds them to ``rl_zoo3.ALGOS`` (and, for ``-optimize``, to ``hyperparams_opt.HYPERPARAMS_SAMPLER`` and
``HYPERPARAMS_CONVERTER``) and then runs zoo's command: that is this module. Nothing of zoo is patched.

- Every ``VARIANTS`` key is registered as an algorithm (``clip``, ``kl``, ``adaptive_kl``, ``clip_kl``, ...).
- ``train`` without ``-conf`` uses the variant's hyperparameters shipped in ``sb3_ppo_variants/data/zoo/``
  (rl-zoo3's PPO entries, one file per variant, in zoo's format).
- The samplers are the tuner's search spaces (:mod:`sb3_ppo_variants.studies.search_spaces`): the variant's
  own terms (``clip_range`` only for clipped variants, ``kl_coef``, ``kl_target``, ``ent_coef`` and the shape of
  its schedule) plus rl-zoo3's PPO ranges; the converters rebuild the settings from ``trial.params`` alone
  (zoo's ``--trial-id``).
- ``plot_train`` only calls ``plt.show()``; ``plot_train ... --output FILE`` also saves its figure.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from sb3_ppo_variants import VARIANTS
from sb3_ppo_variants.hyperparams import parse_policy_kwargs

__all__ = ["ZooSampler", "convert_params", "default_config", "main", "register"]

#: zoo's commands (rl_zoo3.cli's known scripts).
COMMANDS = ("train", "enjoy", "plot_train", "plot_from_file", "all_plots")


def default_config(algo: str) -> Path | None:
    """The shipped zoo hyperparameter file of a variant (``sb3_ppo_variants/data/zoo/<algo>.yml``), if any."""
    path = Path(str(resources.files("sb3_ppo_variants").joinpath("data", "zoo", f"{algo}.yml")))
    return path if path.is_file() else None


def convert_params(sampled_params: dict[str, Any]) -> dict[str, Any]:
    """zoo's ``HYPERPARAMS_CONVERTER`` entry: Optuna parameters -> constructor arguments, from ``trial.params`` alone.

    ``policy_kwargs`` is returned as a dict (zoo passes sampled settings straight to the constructor).
    """
    from sb3_ppo_variants.studies.search_spaces import params_to_kwargs

    kwargs = params_to_kwargs(sampled_params)
    if "policy_kwargs" in kwargs:
        kwargs["policy_kwargs"] = parse_policy_kwargs(kwargs["policy_kwargs"])
    return kwargs


class ZooSampler:
    """zoo's ``HYPERPARAMS_SAMPLER`` entry for one variant: its search space with rl-zoo3's PPO ranges.

    :param variant: a ``VARIANTS`` key
    """

    def __init__(self, variant: str):
        self.variant = variant

    def __call__(self, trial: Any, n_actions: int, n_envs: int, additional_args: dict[str, Any]) -> dict[str, Any]:
        from sb3_ppo_variants.studies.search_spaces import suggest_params

        return convert_params(suggest_params(trial, self.variant, wide=True))


def register() -> list[str]:
    """Add every variant to rl-zoo3's algorithms, samplers and converters (its public registries).

    :return: the names registered
    """
    try:
        import rl_zoo3
        from rl_zoo3 import hyperparams_opt
    except ImportError as error:  # pragma: no cover - depends on the install
        raise ImportError("rl-zoo3 is not installed: pip install 'sb3-ppo-variants[zoo]'") from error
    for name, algorithm in VARIANTS.items():
        rl_zoo3.ALGOS[name] = algorithm
        hyperparams_opt.HYPERPARAMS_SAMPLER[name] = ZooSampler(name)
        hyperparams_opt.HYPERPARAMS_CONVERTER[name] = convert_params
    return list(VARIANTS)


def _with_default_config(args: list[str]) -> list[str]:
    """``train`` arguments with ``-conf <shipped file>`` added when the user gave none and the algo is ours."""
    if any(arg in ("-conf", "--conf-file") or arg.startswith("--conf-file=") for arg in args):
        return args
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--algo", default="ppo")
    known, _ = parser.parse_known_args(args)
    config = default_config(known.algo) if known.algo in VARIANTS else None
    return args if config is None else [*args, "-conf", str(config)]


def _pop_output(args: list[str]) -> tuple[list[str], str | None]:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--output", "-o", default=None)
    known, rest = parser.parse_known_args(args)
    return rest, known.output


def main(argv: Sequence[str] | None = None) -> None:
    """``sb3pv-zoo COMMAND ARGS``: register the variants, then run zoo's command with ARGS unchanged."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        raise SystemExit(f"usage: python -m sb3_ppo_variants.zoo {{{','.join(COMMANDS)}}} [zoo arguments]; got {args[:1]}")
    command, rest = args[0], args[1:]
    register()
    output = None
    if command == "train":
        rest = _with_default_config(rest)
    elif command == "plot_train":
        rest, output = _pop_output(rest)

    from rl_zoo3.enjoy import enjoy
    from rl_zoo3.plots import all_plots, plot_from_file, plot_train
    from rl_zoo3.train import train

    scripts = {"train": train, "enjoy": enjoy, "plot_train": plot_train, "plot_from_file": plot_from_file}
    scripts["all_plots"] = all_plots
    # zoo's commands read their arguments from sys.argv (they take none): that is their public interface.
    program = f"{Path(sys.argv[0]).name} {command}"
    saved = sys.argv
    sys.argv = [program, *rest]
    try:
        scripts[command]()
    finally:
        sys.argv = saved
    if output is not None:
        import matplotlib.pyplot as plt

        plt.gcf().savefig(output)
        print(f"Saved the figure to {output}")


if __name__ == "__main__":
    main()
