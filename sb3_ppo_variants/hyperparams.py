"""rl-zoo3 style hyperparameters: read a YAML entry and build a model of any variant from it.

An rl-zoo3 PPO entry mixes constructor arguments (``n_steps``, ``learning_rate: lin_0.001``, ...) with
settings of the environment and the run (``n_envs``, ``n_timesteps``, ``policy``, ``normalize``, ...).
:func:`split_hyperparams` separates them; :func:`make_model` builds the vectorised environment and the
model. Schedule strings (``lin_0.001``, ``exp_0.01_1e-4``, ...) are understood by every variant itself.

A file may hold, per environment, either the entry itself or per-variant entries::

    CartPole-v1:            # one entry for every variant
      n_envs: 8
      learning_rate: lin_0.001
    Pendulum-v1:
      default: {n_envs: 4}  # shared by every variant ...
      clip_kl: {kl_coef: 0.5}  # ... and overridden for one
"""

from __future__ import annotations

import copy
import importlib
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch as th
import yaml
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from sb3_ppo_variants.algorithm import VariantAlgorithm
from sb3_ppo_variants.schedules import ConstantSchedule, as_schedule

__all__ = [
    "ENV_SETTINGS",
    "load_hyperparams",
    "make_env",
    "make_model",
    "resolve_algorithm",
    "resolve_policy",
    "split_hyperparams",
]

#: Keys of an rl-zoo3 entry that describe the run or the environment, not the algorithm's constructor.
ENV_SETTINGS = ("n_envs", "n_timesteps", "policy", "normalize", "normalize_kwargs", "env_kwargs", "frame_stack")
_IGNORED = ("env_wrapper", "callback", "vec_env_wrapper", "monitor_kwargs", "eval_freq", "n_eval_episodes")


def load_hyperparams(source: str | Path | dict[str, Any], env_id: str, variant: str | None = None) -> dict[str, Any]:
    """The hyperparameters for ``env_id`` (and ``variant``) from an rl-zoo3 format YAML file or dict.

    :param source: path of a YAML file, or the already-loaded mapping
    :param env_id: the environment's key in the file
    :param variant: a ``VARIANTS`` key; used when the entry is split per variant
    :raises KeyError: when the file has no entry for ``env_id``
    """
    if isinstance(source, (str, Path)):
        with open(source) as file:
            data = yaml.safe_load(file) or {}
    else:
        data = source
    if not isinstance(data, dict):
        raise ValueError(f"hyperparameters must be a mapping of env id -> settings, got {type(data).__name__}")
    if env_id not in data:
        raise KeyError(
            f"no hyperparameters for env {env_id!r} in {source if not isinstance(source, dict) else 'the mapping'}; "
            f"it has {sorted(data)}"
        )
    entry = copy.deepcopy(data[env_id]) or {}
    if any(isinstance(v, dict) and k not in ("policy_kwargs", "normalize_kwargs", "env_kwargs") for k, v in entry.items()):
        merged = dict(entry.get("default", {}) or {})
        if variant is not None:
            merged.update(entry.get(variant, {}) or {})
        return merged
    return entry


