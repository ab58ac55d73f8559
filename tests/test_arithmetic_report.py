"""The arithmetic report: its statistics, its KL measure, starting from a user's model without writing into it, the
device it evaluates on, the command line."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch as th

from sb3_ppo_variants.arithmetic.env import ENV_ID, ArithmeticEnv
from sb3_ppo_variants.arithmetic.policy import TransformerPolicy
from sb3_ppo_variants.arithmetic.pretrain import METADATA_FILE, is_pretraining_directory, pretrain_reference
from sb3_ppo_variants.arithmetic.report import (
    arm_hyperparams,
    arm_names,
    arm_table,
    bootstrap_interval,
    main,
    response_kl,
    run,
)
from sb3_ppo_variants.schedules import ConstantSchedule

TINY = {"n_layer": 1, "n_embd": 32, "n_head": 2}
TINY_ENV = {"digits": 1}


def tiny_policy(env: ArithmeticEnv, seed: int) -> TransformerPolicy:
    th.manual_seed(seed)
    policy = TransformerPolicy(env.observation_space, env.action_space, ConstantSchedule(0.0), model_config=TINY)
    policy.set_training_mode(False)
    return policy


def tiny_hyperparams() -> dict:
    """Three arms over a CI-sized default (one update of 4 envs x 8 steps); the model path is filled in by run()."""
    return {
        ENV_ID: {
            "default": {
                "policy": "sb3_ppo_variants.arithmetic.policy:TransformerPolicy",
                "env_kwargs": TINY_ENV,
                "n_envs": 4,
                "n_steps": 8,
                "batch_size": 16,
                "n_epochs": 1,
                "learning_rate": 1e-3,
                "gamma": 1.0,
            },
            "no_kl": {"variant": "clip"},
            "kl_loss": {"variant": "clip_kl", "kl_reference": "placeholder", "kl_reference_in": "loss", "kl_coef": 0.5},
            "unclipped": {"variant": "kl", "kl_coef": 0.1},
        }
    }


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``directory``: its bytes' digest and its modification time, by relative path."""
    return {
        str(path.relative_to(directory)): (hashlib.sha256(path.read_bytes()).digest(), path.stat().st_mtime_ns)
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


@pytest.fixture()
def foreign_checkpoint(tmp_path: Path) -> Path:
    """A user's save_pretrained checkpoint (a model and its tokenizer, no pretraining.json)."""
    env = ArithmeticEnv(**TINY_ENV)
    directory = tmp_path / "users-model"
    tiny_policy(env, 0).save_pretrained(directory, env.tokenizer)
    (directory / "NOTES.txt").write_text("the user's own file\n")
    return directory


# --- statistics ----------------------------------------------------------------------------------------------------


def test_bootstrap_interval_by_hand():
    assert bootstrap_interval([0.3, 0.3, 0.3]) == (0.3, 0.3, 0.3)
    # two values 0 and 1: a resample's mean is 0, 1/2 or 1 with probabilities 1/4, 1/2, 1/4, so the 2.5% and 97.5%
    # quantiles of 10,000 resamples are 0 and 1
    assert bootstrap_interval([0.0, 1.0]) == (0.5, 0.0, 1.0)
    # one seed: no spread to resample
    assert bootstrap_interval([0.7]) == (0.7, 0.7, 0.7)
    mean, low, high = bootstrap_interval([0.1, 0.2, 0.4, 0.9], seed=3)
    assert mean == pytest.approx(0.4) and 0.1 <= low < mean < high <= 0.9  # mean: (0.1+0.2+0.4+0.9)/4 in floats
    with pytest.raises(ValueError, match="values must be a non-empty 1-D sequence"):
        bootstrap_interval([])
    with pytest.raises(ValueError, match="confidence must be in"):
        bootstrap_interval([1.0], confidence=95)


def test_arm_table_pairs_each_arm_with_no_kl_seed_by_seed():
    def result(arm: str, seed: int, accuracy: float, kl: float) -> dict:
        return {
            "arm": arm,
            "variant": "v",
            "seed": seed,
            "held_out_accuracy": accuracy,
            "kl_per_response": kl,
            "tokens_per_response": 3.0,
            "seconds": 1.0,
        }

    results = [result("no_kl", 0, 0.5, 0.2), result("no_kl", 1, 0.7, 0.4), result("no_kl", 2, 0.6, 0.3)]
    results += [result("kl", 1, 0.75, 0.1), result("kl", 0, 0.5, 0.1), result("kl", 5, 0.0, 9.0)]  # seed 5: no pair
    base, kl = arm_table(results)
    assert "accuracy_difference" not in base
    assert kl["paired_seeds"] == [1, 0]
    # differences: seed 1: 0.75 - 0.7 = 0.05, seed 0: 0; kl: 0.1 - 0.4, 0.1 - 0.2
    assert kl["accuracy_difference"] == bootstrap_interval([0.75 - 0.7, 0.5 - 0.5])
    assert kl["kl_difference"] == bootstrap_interval([0.1 - 0.4, 0.1 - 0.2])
    assert kl["accuracy_interval"] == bootstrap_interval([0.75, 0.5, 0.0])


# --- the KL per response -------------------------------------------------------------------------------------------


def test_response_kl_is_zero_against_itself_and_estimates_the_kl_between_answer_distributions():
    """Summing the exact per-token KL along answers sampled from pi estimates KL(pi(y|x) || pi_ref(y|x)) over whole
    answers y (the chain rule), here computed exactly by enumerating every answer of at most 2 tokens."""
    env = ArithmeticEnv(**TINY_ENV, max_answer_tokens=2)
    policy, reference = tiny_policy(env, 0), tiny_policy(env, 1)
    with th.no_grad():
        reference.language_model.transformer.wte.weight.mul_(5)  # sharper: a KL near 1 rather than 0.03
    prompt = env.prompts[0]
    assert response_kl(policy, policy, env, [prompt] * 50)["kl_per_response"] == 0.0
    # exact: every answer y is one end/padding token, or any other token followed by any token (the length limit)
    n = env.action_space.n
    ends = (env.eos_token_id, env.pad_token_id)
    with th.no_grad():

        def log_probs(model: TransformerPolicy, answers: list[list[int]]) -> th.Tensor:
            obs = th.as_tensor(np.stack([env.observation(prompt, a) for a in answers]))
            return model.get_distribution(obs).distribution.logits

        first_p, first_q = log_probs(policy, [[]])[0], log_probs(reference, [[]])[0]
        going_on = [t for t in range(n) if t not in ends]
        second_p, second_q = log_probs(policy, [[t] for t in going_on]), log_probs(reference, [[t] for t in going_on])
        exact = sum(first_p[t].exp() * (first_p[t] - first_q[t]) for t in ends)
        for row, t in enumerate(going_on):
            log_ratio = first_p[t] - first_q[t] + second_p[row] - second_q[row]  # over the second token
            exact += (first_p[t] + second_p[row]).exp().mul(log_ratio).sum()
    n_samples = 4000
    measured = response_kl(policy, reference, env, [prompt] * n_samples, seed=0)
    # Monte Carlo: the per-answer sums have a standard deviation of about 0.34 here (measured over 20 x 200 answers),
    # so the mean of 4000 is within 0.025 (4.6 standard errors) of the expectation
    assert measured["kl_per_response"] == pytest.approx(float(exact), abs=0.025)
    assert 0.5 < float(exact)  # the two models differ enough for the check to mean something
    assert 1 <= measured["tokens_per_response"] <= 2
    assert measured["kl_per_token"] == measured["kl_per_response"] / measured["tokens_per_response"]
    # the same seed, the same sampled answers
    assert response_kl(policy, reference, env, [prompt] * 100, seed=4) == response_kl(
        policy, reference, env, [prompt] * 100, seed=4
    )


# --- a user's model: read, never written -------------------------------------------------------------------------


def test_pretraining_refuses_a_directory_it_did_not_create(foreign_checkpoint, tmp_path):
    before = snapshot(foreign_checkpoint)
    assert not is_pretraining_directory(foreign_checkpoint)
    with pytest.raises(ValueError, match=r"users-model' exists and was not created by pretraining.*--model-path"):
        pretrain_reference(foreign_checkpoint, TINY_ENV, model_config=TINY, max_steps=1)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="was not created by pretraining"):
        pretrain_reference(empty, TINY_ENV, model_config=TINY, max_steps=1)
    with pytest.raises(ValueError, match="was not created by pretraining"):
        run(tmp_path / "report", foreign_checkpoint, ["no_kl"], [0], 32, tiny_hyperparams(), verbose=0)
    assert snapshot(foreign_checkpoint) == before and list(empty.iterdir()) == []
    # its own directory: created, marked, reused
    own = tmp_path / "cache" / "reference"
    settings = {"model_config": TINY, "max_steps": 2, "eval_every": 1, "target_accuracy": 1.0}
    metadata = pretrain_reference(own, TINY_ENV, **settings)
    assert is_pretraining_directory(own) and json.loads((own / METADATA_FILE).read_text()) == metadata
    assert metadata["steps"] == 2
    mark = snapshot(own)
    assert pretrain_reference(own, TINY_ENV, **settings) == metadata and snapshot(own) == mark


