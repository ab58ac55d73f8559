"""Search spaces of the tuner, in one place: which hyperparameters each variant tunes, and their ranges.

A space is a tuple of *terms*; a term suggests a few Optuna parameters. :func:`suggest_params` asks
the trial for the parameters of a variant's terms, and :func:`params_to_kwargs` turns those
parameters (of a live trial, or of a stored ``FrozenTrial.params``) into constructor arguments -- the
same arguments whether a trial is being run or its best parameters are written to a YAML file.

=================  =========================================================================
term               Optuna parameters (constructor argument)
=================  =========================================================================
clip               ``clip_range`` (epsilon), uniform in [0.05, 0.4]
fixed_kl           ``kl_coef`` (beta), log-uniform in [1e-3, 10]
adaptive_kl        ``kl_target`` (d_targ), log-uniform in [1e-3, 0.1]; ``kl_coef`` (initial beta),
                   log-uniform in [1e-2, 10]
entropy            ``ent_coef`` (the coefficient at the start of training), log-uniform in
                   [1e-5, 0.1]; ``ent_schedule`` in constant / linear / exponential / cosine
rl_zoo3 (--wide)   rl-zoo3's PPO ranges (2.9.2, read 2026-12-01): ``batch_size_pow``, ``n_steps_pow``,
                   ``one_minus_gamma``, ``one_minus_gae_lambda``, ``learning_rate``, ``n_epochs``,
                   ``max_grad_norm``, ``net_arch``, ``activation_fn`` (see :func:`rl_zoo3_term`)
=================  =========================================================================

The entropy schedule starts at ``ent_coef`` and ends at (progress 0, the end of the budget):
``constant`` ``ent_coef``; ``linear`` 0; ``cosine`` 0; ``exponential`` ``ent_coef / 100`` (a
geometric schedule cannot reach 0). It is given to the model as its schedule string (for example
``"lin_0.01_0.0"``), which is also what the best-parameters YAML holds.

``clip_kl`` tunes a fixed beta; to tune an adaptive ``clip_kl``, fix ``kl_target`` in the
``--hyperparams`` file (``kl_coef`` is then its initial beta). A setting fixed in that file is never
sampled.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

import optuna

from sb3_ppo_variants.schedules import CosineSchedule, ExponentialSchedule, LinearSchedule
from sb3_ppo_variants.studies.registry import plain_variant

__all__ = [
    "ENT_SCHEDULES",
    "EXPONENTIAL_END_RATIO",
    "SEARCH_SPACES",
    "WIDE_TERMS",
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

Term = Callable[[optuna.Trial, Collection[str]], dict[str, Any]]


def _suggest(fixed: Collection[str], name: str, suggest: Callable[[], Any]) -> dict[str, Any]:
    """``{name: suggest()}``, or nothing when ``name`` is fixed by the user's hyperparameters."""
    return {} if name in fixed else {name: suggest()}


def clip_term(trial: optuna.Trial, fixed: Collection[str] = ()) -> dict[str, Any]:
    """Epsilon of the clipped surrogate."""
    return _suggest(fixed, "clip_range", lambda: trial.suggest_float("clip_range", 0.05, 0.4))


def fixed_kl_term(trial: optuna.Trial, fixed: Collection[str] = ()) -> dict[str, Any]:
    """Beta of a fixed KL penalty."""
    return _suggest(fixed, "kl_coef", lambda: trial.suggest_float("kl_coef", 1e-3, 10.0, log=True))


def adaptive_kl_term(trial: optuna.Trial, fixed: Collection[str] = ()) -> dict[str, Any]:
    """KL target d_targ of the adaptive rule and the initial beta."""
    return {
        **_suggest(fixed, "kl_target", lambda: trial.suggest_float("kl_target", 1e-3, 0.1, log=True)),
        **_suggest(fixed, "kl_coef", lambda: trial.suggest_float("kl_coef", 1e-2, 10.0, log=True)),
    }


def entropy_term(trial: optuna.Trial, fixed: Collection[str] = ()) -> dict[str, Any]:
    """The entropy coefficient at the start of training and the shape of its schedule."""
    if "ent_coef" in fixed:
        return {}
    return {
        "ent_coef": trial.suggest_float("ent_coef", 1e-5, 0.1, log=True),
        "ent_schedule": trial.suggest_categorical("ent_schedule", ENT_SCHEDULES),
    }


