"""Search spaces of the tuner, in one place: which hyperparameters each variant tunes, and their ranges.

A space is a tuple of *terms* (:data:`SEARCH_SPACES`); a term suggests a few Optuna parameters (:data:`TERMS`, with
their ranges; the documentation's tuning page has them as a table). :func:`suggest_params` asks the trial for the
parameters of a variant's terms, and :func:`params_to_kwargs` turns those parameters (of a live trial, or of a
stored ``FrozenTrial.params``) into constructor arguments -- the same arguments whether a trial is being run or its
best parameters are written to a YAML file.

The entropy term samples ``ent_coef`` (the coefficient at the start of training) and the shape of its schedule,
which ends at (progress 0, the end of the budget): ``constant`` ``ent_coef``; ``linear`` 0; ``cosine`` 0;
``exponential`` ``ent_coef / 100`` (a geometric schedule cannot reach 0). It is given to the model as its schedule
string (for example ``"lin_0.01_0.0"``), which is also what the best-parameters YAML holds.

``clip_kl`` tunes a fixed beta; to tune an adaptive ``clip_kl``, fix ``kl_target`` in the ``--hyperparams`` file
(``kl_coef`` is then its initial beta). A setting fixed in that file is never sampled.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import optuna

from sb3_ppo_variants.schedules import CosineSchedule, ExponentialSchedule, LinearSchedule
from sb3_ppo_variants.studies.registry import plain_variant

__all__ = [
    "ENT_SCHEDULES",
    "EXPONENTIAL_END_RATIO",
    "SEARCH_SPACES",
    "TERMS",
    "ZOO_ACTIVATIONS",
    "ZOO_NET_ARCHS",
    "check_combination",
    "entropy_coefficient",
    "params_to_kwargs",
    "suggest_params",
]

#: The shapes of the entropy-coefficient schedule the tuner chooses from.
ENT_SCHEDULES = ("constant", "linear", "exponential", "cosine")
#: An exponential entropy schedule ends at ``ent_coef / EXPONENTIAL_END_RATIO``.
EXPONENTIAL_END_RATIO = 100.0
#: rl-zoo3's ``net_arch`` choices (``convert_onpolicy_params``), as rl-zoo3 writes ``policy_kwargs`` in its YAML.
ZOO_NET_ARCHS = {
    "tiny": "dict(pi=[64], vf=[64])",
    "small": "dict(pi=[64, 64], vf=[64, 64])",
    "medium": "dict(pi=[256, 256], vf=[256, 256])",
}
#: rl-zoo3's ``activation_fn`` choices, as ``torch.nn`` names.
ZOO_ACTIVATIONS = {"tanh": "nn.Tanh", "relu": "nn.ReLU"}

Suggest = Callable[[optuna.Trial, str], Any]


def _float(low: float, high: float, log: bool = False) -> Suggest:
    return lambda trial, name: trial.suggest_float(name, low, high, log=log)


def _int(low: int, high: int) -> Suggest:
    return lambda trial, name: trial.suggest_int(name, low, high)


def _choice(choices: Sequence[Any]) -> Suggest:
    return lambda trial, name: trial.suggest_categorical(name, choices)


#: Term -> Optuna parameter -> (the setting that, fixed by the user's hyperparameters, is not sampled; its range),
#: suggested in this order. ``rl_zoo3`` (``--wide``) is rl-zoo3's PPO sampler (``rl_zoo3/hyperparams_opt.py::
#: sample_ppo_params``, rl_zoo3 2.9.2, read 2026-12-01) with its parameter names, less its ``ent_coef`` and
#: ``clip_range``, which are the variant terms'.
TERMS: dict[str, dict[str, tuple[str, Suggest]]] = {
    "clip": {"clip_range": ("clip_range", _float(0.05, 0.4))},
    "fixed_kl": {"kl_coef": ("kl_coef", _float(1e-3, 10.0, log=True))},
    "adaptive_kl": {
        "kl_target": ("kl_target", _float(1e-3, 0.1, log=True)),  # d_targ
        "kl_coef": ("kl_coef", _float(1e-2, 10.0, log=True)),  # the initial beta
    },
    "entropy": {"ent_coef": ("ent_coef", _float(1e-5, 0.1, log=True)), "ent_schedule": ("ent_coef", _choice(ENT_SCHEDULES))},
    "rl_zoo3": {
        "batch_size_pow": ("batch_size", _int(2, 10)),
        "n_steps_pow": ("n_steps", _int(5, 12)),
        "one_minus_gamma": ("gamma", _float(0.0001, 0.03, log=True)),
        "one_minus_gae_lambda": ("gae_lambda", _float(0.0001, 0.1, log=True)),
        "learning_rate": ("learning_rate", _float(1e-5, 0.002, log=True)),
        "n_epochs": ("n_epochs", _choice([1, 5, 10, 20])),
        "max_grad_norm": ("max_grad_norm", _float(0.3, 2.0)),
        "net_arch": ("policy_kwargs", _choice(list(ZOO_NET_ARCHS))),
        "activation_fn": ("policy_kwargs", _choice(list(ZOO_ACTIVATIONS))),
    },
}
#: Variant -> the terms it tunes. One entry per plain variant of ``sb3_ppo_variants.VARIANTS``.
SEARCH_SPACES = {
    "clip": ("clip", "entropy"),
    "kl": ("fixed_kl", "entropy"),
    "adaptive_kl": ("adaptive_kl", "entropy"),
    "clip_kl": ("clip", "fixed_kl", "entropy"),
}


def suggest_params(trial: optuna.Trial, variant: str, wide: bool = False, fixed: Collection[str] = ()) -> dict[str, Any]:
    """Ask ``trial`` for the parameters of ``variant``'s search space.

    :param trial: an Optuna trial (``optuna.trial.FixedTrial`` works too)
    :param variant: a key of ``sb3_ppo_variants.VARIANTS``; a variant hosted on sb3-contrib (``maskable_clip_kl``)
        has its plain variant's space
    :param wide: add rl-zoo3's PPO ranges (learning rate, n_steps, batch size, gamma, ...)
    :param fixed: names fixed by the user's hyperparameters; they are not sampled
    :return: Optuna parameters; pass them to :func:`params_to_kwargs` for constructor arguments
    """
    plain = plain_variant(variant)
    if plain not in SEARCH_SPACES:
        raise ValueError(f"variant must be one of {sorted(SEARCH_SPACES)} or one of them on a contrib host, got {variant!r}")
    params: dict[str, Any] = {}
    for term in SEARCH_SPACES[plain] + (("rl_zoo3",) if wide else ()):
        for name, (setting, suggest) in TERMS[term].items():
            if setting not in fixed:
                params[name] = suggest(trial, name)
    return params


def entropy_coefficient(start: float, shape: str) -> float | str:
    """The ``ent_coef`` argument for a schedule of ``shape`` starting at ``start`` (see the module docstring).

    :return: a float for ``constant``, else the schedule's string form (e.g. ``"lin_0.01_0.0"``)
    """
    if shape == "constant":
        return float(start)
    if shape == "linear":
        return repr(LinearSchedule(start, 0.0))
    if shape == "exponential":
        return repr(ExponentialSchedule(start, start / EXPONENTIAL_END_RATIO))
    if shape == "cosine":
        return repr(CosineSchedule(start, 0.0))
    raise ValueError(f"ent_schedule must be one of {ENT_SCHEDULES}, got {shape!r}")


def params_to_kwargs(params: Mapping[str, Any]) -> dict[str, Any]:
    """Optuna parameters (of a live trial, or ``FrozenTrial.params`` alone) -> constructor arguments.

    ``ent_coef`` + ``ent_schedule`` -> one ``ent_coef`` (a schedule string); rl-zoo3's ``*_pow`` ->
    ``2 ** pow``; ``one_minus_gamma`` / ``one_minus_gae_lambda`` -> ``gamma`` / ``gae_lambda``;
    ``net_arch`` + ``activation_fn`` -> ``policy_kwargs`` in rl-zoo3's string form (what its YAML files hold
    and :func:`sb3_ppo_variants.hyperparams.parse_policy_kwargs` reads), so the result can be written to YAML.
    """
    kwargs = dict(params)
    if "ent_schedule" in kwargs:
        kwargs["ent_coef"] = entropy_coefficient(kwargs["ent_coef"], kwargs.pop("ent_schedule"))
    for name in ("batch_size", "n_steps"):
        if f"{name}_pow" in kwargs:
            kwargs[name] = 2 ** int(kwargs.pop(f"{name}_pow"))
    for name in ("gamma", "gae_lambda"):
        if f"one_minus_{name}" in kwargs:
            kwargs[name] = 1.0 - kwargs.pop(f"one_minus_{name}")
    if "net_arch" in kwargs or "activation_fn" in kwargs:
        net_arch = ZOO_NET_ARCHS[kwargs.pop("net_arch", "small")]
        activation = ZOO_ACTIVATIONS[kwargs.pop("activation_fn", "tanh")]
        kwargs["policy_kwargs"] = f"dict(net_arch={net_arch}, activation_fn={activation})"
    return kwargs


def check_combination(hyperparams: Mapping[str, Any], timesteps: int | None = None) -> str | None:
    """Why an rl-zoo3 entry (fixed settings plus sampled ones) cannot be trained, or None when it can.

    - A minibatch larger than a rollout (``batch_size > n_steps * n_envs``): SB3 would train on the
      whole rollout as one minibatch, so such batch sizes would all be the same setting.
    - A rollout larger than the budget (``n_steps * n_envs > timesteps``): training would overshoot
      the budget, and schedules would be evaluated at a negative remaining progress (a linear
      ``ent_coef`` would turn negative).

    :param timesteps: the training budget, when known
    """
    n_steps = int(hyperparams.get("n_steps", 2048))
    n_envs = int(hyperparams.get("n_envs", 1))
    batch_size = int(hyperparams.get("batch_size", 64))
    rollout = f"n_steps * n_envs = {n_steps} * {n_envs} = {n_steps * n_envs}"
    if batch_size > n_steps * n_envs:
        return f"batch_size={batch_size} is larger than a rollout, {rollout}; allowed: batch_size <= n_steps * n_envs"
    if timesteps is not None and n_steps * n_envs > timesteps:
        return f"a rollout, {rollout}, is larger than the budget of {timesteps} timesteps; allowed: <= the budget"
    return None
