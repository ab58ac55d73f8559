"""``sb3pv-arithmetic`` / ``python -m sb3_ppo_variants.arithmetic``: pretrain (or reuse) an imperfect reference,
fine-tune it with PPO for each arm and seed, and write a report.

The report (``report.md``, ``results.json``, ``curves.png``) gives the greedy accuracy on the held-out prompts of the
reference and of each fine-tuned model, the training reward and the KL(pi || pi_ref) per token over training, and
sample generations. The arms and their settings come from an rl-zoo3 style file (default:
``sb3_ppo_variants/data/arithmetic.yml``), one entry per arm over a shared ``default``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.callbacks import BaseCallback

from sb3_ppo_variants.arithmetic.env import ENV_ID, ArithmeticEnv, generate_answers, greedy_accuracy, prompt_subset
from sb3_ppo_variants.arithmetic.policy import TransformerPolicy
from sb3_ppo_variants.arithmetic.pretrain import pretrain_reference
from sb3_ppo_variants.hyperparams import load_hyperparams, make_model, split_hyperparams
from sb3_ppo_variants.kl import categorical_kl

__all__ = ["DEFAULT_ARMS", "TrainingCurves", "arm_hyperparams", "fine_tune", "main", "run", "write_report"]

DEFAULT_ARMS = ("no_kl", "kl_reward")
DEFAULT_REFERENCE = "arithmetic-reference"


def default_hyperparams_file() -> Path:
    return Path(str(resources.files("sb3_ppo_variants") / "data" / "arithmetic.yml"))


def arm_hyperparams(source: str | Path | dict[str, Any], arm: str, reference: str | Path) -> tuple[str, dict[str, Any]]:
    """The variant and the entry of ``arm``, with the reference's directory as the policy's ``model_path`` and,
    where the arm has one, as its ``kl_reference``.

    :raises ValueError: when the entry names no ``variant``
    """
    entry = load_hyperparams(source, ENV_ID, arm)
    variant = entry.pop("variant", None)
    if variant is None:
        raise ValueError(f"arm {arm!r} of {source if not isinstance(source, dict) else 'the mapping'} names no variant")
    entry["policy_kwargs"] = {**(entry.get("policy_kwargs") or {}), "model_path": str(reference)}
    if "kl_reference" in entry:
        entry["kl_reference"] = str(reference)
    return variant, entry


class TrainingCurves(BaseCallback):
    """The curves of a fine-tuning run, labelled with the timesteps collected so far (SB3's convention).

    After each rollout: the mean training reward (the last 100 sampled answers) and the mean KL(pi || pi_ref) per
    token over ``kl_states`` states of the rollout, with the policy that collected it; at the end of training, that
    KL once more with the final policy. Greedy accuracy on ``eval_env``'s prompts at the start, then before a
    rollout whenever ``eval_every`` more timesteps have been trained on.

    :param reference: the frozen reference policy
    :param eval_env: the environment whose prompts (a held-out subset) measure greedy accuracy
    """

    def __init__(self, reference: TransformerPolicy, eval_env: ArithmeticEnv, eval_every: int, kl_states: int = 256):
        super().__init__()
        self.reference = reference
        self.eval_env = eval_env
        self.eval_every = eval_every
        self.kl_states = kl_states
        self.rows: list[dict[str, float]] = []
        self.accuracy: list[tuple[int, float]] = []
        self.final_kl_ref = float("nan")
        self._rng = np.random.default_rng(0)

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        if not self.accuracy or self.num_timesteps - self.accuracy[-1][0] >= self.eval_every:
            self.accuracy.append((self.num_timesteps, greedy_accuracy(self.model.policy.predict, self.eval_env)))

    @th.no_grad()
    def _kl_to_reference(self) -> float:
        observations = self.model.rollout_buffer.observations  # type: ignore[attr-defined]
        observations = observations.reshape(-1, observations.shape[-1])
        states = th.as_tensor(observations[self._rng.choice(len(observations), self.kl_states, replace=False)])
        policy: Any = self.model.policy
        logits = policy.get_distribution(states).distribution.logits
        reference_logits = self.reference.get_distribution(states).distribution.logits  # type: ignore[union-attr]
        return categorical_kl(logits, reference_logits).mean().item()

    def _on_rollout_end(self) -> None:
        episodes: Any = self.model.ep_info_buffer or []
        reward = float(np.mean([e["r"] for e in episodes])) if episodes else float("nan")
        self.rows.append({"timesteps": self.num_timesteps, "reward": reward, "kl_ref": self._kl_to_reference()})

    def _on_training_end(self) -> None:
        self.final_kl_ref = self._kl_to_reference()


def fine_tune(
    arm: str,
    seed: int,
    reference: str | Path,
    hyperparams: str | Path | dict[str, Any],
    timesteps: int | None = None,
    n_evals: int = 4,
    n_eval_prompts: int = 400,
) -> tuple[Any, dict[str, Any]]:
    """Fine-tune the reference with one arm's settings and seed.

    :param timesteps: the budget (default: the entry's ``n_timesteps``)
    :param n_evals: greedy-accuracy checks during training, on ``n_eval_prompts`` held-out prompts
    :return: the model and its results (curves, final held-out accuracy over every held-out prompt, seconds)
    """
    variant, entry = arm_hyperparams(hyperparams, arm, reference)
    _, settings = split_hyperparams(entry)
    env_kwargs = dict(settings.get("env_kwargs") or {})
    timesteps = int(timesteps or settings.get("n_timesteps") or 36000)
    start = time.perf_counter()
    model = make_model(variant, ENV_ID, entry, seed=seed)
    held_out = ArithmeticEnv(**{**env_kwargs, "split": "held_out"})
    subset = prompt_subset(held_out, n_eval_prompts, seed=1)
    frozen = TransformerPolicy.from_pretrained(reference, model.observation_space, model.action_space)
    frozen.set_training_mode(False)
    curves = TrainingCurves(frozen, subset, eval_every=max(1, timesteps // n_evals))
    model.learn(timesteps, callback=curves)
    model.policy.set_training_mode(False)
    accuracy = greedy_accuracy(model.policy.predict, held_out)
    curves.accuracy.append((model.num_timesteps, greedy_accuracy(model.policy.predict, subset)))
    results = {
        "arm": arm,
        "variant": variant,
        "seed": seed,
        "timesteps": model.num_timesteps,
        "held_out_accuracy": accuracy,
        "curves": curves.rows,
        "accuracy_curve": curves.accuracy,
        "final_kl_ref": curves.final_kl_ref,
        "seconds": time.perf_counter() - start,
    }
    return model, results


def _fine_tune_job(
    arm: str,
    seed: int,
    reference: str,
    hyperparams: str | Path | dict[str, Any],
    timesteps: int | None,
    prompts: list[str],
) -> dict[str, Any]:
    """One run of :func:`run`, in this process or a worker: its results, with its greedy answers to ``prompts``."""
    th.set_num_threads(1)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # one bar per model loaded otherwise
    model, result = fine_tune(arm, seed, reference, hyperparams, timesteps)
    env_kwargs = split_hyperparams(arm_hyperparams(hyperparams, arm, reference)[1])[1].get("env_kwargs") or {}
    held_out = ArithmeticEnv(**{**env_kwargs, "split": "held_out"})
    result["samples"] = generate_answers(model.policy.predict, held_out, prompts)
    return result


def _plot(results: list[dict[str, Any]], reference_accuracy: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(dict.fromkeys(r["arm"] for r in results))
    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    for index, arm in enumerate(arms):
        color = f"C{index}"
        for r in (r for r in results if r["arm"] == arm):
            steps = [row["timesteps"] for row in r["curves"]]
            label = arm if r["seed"] == min(x["seed"] for x in results if x["arm"] == arm) else None
            axes[0].plot(steps, [row["reward"] for row in r["curves"]], color=color, alpha=0.7, label=label)
            axes[1].plot(*zip(*r["accuracy_curve"]), color=color, alpha=0.7, marker="o", label=label)
            axes[2].plot(steps, [row["kl_ref"] for row in r["curves"]], color=color, alpha=0.7, label=label)
    axes[1].axhline(reference_accuracy, color="gray", linestyle="--", label="reference, all held-out prompts")
    titles = ("training reward (sampled answers)", "greedy accuracy, held-out subset", "KL(pi || pi_ref) per token, collected")
    for axis, title in zip(axes, titles):
        axis.set_title(title)
        axis.set_xlabel("timesteps")
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_report(
    output: str | Path, summary: dict[str, Any], results: list[dict[str, Any]], samples: list[dict[str, Any]]
) -> Path:
    """Write ``report.md``, ``results.json`` and ``curves.png`` into ``output``; return the report's path."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "results.json").write_text(json.dumps({"summary": summary, "runs": results, "samples": samples}, indent=1))
    _plot(results, summary["reference_held_out_accuracy"], output / "curves.png")
    lines = [
        "# Arithmetic: PPO fine-tuning of a pretrained language-model policy",
        "",
        f"Environment `{ENV_ID}` with {summary['env_kwargs']}; {summary['n_held_out']} held-out prompts, never trained on.",
        f"Reference: {summary['reference']} (pretrained {summary['pretraining_steps']} steps in "
        f"{summary['pretraining_seconds']:.0f} s), greedy accuracy on the held-out prompts "
        f"**{summary['reference_held_out_accuracy']:.3f}**.",
        f"Fine-tuning: {summary['timesteps']} timesteps per run; arms from `{summary['hyperparams']}`; "
        f"seeds {summary['seeds']}; total {summary['seconds']:.0f} s.",
        "",
        "| arm | variant | held-out greedy accuracy (per seed) | mean | gain over reference | KL(pi \\|\\| pi_ref) "
        "per token at the end | s per run |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm in dict.fromkeys(r["arm"] for r in results):
        runs = [r for r in results if r["arm"] == arm]
        accuracies = [r["held_out_accuracy"] for r in runs]
        mean = float(np.mean(accuracies))
        lines.append(
            f"| {arm} | {runs[0]['variant']} | {', '.join(f'{a:.3f}' for a in accuracies)} | {mean:.3f} | "
            f"{mean - summary['reference_held_out_accuracy']:+.3f} | "
            f"{np.mean([r['final_kl_ref'] for r in runs]):.4f} | {np.mean([r['seconds'] for r in runs]):.0f} |"
        )
    lines += ["", "![curves](curves.png)", "", "## Sample generations (held-out prompts, greedy)", ""]
    names = [key for key in samples[0] if key not in ("prompt", "correct")] if samples else []
    lines += ["| prompt | correct | " + " | ".join(names) + " |", "|---" * (2 + len(names)) + "|"]
    for sample in samples:
        cells = [sample["prompt"], sample["correct"], *[str(sample[name]) for name in names]]
        lines.append("| " + " | ".join(f"`{c}`" for c in cells) + " |")
    path = output / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(
    output: str | Path = "arithmetic-report",
    reference: str | Path = DEFAULT_REFERENCE,
    arms: Sequence[str] = DEFAULT_ARMS,
    seeds: Sequence[int] = (0, 1, 2),
    timesteps: int | None = None,
    hyperparams: str | Path | None = None,
    pretraining: dict[str, Any] | None = None,
    n_samples: int = 10,
    jobs: int = 1,
    verbose: int = 1,
) -> dict[str, Any]:
    """Pretrain (or reuse) the reference in ``reference``, fine-tune it for every arm and seed, write the report.

    :param pretraining: keyword arguments of :func:`pretrain_reference` (``target_accuracy``, ``model_config``, ...)
    :param jobs: runs at once, each in its own process with one torch thread (1: all in this process)
    :return: the summary (also in ``results.json``)
    """
    hyperparams = hyperparams or default_hyperparams_file()
    _, entry = arm_hyperparams(hyperparams, arms[0], reference)
    env_kwargs = dict(split_hyperparams(entry)[1].get("env_kwargs") or {})
    start = time.perf_counter()
    metadata = pretrain_reference(reference, env_kwargs, **(pretraining or {}))
    if verbose:
        print(f"reference {reference}: held-out accuracy {metadata['held_out_accuracy']:.3f}, {metadata['steps']} steps")
    held_out = ArithmeticEnv(**{**env_kwargs, "split": "held_out"})
    prompts = held_out.prompts[:: max(1, len(held_out.prompts) // n_samples)][:n_samples]
    cells = [(arm, seed, str(reference), hyperparams, timesteps, prompts) for arm in arms for seed in seeds]
    results: list[dict[str, Any]] = []

    def done(result: dict[str, Any]) -> None:
        results.append(result)
        if verbose:
            print(
                f"{result['arm']} seed {result['seed']}: held-out greedy accuracy {result['held_out_accuracy']:.3f}, "
                f"KL to reference {result['final_kl_ref']:.4f}, {result['seconds']:.0f} s",
                flush=True,
            )

    if jobs > 1:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            for future in as_completed([pool.submit(_fine_tune_job, *cell) for cell in cells]):
                done(future.result())
        results.sort(key=lambda r: (list(arms).index(r["arm"]), list(seeds).index(r["seed"])))
    else:
        for cell in cells:
            done(_fine_tune_job(*cell))
    frozen = TransformerPolicy.from_pretrained(reference, held_out.observation_space, held_out.action_space)
    columns = {"reference": generate_answers(frozen.predict, held_out, prompts)}
    for result in results:
        if result["seed"] == seeds[0]:
            columns[f"{result['arm']} (seed {seeds[0]})"] = result.pop("samples")
        else:
            del result["samples"]
    samples = [
        {"prompt": p, "correct": held_out.answers[held_out.prompts.index(p)], **{k: v[i] for k, v in columns.items()}}
        for i, p in enumerate(prompts)
    ]
    summary = {
        "env_kwargs": env_kwargs,
        "n_held_out": len(held_out.prompts),
        "reference": str(reference),
        "reference_held_out_accuracy": metadata["held_out_accuracy"],
        "pretraining_steps": metadata["steps"],
        "pretraining_seconds": metadata["seconds"],
        "timesteps": results[0]["timesteps"],
        "hyperparams": str(hyperparams),
        "arms": list(arms),
        "seeds": list(seeds),
        "seconds": time.perf_counter() - start,
    }
    path = write_report(output, summary, results, samples)
    if verbose:
        print(f"report: {path}")
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sb3pv-arithmetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="arithmetic-report", help="directory of the report (default: %(default)s)")
    parser.add_argument(
        "--reference", default=DEFAULT_REFERENCE, help="directory of the pretrained reference, reused (default: %(default)s)"
    )
    parser.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS), help="arms of the hyperparameters file")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--timesteps", type=int, default=None, help="per run (default: the file's n_timesteps)")
    parser.add_argument("--hyperparams", default=None, help="rl-zoo3 style file (default: the package's arithmetic.yml)")
    parser.add_argument("--target-accuracy", type=float, default=0.4, help="pretraining stops at this greedy accuracy")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once, one process each (default: %(default)s)")
    parser.add_argument("--pretrain-only", action="store_true", help="pretrain (or reuse) the reference and stop")
    args = parser.parse_args(argv)
    th.set_num_threads(1)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # one bar per model loaded or saved otherwise (workers: see the job)
    pretraining = {"target_accuracy": args.target_accuracy}
    if args.pretrain_only:
        _, entry = arm_hyperparams(args.hyperparams or default_hyperparams_file(), args.arms[0], args.reference)
        env_kwargs = split_hyperparams(entry)[1].get("env_kwargs") or {}
        metadata = pretrain_reference(args.reference, env_kwargs, **pretraining)
        print(f"reference {args.reference}: held-out greedy accuracy {metadata['held_out_accuracy']:.3f}")
        return
    run(args.out, args.reference, args.arms, args.seeds, args.timesteps, args.hyperparams, pretraining, jobs=args.jobs)