def test_model_path_starts_from_a_users_model_and_leaves_it_byte_for_byte_unchanged(foreign_checkpoint, tmp_path):
    before = snapshot(foreign_checkpoint)
    summary = run(
        tmp_path / "report", arms=["no_kl", "kl_loss"], seeds=[0], timesteps=32, hyperparams=tiny_hyperparams(), n_samples=3,
        model_path=foreign_checkpoint, device="cpu", verbose=0,
    )  # fmt: skip
    assert snapshot(foreign_checkpoint) == before
    # the model is the initial policy and the reference; its saved tokenizer is the environment's
    variant, entry = arm_hyperparams(tiny_hyperparams(), "kl_loss", foreign_checkpoint)
    assert variant == "clip_kl" and entry["kl_reference"] == entry["policy_kwargs"]["model_path"] == str(foreign_checkpoint)
    assert entry["env_kwargs"] == {**TINY_ENV, "tokenizer": str(foreign_checkpoint)}
    assert "tokenizer" not in arm_hyperparams(tiny_hyperparams(), "no_kl", tmp_path)[1]["env_kwargs"]
    assert summary["reference"] == str(foreign_checkpoint) and "no pretraining" in summary["reference_source"]
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    # the initial policy is the user's model: the first evaluation is the reference's accuracy, KL 0
    for result in results["runs"]:
        first = result["evaluations"][0]
        assert first["timesteps"] == 0 and first["kl_per_response"] == 0.0
        assert first["accuracy"] == summary["reference_eval_accuracy"] == summary["reference_held_out_accuracy"]
    assert not (Path.cwd() / "arithmetic-reference").exists() or is_pretraining_directory(Path.cwd() / "arithmetic-reference")


