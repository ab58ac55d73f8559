"""``sb3pv-arithmetic`` / ``python -m sb3_ppo_variants.arithmetic``: pretrain (or reuse) an imperfect reference, or
start from an existing model, fine-tune it with PPO for each arm and seed, and write a report.

The report (``report.md``, ``results.json``, ``curves.png``) gives, on the held-out prompts (never trained on, their
commuted twins neither): the greedy accuracy of the reference and of each arm, with a 95% bootstrap interval over
seeds and the paired difference of each arm against ``no_kl``; the KL(pi || pi_ref) per response at the end; the
curves of accuracy and KL over training, with the reference's accuracy on the same prompts; and sample generations
of every arm. The arms and their settings come from an rl-zoo3 style file (default:
``sb3_ppo_variants/data/arithmetic.yml``), one entry per arm over a shared ``default``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
import yaml
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import ActorCriticPolicy

from sb3_ppo_variants.arithmetic.env import ENV_ID, ArithmeticEnv, generate_answers, greedy_accuracy, prompt_subset
from sb3_ppo_variants.arithmetic.policy import TransformerPolicy
from sb3_ppo_variants.arithmetic.pretrain import pretrain_reference
from sb3_ppo_variants.arithmetic.tokenizer import has_tokenizer
from sb3_ppo_variants.hyperparams import make_model, split_hyperparams
from sb3_ppo_variants.kl import categorical_kl

__all__ = [
    "BASELINE_ARM",
    "DEFAULT_ARMS",
    "TrainingCurves",
    "arm_hyperparams",
    "arm_names",
    "bootstrap_interval",
    "fine_tune",
    "main",
    "response_kl",
    "run",
    "write_report",
]

DEFAULT_ARMS = ("no_kl", "kl_reward")
#: The arm every other arm is compared with, seed by seed.
BASELINE_ARM = "no_kl"
DEFAULT_REFERENCE = "arithmetic-reference"


def default_hyperparams_file() -> Path:
    return Path(str(resources.files("sb3_ppo_variants") / "data" / "arithmetic.yml"))


def _arms_entry(source: str | Path | dict[str, Any]) -> dict[str, Any]:
    data = source
    if isinstance(source, (str, Path)):
        with open(source) as file:
            data = yaml.safe_load(file) or {}
    entry = data.get(ENV_ID) if isinstance(data, dict) else None
    if not isinstance(entry, dict):
        raise ValueError(f"hyperparams {source if not isinstance(source, dict) else 'mapping'} has no {ENV_ID!r} entry")
    return entry


def arm_names(source: str | Path | dict[str, Any]) -> list[str]:
    """The arms of a hyperparameters file: its ``sb3pv/Arithmetic-v0`` entries other than ``default``, in file order."""
    return [name for name, value in _arms_entry(source).items() if name != "default" and isinstance(value, dict)]


def _arm_entry(source: str | Path | dict[str, Any], arm: str) -> dict[str, Any]:
    arms = arm_names(source)
    if arm not in arms:
        raise ValueError(f"arm must be one of {arms} (the entries of the hyperparameters file), got {arm!r}")
    entries = _arms_entry(source)
    entry = {**(entries.get("default") or {}), **entries[arm]}
    return json.loads(json.dumps(entry))  # a copy, whatever its nesting


def _env_kwargs(source: str | Path | dict[str, Any], arm: str) -> dict[str, Any]:
    return dict(_arm_entry(source, arm).get("env_kwargs") or {})


def arm_hyperparams(source: str | Path | dict[str, Any], arm: str, reference: str | Path) -> tuple[str, dict[str, Any]]:
    """The variant and the entry of ``arm`` (its settings over ``default``), starting from the model in ``reference``:
    the policy's ``model_path`` and, where the arm has one, its ``kl_reference``; the environment's tokenizer is the
    one saved in ``reference`` where it holds one.

    :raises ValueError: when the file has no such arm, or the arm names no ``variant``
    """
    entry = _arm_entry(source, arm)
    variant = entry.pop("variant", None)
    if variant is None:
        raise ValueError(f"arm {arm!r} of {source if not isinstance(source, dict) else 'the mapping'} names no variant")
    entry["policy_kwargs"] = {**(entry.get("policy_kwargs") or {}), "model_path": str(reference)}
    if "kl_reference" in entry:
        entry["kl_reference"] = str(reference)
    if has_tokenizer(reference):
        entry["env_kwargs"] = {**(entry.get("env_kwargs") or {}), "tokenizer": str(reference)}
    return variant, entry


@th.no_grad()
def response_kl(
    policy: ActorCriticPolicy,
    reference: ActorCriticPolicy,
    env: ArithmeticEnv,
    prompts: Sequence[str] | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """KL(pi || pi_ref) between the policy's and the reference's answers to ``prompts`` (default: ``env.prompts``),
    on the policy's device.

    One answer per prompt is sampled from the policy (a ``torch.Generator`` seeded with ``seed``); along it, the exact
    per-token KL(pi(.|s_t) || pi_ref(.|s_t)) over the vocabulary is summed. By the chain rule its expectation over the
    sampled answers is the KL between the two models' distributions over whole answers -- the KL per response of
    Ziegler et al. 2019 and TRL.

    :return: ``kl_per_response`` (mean over prompts), ``tokens_per_response`` (mean) and ``kl_per_token`` (their ratio)
    """
    device = policy.device
    generator = th.Generator(device=device).manual_seed(seed)
    prompts = list(env.prompts if prompts is None else prompts)
    answers: list[list[int]] = [[] for _ in prompts]
    totals = th.zeros(len(prompts), dtype=th.float64, device=device)
    active = list(range(len(prompts)))
    while active:
        obs = th.as_tensor(np.stack([env.observation(prompts[i], answers[i]) for i in active]), device=device)
        log_p = policy.get_distribution(obs).distribution.logits  # type: ignore[union-attr,operator]  # a Categorical's
        reference_log_p = reference.get_distribution(obs).distribution.logits  # type: ignore[union-attr,operator]
        totals[active] += categorical_kl(log_p, reference_log_p).double()
        tokens = th.multinomial(th.softmax(log_p, dim=-1), 1, generator=generator).squeeze(1).tolist()
        still = []
        for i, token in zip(active, tokens):
            answers[i].append(int(token))
            if token not in (env.eos_token_id, env.pad_token_id) and len(answers[i]) < env.max_answer_tokens:
                still.append(i)
        active = still
    per_response = float(totals.mean())
    tokens_per_response = float(np.mean([len(a) for a in answers]))
    return {
        "kl_per_response": per_response,
        "tokens_per_response": tokens_per_response,
        "kl_per_token": per_response / tokens_per_response,
    }


def bootstrap_interval(
    values: Sequence[float], confidence: float = 0.95, reps: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """The mean of ``values`` and its percentile bootstrap interval (``reps`` resamples with replacement, drawn with
    ``seed``). With few values (seeds) the interval is narrower than the truth: it cannot be wider than their range.

    :return: (mean, low, high)
    """
    array = np.asarray(values, dtype=float)
    if array.ndim != 1 or len(array) == 0:
        raise ValueError(f"values must be a non-empty 1-D sequence, got {values!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    means = array[np.random.default_rng(seed).integers(len(array), size=(reps, len(array)))].mean(axis=1)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(array.mean()), float(low), float(high)


class TrainingCurves(BaseCallback):
    """The curves of a fine-tuning run, labelled with the timesteps collected so far (SB3's convention).

    After each rollout: the mean training reward (SB3's ``ep_info_buffer``, the last 100 sampled answers). At the
    start, whenever ``eval_every`` more timesteps have been collected (before a rollout), and at the end: the greedy
    accuracy on ``eval_env``'s prompts and :func:`response_kl` on them, with the policy of that moment.

    :param reference: the frozen reference policy (on the model's device)
    :param eval_env: the environment whose prompts (the held-out ones) measure accuracy and KL
    """

    def __init__(self, reference: ActorCriticPolicy, eval_env: ArithmeticEnv, eval_every: int):
        super().__init__()
        self.reference = reference
        self.eval_env = eval_env
        self.eval_every = eval_every
        self.rewards: list[dict[str, float]] = []
        self.evaluations: list[dict[str, float]] = []

    def evaluate(self) -> None:
        policy: Any = self.model.policy
        training = policy.training
        policy.set_training_mode(False)
        row = {"timesteps": self.num_timesteps, "accuracy": greedy_accuracy(policy.predict, self.eval_env)}
        row.update(response_kl(policy, self.reference, self.eval_env))
        policy.set_training_mode(training)
        self.evaluations.append(row)

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        if not self.evaluations or self.num_timesteps - self.evaluations[-1]["timesteps"] >= self.eval_every:
            self.evaluate()

    def _on_rollout_end(self) -> None:
        episodes: Any = self.model.ep_info_buffer or []
        reward = float(np.mean([e["r"] for e in episodes])) if episodes else float("nan")
        self.rewards.append({"timesteps": self.num_timesteps, "reward": reward})

    def _on_training_end(self) -> None:
        if self.evaluations[-1]["timesteps"] != self.num_timesteps:
            self.evaluate()


def _held_out_env(env_kwargs: dict[str, Any], n_eval_prompts: int | None) -> ArithmeticEnv:
    held_out = ArithmeticEnv(**{**env_kwargs, "split": "held_out"})
    return held_out if n_eval_prompts is None else prompt_subset(held_out, n_eval_prompts, seed=1)


def fine_tune(
    arm: str,
    seed: int,
    reference: str | Path,
    hyperparams: str | Path | dict[str, Any],
    timesteps: int | None = None,
    n_evals: int = 4,
    n_eval_prompts: int | None = None,
    device: th.device | str = "auto",
) -> tuple[Any, dict[str, Any]]:
    """Fine-tune the model in ``reference`` with one arm's settings and seed.

    :param timesteps: the budget (default: the entry's ``n_timesteps``)
    :param n_evals: evaluations during training (and one at the start and at the end), on the held-out prompts
    :param n_eval_prompts: evaluate on this many held-out prompts (default: all of them)
    :param device: the model's device (SB3's ``device``); evaluation runs there too
    :return: the model and its results: the final held-out greedy accuracy and KL per response (on the evaluation
        prompts: every held-out prompt by default), the curves, seconds
    """
    variant, entry = arm_hyperparams(hyperparams, arm, reference)
    _, settings = split_hyperparams(entry)
    env_kwargs = dict(settings.get("env_kwargs") or {})
    timesteps = int(timesteps or settings.get("n_timesteps") or 24576)
    start = time.perf_counter()
    model = make_model(variant, ENV_ID, entry, seed=seed, device=device)
    eval_env = _held_out_env(env_kwargs, n_eval_prompts)
    frozen = TransformerPolicy.from_pretrained(reference, model.observation_space, model.action_space).to(model.device)
    frozen.set_training_mode(False)
    curves = TrainingCurves(frozen, eval_env, eval_every=max(1, timesteps // n_evals))
    model.learn(timesteps, callback=curves)
    model.policy.set_training_mode(False)
    final = curves.evaluations[-1]
    controller = getattr(model, "kl_controller", None)
    results = {
        "arm": arm,
        "variant": variant,
        "seed": seed,
        "timesteps": model.num_timesteps,
        "device": str(model.device),
        "held_out_accuracy": final["accuracy"],
        "kl_per_response": final["kl_per_response"],
        "tokens_per_response": final["tokens_per_response"],
        # beta at the end (the proportional controller's adapted one), None without a KL penalty
        "final_kl_coef": None if controller is None else float(controller.value),
        "rewards": curves.rewards,
        "evaluations": curves.evaluations,
        "seconds": time.perf_counter() - start,
    }
    return model, results


def _fine_tune_job(
    arm: str,
    seed: int,
    reference: str,
    hyperparams: str | Path | dict[str, Any],
    timesteps: int | None,
    n_eval_prompts: int | None,
    device: str,
    prompts: list[str],
) -> dict[str, Any]:
    """One run of :func:`run`, in this process or a worker: its results, with its greedy answers to ``prompts``."""
    th.set_num_threads(1)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # one bar per model loaded otherwise
    model, result = fine_tune(arm, seed, reference, hyperparams, timesteps, n_eval_prompts=n_eval_prompts, device=device)
    env_kwargs = split_hyperparams(arm_hyperparams(hyperparams, arm, reference)[1])[1].get("env_kwargs") or {}
    result["samples"] = generate_answers(model.policy.predict, ArithmeticEnv(**{**env_kwargs, "split": "held_out"}), prompts)
    return result


def _plot(results: list[dict[str, Any]], reference_accuracy: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(dict.fromkeys(r["arm"] for r in results))
    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    for index, arm in enumerate(arms):
        color = f"C{index}"
        runs = [r for r in results if r["arm"] == arm]
        for number, r in enumerate(runs):
            label = arm if number == 0 else None
            axes[0].plot(
                [x["timesteps"] for x in r["rewards"]],
                [x["reward"] for x in r["rewards"]],
                color=color,
                alpha=0.6,
                label=label,
            )
            steps = [x["timesteps"] for x in r["evaluations"]]
            axes[1].plot(steps, [x["accuracy"] for x in r["evaluations"]], color=color, alpha=0.6, marker="o", label=label)
            axes[2].plot(
                steps, [x["kl_per_response"] for x in r["evaluations"]], color=color, alpha=0.6, marker="o", label=label
            )
    axes[1].axhline(reference_accuracy, color="gray", linestyle="--", label="reference (same prompts)")
    titles = (
        "training reward (last 100 sampled answers)",
        "greedy accuracy, held-out prompts",
        "KL(pi || pi_ref) per response, held-out prompts",
    )
    for axis, title in zip(axes, titles):
        axis.set_title(title)
        axis.set_xlabel("timesteps")
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def arm_table(results: list[dict[str, Any]], baseline: str = BASELINE_ARM) -> list[dict[str, Any]]:
    """Per arm: accuracies and KLs by seed, and the paired differences of accuracy and KL against ``baseline`` (on
    the seeds both ran), each with :func:`bootstrap_interval`'s (mean, low, high)."""
    base = {r["seed"]: r for r in results if r["arm"] == baseline}
    rows = []
    for arm in dict.fromkeys(r["arm"] for r in results):
        runs = [r for r in results if r["arm"] == arm]
        row: dict[str, Any] = {
            "arm": arm,
            "variant": runs[0]["variant"],
            "seeds": [r["seed"] for r in runs],
            "accuracy": [r["held_out_accuracy"] for r in runs],
            "kl_per_response": [r["kl_per_response"] for r in runs],
            "accuracy_interval": bootstrap_interval([r["held_out_accuracy"] for r in runs]),
            "kl_interval": bootstrap_interval([r["kl_per_response"] for r in runs]),
            "tokens_per_response": float(np.mean([r["tokens_per_response"] for r in runs])),
            "seconds": float(np.mean([r["seconds"] for r in runs])),
            "final_kl_coef": None if runs[0].get("final_kl_coef") is None else [r["final_kl_coef"] for r in runs],
        }
        paired = [r for r in runs if r["seed"] in base]
        if arm != baseline and paired:
            row["paired_seeds"] = [r["seed"] for r in paired]
            row["accuracy_difference"] = bootstrap_interval(
                [r["held_out_accuracy"] - base[r["seed"]]["held_out_accuracy"] for r in paired]
            )
            row["kl_difference"] = bootstrap_interval(
                [r["kl_per_response"] - base[r["seed"]]["kl_per_response"] for r in paired]
            )
        rows.append(row)
    return rows


def _fmt(interval: Sequence[float], signed: bool = False, digits: int = 3) -> str:
    sign = "+" if signed else ""
    mean, low, high = interval
    return f"{mean:{sign}.{digits}f} [{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]"


def _betas(values: list[float] | None) -> str:
    if values is None:
        return ""
    low, high = min(values), max(values)
    return f"{low:.3g}" if low == high else f"{low:.3g}-{high:.3g}"


def write_report(
    output: str | Path, summary: dict[str, Any], results: list[dict[str, Any]], samples: list[dict[str, Any]]
) -> Path:
    """Write ``report.md``, ``results.json`` and ``curves.png`` into ``output``; return the report's path."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    table = arm_table(results)
    (output / "results.json").write_text(
        json.dumps({"summary": summary, "arms": table, "runs": results, "samples": samples}, indent=1)
    )
    _plot(results, summary["reference_held_out_accuracy"], output / "curves.png")
    load = summary["load_average"]
    lines = [
        "# Arithmetic: PPO fine-tuning of a language-model policy, with and without a KL penalty to the reference",
        "",
        f"{summary['date']}; {summary['cpu_count']} CPUs, load average {load[0]:.1f} at the start and {load[1]:.1f} at the "
        f"end; device {summary['device']}; total {summary['seconds']:.0f} s.",
        "",
        f"Environment `{ENV_ID}` with {summary['env_kwargs']}; {summary['n_held_out']} held-out prompts, never trained on "
        "(nor their commuted twins). Every number below is measured on them.",
        f"Reference: {summary['reference_source']}; greedy accuracy on the held-out prompts "
        f"**{summary['reference_held_out_accuracy']:.3f}**.",
        f"Fine-tuning: {summary['timesteps']} timesteps per run; arms from `{summary['hyperparams']}`; seeds "
        f"{summary['seeds']}.",
        "",
        "Means over seeds with 95% percentile bootstrap intervals over seeds (with few seeds these are narrower than "
        f"the truth). `- {BASELINE_ARM}`: the paired difference, seed by seed, against the `{BASELINE_ARM}` arm. KL: "
        "KL(pi || pi_ref) per response (summed over its tokens) at the end, one sampled answer per held-out prompt.",
        "",
        f"| arm | variant | held-out greedy accuracy | - {BASELINE_ARM} | per seed | KL per response | - {BASELINE_ARM} "
        "| tokens per response | beta at the end | s per run |",
        "|---|---|---|---|---|---|---|---:|---|---:|",
    ]
    for row in table:
        accuracy_difference = _fmt(row["accuracy_difference"], signed=True) if "accuracy_difference" in row else ""
        kl_difference = _fmt(row["kl_difference"], signed=True, digits=4) if "kl_difference" in row else ""
        lines.append(
            f"| {row['arm']} | {row['variant']} | {_fmt(row['accuracy_interval'])} | {accuracy_difference} | "
            f"{', '.join(f'{a:.3f}' for a in row['accuracy'])} | {_fmt(row['kl_interval'], digits=4)} | {kl_difference} | "
            f"{row['tokens_per_response']:.2f} | {_betas(row['final_kl_coef'])} | {row['seconds']:.0f} |"
        )
    lines += [
        "",
        f"![curves](curves.png)  (accuracy and KL on {summary['n_eval_prompts']} held-out prompts; the dashed line is the "
        "reference on the same prompts)",
        "",
        f"## Sample generations (held-out prompts, greedy; each arm's seed {summary['seeds'][0]})",
        "",
    ]
    names = [key for key in samples[0] if key not in ("prompt", "correct")] if samples else []
    lines += ["| prompt | correct | " + " | ".join(names) + " |", "|---" * (2 + len(names)) + "|"]
    for sample in samples:
        cells = [f"`{sample['prompt']}`", f"`{sample['correct']}`"]
        for name in names:
            given = sample[name]
            text = "(no end token)" if given is None else f"`{given}`"
            cells.append(f"{text} {'right' if given == sample['correct'] else 'wrong'}")
        lines.append("| " + " | ".join(cells) + " |")
    path = output / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(
    output: str | Path = "arithmetic-report",
    reference: str | Path = DEFAULT_REFERENCE,
    arms: Sequence[str] = DEFAULT_ARMS,
    seeds: Sequence[int] = (0, 1, 2),
    timesteps: int | None = None,
    hyperparams: str | Path | dict[str, Any] | None = None,
    pretraining: dict[str, Any] | None = None,
    n_samples: int = 10,
    jobs: int = 1,
    model_path: str | Path | None = None,
    n_eval_prompts: int | None = None,
    device: str = "auto",
    verbose: int = 1,
) -> dict[str, Any]:
    """Fine-tune a reference model for every arm and seed, and write the report into ``output``.

    :param reference: the pretraining's own directory: the reference is pretrained into it (or reused from it); an
        existing directory that pretraining did not create is refused (see
        :func:`~sb3_ppo_variants.arithmetic.pretrain.pretrain_reference`)
    :param arms: arms of ``hyperparams``, or ``["all"]`` for every arm of the file
    :param pretraining: keyword arguments of :func:`pretrain_reference` (``target_accuracy``, ``model_config``, ...)
    :param jobs: runs at once, each in its own process with one torch thread (1: all in this process)
    :param model_path: start from this ``save_pretrained`` model instead of pretraining: it is both the initial
        policy and the frozen reference (and its tokenizer, where it holds one, the environment's); it is only read
    :param n_eval_prompts: evaluate on this many held-out prompts (default: all)
    :param device: the models' device (SB3's ``device``); evaluation runs there too
    :return: the summary (also in ``results.json``)
    """
    hyperparams = hyperparams or default_hyperparams_file()
    available = arm_names(hyperparams)
    arms = available if list(arms) == ["all"] else list(arms)
    unknown = [arm for arm in arms if arm not in available]
    if unknown or not arms:
        raise ValueError(f"arms must be among {available} or ['all'], got {list(arms)!r}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an int >= 1, got {jobs!r}")
    if not seeds:
        raise ValueError(f"seeds must name at least one seed, got {seeds!r}")
    start = time.perf_counter()
    load_at_start = os.getloadavg()[0]
    if model_path is not None:
        if not Path(model_path).is_dir():
            raise ValueError(f"model_path must be a directory written by save_pretrained, got {str(model_path)!r}")
        source = str(model_path)
        reference_source = f"the model in `{source}` (no pretraining)"
    else:
        source = str(reference)
        metadata = pretrain_reference(source, _env_kwargs(hyperparams, arms[0]), **(pretraining or {}))
        reference_source = (
            f"pretrained into `{source}` ({metadata['steps']} steps, {metadata['seconds']:.0f} s when it was made; "
            f"greedy accuracy {metadata['train_accuracy']:.3f} on training prompts)"
        )
    env_kwargs = dict(split_hyperparams(arm_hyperparams(hyperparams, arms[0], source)[1])[1].get("env_kwargs") or {})
    held_out = ArithmeticEnv(**{**env_kwargs, "split": "held_out"})
    eval_env = _held_out_env(env_kwargs, n_eval_prompts)
    frozen = TransformerPolicy.from_pretrained(source, held_out.observation_space, held_out.action_space)
    frozen.set_training_mode(False)
    reference_accuracy = greedy_accuracy(frozen.predict, held_out)
    reference_eval_accuracy = greedy_accuracy(frozen.predict, eval_env)
    if verbose:
        print(f"reference {source}: held-out greedy accuracy {reference_accuracy:.3f}", flush=True)
    prompts = held_out.prompts[:: max(1, len(held_out.prompts) // n_samples)][:n_samples]
    cells = [(arm, seed, source, hyperparams, timesteps, n_eval_prompts, device, prompts) for arm in arms for seed in seeds]
    results: list[dict[str, Any]] = []

    def done(result: dict[str, Any]) -> None:
        results.append(result)
        if verbose:
            print(
                f"{result['arm']} seed {result['seed']}: held-out greedy accuracy {result['held_out_accuracy']:.3f}, "
                f"KL per response {result['kl_per_response']:.4f}, {result['seconds']:.0f} s",
                flush=True,
            )

    if jobs > 1:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            for future in as_completed([pool.submit(_fine_tune_job, *cell) for cell in cells]):
                done(future.result())
        results.sort(key=lambda r: (arms.index(r["arm"]), list(seeds).index(r["seed"])))
    else:
        for cell in cells:
            done(_fine_tune_job(*cell))
    columns = {"reference": generate_answers(frozen.predict, held_out, prompts)}
    for result in results:
        answers = result.pop("samples")
        if result["seed"] == seeds[0]:
            columns[result["arm"]] = answers
    samples = [
        {"prompt": p, "correct": held_out.answers[held_out.prompts.index(p)], **{k: v[i] for k, v in columns.items()}}
        for i, p in enumerate(prompts)
    ]
    summary = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_count": os.cpu_count(),
        "load_average": [load_at_start, os.getloadavg()[0]],
        "device": results[0]["device"],
        "env_kwargs": {k: v for k, v in env_kwargs.items() if k != "tokenizer"},
        "n_held_out": len(held_out.prompts),
        "n_eval_prompts": len(eval_env.prompts),
        "reference": source,
        "reference_source": reference_source,
        "reference_held_out_accuracy": reference_accuracy,
        "reference_eval_accuracy": reference_eval_accuracy,
        "timesteps": results[0]["timesteps"],
        "hyperparams": str(hyperparams) if not isinstance(hyperparams, dict) else "a mapping",
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
        "--reference",
        default=None,
        help=f"pretraining's own directory, created then reused; never one it did not create (default: {DEFAULT_REFERENCE})",
    )
    parser.add_argument(
        "--model-path",
        default=None,
        help="start from this save_pretrained model (initial policy and frozen reference; read only), no pretraining",
    )
    parser.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS), help="arms of the hyperparameters file, or: all")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--timesteps", type=int, default=None, help="per run (default: the file's n_timesteps)")
    parser.add_argument("--hyperparams", default=None, help="rl-zoo3 style file (default: the package's arithmetic.yml)")
    parser.add_argument("--target-accuracy", type=float, default=0.4, help="pretraining stops at this greedy accuracy")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once, one process each (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="the models' device, e.g. cpu, cuda (default: %(default)s)")
    parser.add_argument("--pretrain-only", action="store_true", help="pretrain (or reuse) the reference and stop")
    args = parser.parse_args(argv)
    if args.model_path is not None and (args.reference is not None or args.pretrain_only):
        parser.error("--model-path replaces pretraining: give it without --reference and --pretrain-only")
    reference = args.reference or DEFAULT_REFERENCE
    th.set_num_threads(1)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # one bar per model loaded or saved otherwise (workers: see the job)
    pretraining = {"target_accuracy": args.target_accuracy}
    hyperparams = args.hyperparams or default_hyperparams_file()
    if args.pretrain_only:
        metadata = pretrain_reference(reference, _env_kwargs(hyperparams, arm_names(hyperparams)[0]), **pretraining)
        print(f"reference {reference}: held-out greedy accuracy {metadata['held_out_accuracy']:.3f}")
        return
    run(
        args.out,
        reference,
        args.arms,
        args.seeds,
        args.timesteps,
        hyperparams,
        pretraining,
        jobs=args.jobs,
        model_path=args.model_path,
        device=args.device,
    )