def _eval_policy_kwargs(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        # rl-zoo3 writes policy_kwargs as a Python expression, e.g. "dict(ortho_init=False, activation_fn=nn.ReLU)"
        namespace = {"dict": dict, "nn": th.nn, "th": th, "torch": th, "list": list}
        result = eval(value, {"__builtins__": {}}, namespace)
        if not isinstance(result, dict):
            raise ValueError(f"policy_kwargs must evaluate to a dict, got {result!r}")
        return result
    raise TypeError(f"policy_kwargs must be a dict or a string such as 'dict(net_arch=[64, 64])', got {value!r}")


def split_hyperparams(hyperparams: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split an rl-zoo3 entry into (constructor kwargs, run/env settings).

    ``policy_kwargs`` strings are evaluated (with ``nn`` = ``torch.nn``); ``n_timesteps`` becomes an int.
    Keys rl-zoo3 uses for wrappers and callbacks are dropped.
    """
    model_kwargs: dict[str, Any] = {}
    settings: dict[str, Any] = {}
    for key, value in hyperparams.items():
        if key in ENV_SETTINGS:
            settings[key] = value
        elif key in _IGNORED:
            continue
        elif key == "policy_kwargs":
            model_kwargs[key] = _eval_policy_kwargs(value)
        else:
            model_kwargs[key] = value
    if "n_timesteps" in settings:
        settings["n_timesteps"] = int(float(settings["n_timesteps"]))
    return model_kwargs, settings


def resolve_algorithm(variant: str | type[BaseAlgorithm]) -> type[BaseAlgorithm]:
    """A ``VARIANTS`` key, a baseline name (``sb3_ppo``, ``trpo``, ``maskable_ppo``, ``recurrent_ppo``) or an
    algorithm class -> the class."""
    if isinstance(variant, type):
        return variant
    from sb3_ppo_variants import VARIANTS

    if variant in VARIANTS:
        return VARIANTS[variant]
    if variant == "sb3_ppo":
        from stable_baselines3 import PPO

        return PPO
    if variant == "trpo":
        from sb3_contrib import TRPO

        return TRPO
    if variant == "maskable_ppo":
        from sb3_contrib import MaskablePPO

        return MaskablePPO
    if variant == "recurrent_ppo":
        from sb3_contrib import RecurrentPPO

        return RecurrentPPO
    baselines = ["sb3_ppo", "trpo", "maskable_ppo", "recurrent_ppo"]
    raise ValueError(f"variant must be one of {[*VARIANTS, *baselines]}, got {variant!r}")


def resolve_policy(policy: str | type) -> str | type:
    """A policy as an entry may name it: an SB3 alias (``"MlpPolicy"``), kept as is, or an import path
    ``"package.module:ClassName"`` (e.g. ``"sb3_ppo_variants.arithmetic.policy:TransformerPolicy"``) -> the class."""
    if not isinstance(policy, str) or ":" not in policy:
        return policy
    module_name, _, name = policy.partition(":")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"policy {policy!r}: cannot import {name!r} from {module_name!r}: {error}") from None


def make_env(
    env_id: str, settings: dict[str, Any] | None = None, seed: int | None = None, n_envs: int | None = None
) -> VecEnv:
    """The vectorised environment an rl-zoo3 entry asks for (``n_envs``, ``env_kwargs``, ``normalize``).

    :param n_envs: overrides ``settings["n_envs"]`` (e.g. 1 for an evaluation env)
    """
    settings = settings or {}
    try:
        gym.spec(env_id)
    except gym.error.Error as error:
        raise ValueError(f"env {env_id!r} is not a registered gymnasium environment: {error}") from None
    env = make_vec_env(
        env_id, n_envs=n_envs or int(settings.get("n_envs", 1)), seed=seed, env_kwargs=settings.get("env_kwargs")
    )
    normalize = settings.get("normalize", False)
    if normalize:
        kwargs = dict(settings.get("normalize_kwargs") or {})
        if isinstance(normalize, str):  # rl-zoo3 also accepts "dict(norm_obs=True, norm_reward=False)"
            kwargs.update(_eval_policy_kwargs(normalize))
        env = VecNormalize(env, **kwargs)
    return env


def make_model(
    variant: str | type[BaseAlgorithm],
    env_id: str,
    hyperparams: dict[str, Any] | None = None,
    seed: int | None = None,
    **overrides: Any,
) -> BaseAlgorithm:
    """Build a model of ``variant`` on ``env_id`` from an rl-zoo3 entry (see :func:`load_hyperparams`).

    :param variant: a ``VARIANTS`` key, a baseline name (see :func:`resolve_algorithm`) or an algorithm class
    :param hyperparams: the entry (constructor arguments mixed with ``n_envs``, ``policy``, ``normalize``, ...);
        ``policy`` is an SB3 alias or an import path ``"module:Class"`` (see :func:`resolve_policy`)
    :param seed: seeds the model and the training environments
    :param overrides: constructor arguments that take precedence over the entry
    :return: the model; ``model.n_timesteps`` holds the entry's ``n_timesteps`` (or None)
    """
    algorithm = resolve_algorithm(variant)
    model_kwargs, settings = split_hyperparams(hyperparams or {})
    model_kwargs.update(overrides)
    if not issubclass(algorithm, VariantAlgorithm):
        # SB3's own algorithms take schedules as callables, not strings (rl-zoo3 converts them the same way).
        for key in ("learning_rate", "clip_range", "clip_range_vf", "ent_coef"):
            if isinstance(model_kwargs.get(key), str):
                schedule = as_schedule(model_kwargs[key], key)
                model_kwargs[key] = schedule.value if isinstance(schedule, ConstantSchedule) else schedule
    env = make_env(env_id, settings, seed=seed)
    # The host's first policy alias by default: "MlpPolicy" for PPO and MaskablePPO, "MlpLstmPolicy" for RecurrentPPO.
    policy = resolve_policy(settings.get("policy", next(iter(algorithm.policy_aliases), "MlpPolicy")))
    model = algorithm(policy, env, seed=seed, **model_kwargs)
    model.n_timesteps = settings.get("n_timesteps")  # type: ignore[attr-defined]
    return model