# --- devices, the report, the command line -------------------------------------------------------------------------


def test_report_on_an_explicit_device_with_every_arm(foreign_checkpoint, tmp_path):
    """`--arms all` runs every arm of the file; the models and their evaluation are on the device asked for (the CPU
    here; no GPU was available when this was written); the report has intervals, paired differences and samples."""
    hyperparams = tmp_path / "arms.yml"
    import yaml

    hyperparams.write_text(yaml.safe_dump(tiny_hyperparams(), sort_keys=False))
    assert arm_names(hyperparams) == ["no_kl", "kl_loss", "unclipped"]
    out = tmp_path / "report"
    main([
        "--out", str(out), "--model-path", str(foreign_checkpoint), "--arms", "all", "--seeds", "0", "1",
        "--timesteps", "32", "--hyperparams", str(hyperparams), "--jobs", "1", "--device", "cpu",
    ])  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert [(r["arm"], r["seed"]) for r in results["runs"]] == [
        (a, s) for a in ("no_kl", "kl_loss", "unclipped") for s in (0, 1)
    ]
    assert {r["device"] for r in results["runs"]} == {"cpu"} and results["summary"]["device"] == "cpu"
    held_out = ArithmeticEnv(**TINY_ENV, split="held_out")
    assert results["summary"]["n_held_out"] == results["summary"]["n_eval_prompts"] == len(held_out.prompts)
    report = (out / "report.md").read_text()
    for row in results["arms"]:
        mean, low, high = row["accuracy_interval"]
        assert f"| {row['arm']} | {row['variant']} | {mean:.3f} [{low:.3f}, {high:.3f}] |" in report
        if row["arm"] != "no_kl":
            difference = row["accuracy_difference"]
            assert row["paired_seeds"] == [0, 1]
            assert f"| {difference[0]:+.3f} [{difference[1]:+.3f}, {difference[2]:+.3f}] |" in report
    # sample generations: every arm and the reference answer the same prompts, marked right or wrong
    samples = results["samples"]
    assert len(samples) == 10 and all({"reference", "no_kl", "kl_loss", "unclipped"} <= set(s) for s in samples)
    sample = samples[0]
    verdict = "right" if sample["no_kl"] == sample["correct"] else "wrong"
    assert f"`{sample['prompt']}` | `{sample['correct']}` |" in report and verdict in report
    assert (out / "curves.png").stat().st_size > 10_000
    with pytest.raises(SystemExit):
        main(["--model-path", str(foreign_checkpoint), "--pretrain-only"])


def test_run_bad_input(foreign_checkpoint, tmp_path):
    kwargs = {"hyperparams": tiny_hyperparams(), "model_path": foreign_checkpoint, "verbose": 0, "arms": ["no_kl"]}
    with pytest.raises(
        ValueError, match=r"arms must be among \['no_kl', 'kl_loss', 'unclipped'\] or \['all'\], got \['nope'\]"
    ):
        run(tmp_path / "r", **{**kwargs, "arms": ["nope"]})
    with pytest.raises(ValueError, match="jobs must be an int >= 1, got 0"):
        run(tmp_path / "r", jobs=0, **kwargs)
    with pytest.raises(ValueError, match="model_path must be a directory written by save_pretrained"):
        run(tmp_path / "r", **{**kwargs, "model_path": tmp_path / "missing"})
