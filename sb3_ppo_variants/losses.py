"""The terms of the PPO objective as small pure functions of tensors.

    L(theta) = - S(r, A) + c_vf * V_loss - c_ent * H[pi] + beta * D(pi_old || pi)

Each function returns the term as it enters the loss to *minimise* (surrogates are negated), averaged
over the minibatch: the last axis. Inputs may carry leading dimensions, such as the member dimension of a
population, ``(K, batch)``, with coefficients of shape ``(K, 1)`` (one per member); the result is then ``(K,)``.
They are written in the same operation order as ``stable_baselines3.PPO.train``
so that a clipped variant reproduces SB3's numbers bit for bit.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch as th
from torch.nn import functional as F

__all__ = [
    "SURROGATES",
    "SurrogateFn",
    "clip_fraction",
    "clipped_surrogate_loss",
    "dual_clip_surrogate_loss",
    "entropy_loss",
    "get_surrogate",
    "register_surrogate",
    "spo_surrogate_loss",
    "surrogate_options",
    "unclipped_surrogate_loss",
    "value_loss",
]

#: A surrogate term: ``fn(ratio, advantages, clip_range, **options) -> Tensor``, the term as it enters the loss to
#: minimise (so the negated objective), averaged over the last axis. ``ratio`` and ``advantages`` are ``(batch,)`` or
#: ``(K, batch)`` (a population's member axis in front); ``clip_range`` is a float or ``(K, 1)``; the result is a
#: scalar or ``(K,)``. ``options`` are the term's own settings, passed by keyword to the terms whose signature names
#: them (the built-in dual clip's ``dual_clip``): see :func:`surrogate_options`.
SurrogateFn = Callable[..., th.Tensor]


def clipped_surrogate_loss(ratio: th.Tensor, advantages: th.Tensor, clip_range: float | th.Tensor) -> th.Tensor:
    """-E[min(r A, clip(r, 1 - eps, 1 + eps) A)] (Schulman et al. 2017, eq. 7).

    :param ratio: (batch,) pi(a|s) / pi_old(a|s)
    :param advantages: (batch,)
    :param clip_range: eps > 0 (a float, or (K, 1) per member)
    :return: scalar, or (K,) for (K, batch) inputs
    """
    policy_loss_1 = advantages * ratio
    # torch's stubs take a float or a tensor as the bounds, not the union
    policy_loss_2 = advantages * th.clamp(ratio, 1 - clip_range, 1 + clip_range)  # type: ignore[arg-type]
    return -th.min(policy_loss_1, policy_loss_2).mean(dim=-1)


def dual_clip_surrogate_loss(
    ratio: th.Tensor, advantages: th.Tensor, clip_range: float | th.Tensor, dual_clip: float | th.Tensor = 3.0
) -> th.Tensor:
    """Dual-clip PPO (Ye et al. 2020, https://arxiv.org/abs/1912.09729): the clipped objective, further bounded
    below by c * A where A < 0, so that a huge ratio on a negative advantage cannot dominate the update.

    -E[ max(min(r A, clip(r, 1 - eps, 1 + eps) A), c A) if A < 0 else min(r A, clip(r, 1 - eps, 1 + eps) A) ]

    :param dual_clip: c > 1
    :return: scalar, or (K,) for (K, batch) inputs
    """
    bounds = 1 - clip_range, 1 + clip_range
    clipped = th.min(advantages * ratio, advantages * th.clamp(ratio, *bounds))  # type: ignore[arg-type]
    bounded = th.where(advantages < 0, th.max(clipped, dual_clip * advantages), clipped)
    return -bounded.mean(dim=-1)


def unclipped_surrogate_loss(
    ratio: th.Tensor, advantages: th.Tensor, clip_range: float | th.Tensor | None = None
) -> th.Tensor:
    """-E[r A], the importance-sampled policy-gradient surrogate (the paper's L^CPI).

    :param clip_range: unused (the surrogate terms share one signature)
    :return: scalar, or (K,) for (K, batch) inputs
    """
    return -(advantages * ratio).mean(dim=-1)


def spo_surrogate_loss(ratio: th.Tensor, advantages: th.Tensor, clip_range: float | th.Tensor) -> th.Tensor:
    """Simple Policy Optimization (Xie et al. 2024, https://arxiv.org/abs/2401.16025): the ratio is kept near 1 by
    a quadratic penalty instead of a clip, so the gradient never vanishes outside the trust region.

    -E[r A - |A| / (2 eps) * (r - 1)^2]

    :param ratio: (batch,) pi(a|s) / pi_old(a|s)
    :param advantages: (batch,)
    :param clip_range: eps > 0 (a float, or (K, 1) per member)
    :return: scalar, or (K,) for (K, batch) inputs
    """
    return -(advantages * ratio - advantages.abs() / (2 * clip_range) * (ratio - 1) ** 2).mean(dim=-1)


def clip_fraction(ratio: th.Tensor, clip_range: float | th.Tensor) -> th.Tensor:
    """Fraction of samples with |r - 1| > eps (a diagnostic, logged as ``train/clip_fraction``)."""
    return th.mean((th.abs(ratio - 1) > clip_range).float(), dim=-1)


def value_loss(
    values: th.Tensor, old_values: th.Tensor, returns: th.Tensor, clip_range_vf: float | th.Tensor | None = None
) -> th.Tensor:
    """MSE between the TD(lambda) returns and the value prediction, optionally clipped around the old value.

    :param values: (batch,) current predictions
    :param old_values: (batch,) predictions at collection time
    :param returns: (batch,) targets
    :param clip_range_vf: None for no clipping, else the largest allowed change of the prediction
    :return: scalar, or (K,) for (K, batch) inputs
    """
    if clip_range_vf is None:
        values_pred = values
    else:
        values_pred = old_values + th.clamp(values - old_values, -clip_range_vf, clip_range_vf)  # type: ignore[arg-type]
    return F.mse_loss(returns, values_pred, reduction="none").mean(dim=-1)


def entropy_loss(entropy: th.Tensor | None, log_prob: th.Tensor) -> th.Tensor:
    """-E[H[pi]]; when the distribution has no analytic entropy, E[-log pi(a|s)] estimates it.

    :return: scalar, or (K,) for (K, batch) inputs
    """
    if entropy is None:
        return -th.mean(-log_prob, dim=-1)
    return -th.mean(entropy, dim=-1)


#: The registered surrogate terms, by name: the built-ins are registered exactly as a user's term is.
SURROGATES: dict[str, SurrogateFn] = {
    "clipped": clipped_surrogate_loss,
    "unclipped": unclipped_surrogate_loss,
    "dual_clip": dual_clip_surrogate_loss,
    "spo": spo_surrogate_loss,
}


def register_surrogate(name: str, fn: SurrogateFn, *, overwrite: bool = False) -> SurrogateFn:
    """Register a surrogate term under ``name``, so that ``surrogate=name`` selects it in every algorithm class
    and as a population member setting. Returns ``fn`` (so it can be used as a decorator through ``functools.partial``).

    :param name: the name ``surrogate=`` will take
    :param fn: ``fn(ratio, advantages, clip_range, **options) -> Tensor`` (see :data:`SurrogateFn`)
    :param overwrite: replace a term already registered under ``name`` (else that is a ``ValueError``)
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"register_surrogate: name must be a non-empty string, got {name!r}")
    if not callable(fn):
        raise TypeError(f"register_surrogate: fn must be callable (ratio, advantages, clip_range) -> Tensor, got {fn!r}")
    if name in SURROGATES and not overwrite and SURROGATES[name] is not fn:
        raise ValueError(f"register_surrogate: a surrogate named {name!r} is already registered; pass overwrite=True")
    SURROGATES[name] = fn
    return fn


def get_surrogate(surrogate: str | SurrogateFn) -> SurrogateFn:
    """The term a ``surrogate=`` setting names: a registered name, or a function used as it is."""
    if callable(surrogate):
        return surrogate
    if isinstance(surrogate, str) and surrogate in SURROGATES:
        return SURROGATES[surrogate]
    raise ValueError(
        f"surrogate must be one of the registered names {sorted(SURROGATES)} or a function "
        f"(ratio, advantages, clip_range) -> Tensor, got {surrogate!r} (register one with losses.register_surrogate)"
    )


def _option_names(fn: SurrogateFn) -> frozenset[str]:
    try:
        parameters = list(inspect.signature(fn).parameters.values())[3:]
    except (TypeError, ValueError):  # a callable without a signature takes none
        return frozenset()
    return frozenset(p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


#: inspect.signature took ~0.1 ms, asked once per minibatch (and per member chunk in a population)
_cached_option_names = functools.lru_cache(maxsize=64)(_option_names)


def surrogate_options(fn: SurrogateFn, settings: dict[str, Any]) -> dict[str, Any]:
    """The settings a term takes: those of ``settings`` that name a parameter of ``fn`` after the first three
    (the built-in dual clip takes ``dual_clip``; a user's term may take none)."""
    try:
        names = _cached_option_names(fn)
    except TypeError:  # an unhashable callable
        names = _option_names(fn)
    return {name: value for name, value in settings.items() if name in names}
