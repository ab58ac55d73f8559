"""Supervised pretraining of a deliberately imperfect reference model: next-token cross-entropy on the answers of
the training problems, stopped as soon as greedy accuracy on training prompts reaches ``target_accuracy``.

The model is saved with ``save_pretrained`` (with its tokenizer and a ``pretraining.json`` of the settings and
accuracies) and reused by the next run with the same settings. Pretraining writes only into a directory of its own:
one it creates (and marks with ``pretraining.json`` before anything else is written). It refuses any other existing
directory, so a user's checkpoint is never overwritten; to start from an existing model, pass it as the policy's
``model_path`` (``sb3pv-arithmetic --model-path DIR``) instead.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch as th

from sb3_ppo_variants.arithmetic.env import ArithmeticEnv, greedy_accuracy, prompt_subset
from sb3_ppo_variants.arithmetic.policy import TransformerPolicy
from sb3_ppo_variants.schedules import ConstantSchedule

__all__ = ["METADATA_FILE", "answer_batches", "is_pretraining_directory", "pretrain_reference"]

#: The file next to the saved model that records how it was trained and how well it does.
METADATA_FILE = "pretraining.json"
_CREATOR = "sb3_ppo_variants.arithmetic.pretrain_reference"


def _read_metadata(directory: Path) -> dict[str, Any] | None:
    try:
        metadata = json.loads((directory / METADATA_FILE).read_text())
    except (OSError, ValueError):
        return None
    return metadata if isinstance(metadata, dict) else None


def is_pretraining_directory(directory: str | os.PathLike[str]) -> bool:
    """Whether ``directory`` was created by :func:`pretrain_reference` (its ``pretraining.json`` says so; a file
    written before that mark existed is recognised by its ``settings`` and ``steps``)."""
    metadata = _read_metadata(Path(directory))
    if metadata is None:
        return False
    return metadata.get("created_by") == _CREATOR or ("settings" in metadata and "steps" in metadata)


def answer_batches(env: ArithmeticEnv) -> tuple[th.Tensor, th.Tensor]:
    """Every training problem as one row: the input ids (prompt, answer, end token, padding) and the labels, -100
    (ignored) everywhere but at the positions that predict an answer token or the end token.

    :return: two (n_problems, obs_length) long tensors
    """
    rows, labels = [], []
    for prompt, answer in zip(env.prompts, env.answers):
        prompt_ids = env.tokenizer.encode(prompt)
        target = [*env.tokenizer.encode(answer), env.eos_token_id]
        ids = env.observation(prompt, target)
        label = np.full(env.obs_length, -100, dtype=np.int64)
        # position t predicts token t + 1
        label[len(prompt_ids) - 1 : len(prompt_ids) - 1 + len(target)] = target
        rows.append(ids)
        labels.append(label)
    return th.as_tensor(np.stack(rows)), th.as_tensor(np.stack(labels))


def pretrain_reference(
    directory: str | os.PathLike[str],
    env_kwargs: dict[str, Any] | None = None,
    model_config: dict[str, Any] | None = None,
    target_accuracy: float = 0.4,
    max_steps: int = 5000,
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    eval_every: int = 25,
    n_eval_prompts: int = 500,
    seed: int = 0,
    reuse: bool = True,
    verbose: int = 0,
) -> dict[str, Any]:
    """Train a reference language model on the training problems of ``ArithmeticEnv(**env_kwargs)`` and save it.

    :param directory: where the model, its tokenizer and ``pretraining.json`` go: a directory this function creates,
        or one it created before (see :func:`is_pretraining_directory`); any other existing directory is refused
    :param env_kwargs: the environment's settings (the held-out prompts are never trained on)
    :param model_config: ``GPT2Config`` settings over ``DEFAULT_MODEL_CONFIG``
    :param target_accuracy: stop once greedy accuracy on ``n_eval_prompts`` training prompts reaches it, in (0, 1]
    :param max_steps: the most gradient steps
    :param eval_every: gradient steps between two accuracy checks
    :param reuse: return the saved model's metadata, without training, when ``directory`` holds a model trained with
        the same settings
    :return: the metadata: the settings, ``steps``, ``train_accuracy``, ``held_out_accuracy``, ``seconds``
    :raises ValueError: when ``directory`` exists and was not created by this function
    """
    if not 0 < target_accuracy <= 1:
        raise ValueError(f"target_accuracy must be in (0, 1], got {target_accuracy!r}")
    env_kwargs = dict(env_kwargs or {})
    settings = {
        "env_kwargs": env_kwargs,
        "model_config": model_config,
        "target_accuracy": target_accuracy,
        "max_steps": max_steps,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "eval_every": eval_every,
        "n_eval_prompts": n_eval_prompts,
        "seed": seed,
    }
    path = Path(directory)
    metadata_file = path / METADATA_FILE
    if path.exists():
        if not is_pretraining_directory(path):
            raise ValueError(
                f"directory {str(directory)!r} exists and was not created by pretraining (it has no {METADATA_FILE} of "
                "ours): pretraining writes only into a directory of its own, never over a user's files. Give a new "
                "directory, or start from the model in this one with model_path (sb3pv-arithmetic --model-path DIR)"
            )
        metadata = _read_metadata(path) or {}
        if reuse and "steps" in metadata and metadata.get("settings") == json.loads(json.dumps(settings)):
            return metadata
    else:
        path.mkdir(parents=True)
        metadata_file.write_text(json.dumps({"created_by": _CREATOR, "settings": settings}, indent=1))

    start = time.perf_counter()
    th.manual_seed(seed)
    env = ArithmeticEnv(**env_kwargs)
    held_out = ArithmeticEnv(**{**env_kwargs, "split": "held_out"})
    policy = TransformerPolicy(
        env.observation_space, env.action_space, ConstantSchedule(learning_rate), model_config=model_config
    )
    model = policy.language_model
    optimizer = th.optim.Adam(model.parameters(), lr=learning_rate)
    inputs, labels = answer_batches(env)
    rng = np.random.default_rng(seed)
    eval_env = prompt_subset(env, n_eval_prompts, seed)
    train_accuracy, step = 0.0, 0
    while step < max_steps:
        model.train()
        batch = th.as_tensor(rng.integers(len(inputs), size=batch_size))
        ids = inputs[batch]
        logits = model(input_ids=ids, attention_mask=(ids != policy.features_extractor.pad_token_id).long()).logits
        loss = th.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[batch].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        if step % eval_every == 0:
            policy.set_training_mode(False)
            train_accuracy = greedy_accuracy(policy.predict, eval_env)
            if verbose:
                print(f"pretraining step {step}: loss {loss.item():.3f}, greedy accuracy (training) {train_accuracy:.3f}")
            if train_accuracy >= target_accuracy:
                break
    policy.set_training_mode(False)
    metadata = {
        "created_by": _CREATOR,
        "settings": settings,
        "steps": step,
        "train_accuracy": train_accuracy,
        "held_out_accuracy": greedy_accuracy(policy.predict, held_out),
        "seconds": time.perf_counter() - start,
    }
    policy.save_pretrained(path, env.tokenizer)
    metadata_file.write_text(json.dumps(metadata, indent=1))
    return metadata