#: rl-zoo3's ``net_arch`` choices (``convert_onpolicy_params``), as rl-zoo3 writes ``policy_kwargs`` in its YAML.
ZOO_NET_ARCHS = {
    "tiny": "dict(pi=[64], vf=[64])",
    "small": "dict(pi=[64, 64], vf=[64, 64])",
    "medium": "dict(pi=[256, 256], vf=[256, 256])",
}
#: rl-zoo3's ``activation_fn`` choices, as ``torch.nn`` names.
ZOO_ACTIVATIONS = {"tanh": "nn.Tanh", "relu": "nn.ReLU"}


def rl_zoo3_term(trial: optuna.Trial, fixed: Collection[str] = ()) -> dict[str, Any]:
    """rl-zoo3's PPO ranges for the settings the variant terms leave alone.

    Copied from ``rl_zoo3/hyperparams_opt.py::sample_ppo_params`` (rl_zoo3 2.9.2, read 2026-12-01), with its
    parameter names, so that a study's parameters read as rl-zoo3's: ``batch_size_pow`` in [2, 10] and
    ``n_steps_pow`` in [5, 12] (powers of 2), ``one_minus_gamma`` log in [1e-4, 0.03], ``one_minus_gae_lambda``
    log in [1e-4, 0.1], ``learning_rate`` log in [1e-5, 2e-3], ``n_epochs`` in {1, 5, 10, 20},
    ``max_grad_norm`` in [0.3, 2], ``net_arch`` in {tiny, small, medium}, ``activation_fn`` in {tanh, relu}.
    rl-zoo3's ``ent_coef`` and ``clip_range`` are the variant terms' (``entropy_term``, ``clip_term``).
    :func:`params_to_kwargs` turns them into constructor arguments.
    """
    params: dict[str, Any] = {}
    if "batch_size" not in fixed:
        params["batch_size_pow"] = trial.suggest_int("batch_size_pow", 2, 10)
    if "n_steps" not in fixed:
        params["n_steps_pow"] = trial.suggest_int("n_steps_pow", 5, 12)
    if "gamma" not in fixed:
        params["one_minus_gamma"] = trial.suggest_float("one_minus_gamma", 0.0001, 0.03, log=True)
    if "gae_lambda" not in fixed:
        params["one_minus_gae_lambda"] = trial.suggest_float("one_minus_gae_lambda", 0.0001, 0.1, log=True)
    params.update(_suggest(fixed, "learning_rate", lambda: trial.suggest_float("learning_rate", 1e-5, 0.002, log=True)))
    params.update(_suggest(fixed, "n_epochs", lambda: trial.suggest_categorical("n_epochs", [1, 5, 10, 20])))
    params.update(_suggest(fixed, "max_grad_norm", lambda: trial.suggest_float("max_grad_norm", 0.3, 2.0)))
    if "policy_kwargs" not in fixed:
        params["net_arch"] = trial.suggest_categorical("net_arch", list(ZOO_NET_ARCHS))
        params["activation_fn"] = trial.suggest_categorical("activation_fn", list(ZOO_ACTIVATIONS))
    return params


#: Variant -> the terms it tunes. One entry per key of ``sb3_ppo_variants.VARIANTS``.
SEARCH_SPACES: dict[str, tuple[Term, ...]] = {
    "clip": (clip_term, entropy_term),
    "kl": (fixed_kl_term, entropy_term),
    "adaptive_kl": (adaptive_kl_term, entropy_term),
    "clip_kl": (clip_term, fixed_kl_term, entropy_term),
}
#: Terms added by ``--wide``.
WIDE_TERMS: tuple[Term, ...] = (rl_zoo3_term,)


def _terms(variant: str, wide: bool) -> tuple[Term, ...]:
    """The terms of ``variant``; a variant hosted on sb3-contrib (``maskable_clip_kl``) has its plain variant's."""
    plain = plain_variant(variant)
    if plain not in SEARCH_SPACES:
        raise ValueError(f"variant must be one of {sorted(SEARCH_SPACES)} or one of them on a contrib host, got {variant!r}")
    return SEARCH_SPACES[plain] + (WIDE_TERMS if wide else ())


def suggest_params(trial: optuna.Trial, variant: str, wide: bool = False, fixed: Collection[str] = ()) -> dict[str, Any]:
    """Ask ``trial`` for the parameters of ``variant``'s search space.

    :param trial: an Optuna trial (``optuna.trial.FixedTrial`` works too)
    :param variant: a key of ``sb3_ppo_variants.VARIANTS``
    :param wide: add rl-zoo3's PPO ranges (learning rate, n_steps, batch size, gamma, ...)
    :param fixed: names fixed by the user's hyperparameters; they are not sampled
    :return: Optuna parameters; pass them to :func:`params_to_kwargs` for constructor arguments
    """
    params: dict[str, Any] = {}
    for term in _terms(variant, wide):
        params.update(term(trial, fixed))
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
