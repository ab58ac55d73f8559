"""KL(pi_old || pi) per state: exact (analytic) for every SB3 action distribution, and Schulman's sampled estimators.

The old distribution is described by a flat parameter vector per state, stored in the rollout buffer at
collection time (see :func:`distribution_params`); the new one is SB3's ``Distribution`` object of the
current forward pass. Reference for the estimators: J. Schulman, "Approximating KL Divergence",
http://joschu.net/blog/kl-approx.html
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch as th
from gymnasium import spaces
from sb3_contrib.common.maskable.distributions import MaskableCategoricalDistribution, MaskableMultiCategoricalDistribution
from stable_baselines3.common.distributions import (
    BernoulliDistribution,
    CategoricalDistribution,
    DiagGaussianDistribution,
    Distribution,
    MultiCategoricalDistribution,
    StateDependentNoiseDistribution,
)

__all__ = [
    "KL_DIRECTIONS",
    "KL_ESTIMATORS",
    "SAMPLED_KL_ESTIMATORS",
    "bernoulli_kl",
    "categorical_kl",
    "diag_gaussian_kl",
    "distribution_param_dim",
    "distribution_params",
    "exact_kl",
    "masked_categorical_kl",
    "reference_kl",
    "register_kl_estimator",
    "sampled_kl",
]

#: ``"forward"``: KL(pi_old || pi), the PPO paper's penalty; ``"reverse"``: KL(pi || pi_old).
KL_DIRECTIONS = ("forward", "reverse")

#: A sampled KL estimator: ``fn(log_ratio) -> Tensor`` of the same shape, with ``log_ratio = log pi(a|s) - log
#: pi_old(a|s)`` at actions drawn from pi_old (the rollout's), any leading dimensions (a population's member axis).
KLEstimatorFn = Callable[[th.Tensor], th.Tensor]

#: The registered sampled estimators, per direction, by name (Schulman, "Approximating KL Divergence").
#: With r = exp(log_ratio) and samples from pi_old:
#: forward KL(pi_old || pi) = E[-log r]: k1 = -log r, k2 = (log r)^2 / 2, k3 = (r - 1) - log r;
#: reverse KL(pi || pi_old) = E[r log r]: k1 = r log r, k2 = r (log r)^2 / 2, k3 = r log r - (r - 1).
#: k1 and k3 are unbiased in both directions (E[r - 1] = 0 under pi_old), k3 is >= 0, k2 is biased with low variance.
#: Forward also has TRL's ``"abs"``, |log r| (biased; TRL offers it for the KL to a reference in the reward).
SAMPLED_KL_ESTIMATORS: dict[str, dict[str, KLEstimatorFn]] = {
    "forward": {
        "k1": lambda log_ratio: -log_ratio,
        "k2": lambda log_ratio: 0.5 * log_ratio**2,
        "k3": lambda log_ratio: th.expm1(log_ratio) - log_ratio,
        # TRL's "abs" penalty: |log r|, biased, >= 0 (offered for the KL to a reference in the reward)
        "abs": lambda log_ratio: log_ratio.abs(),
    },
    "reverse": {
        "k1": lambda log_ratio: th.exp(log_ratio) * log_ratio,
        "k2": lambda log_ratio: 0.5 * th.exp(log_ratio) * log_ratio**2,
        "k3": lambda log_ratio: th.exp(log_ratio) * log_ratio - th.expm1(log_ratio),
    },
}


class _EstimatorNames:
    """``"exact"`` and the names of the registered sampled estimators (of either direction), live: a name
    registered later is in it. Supports ``in``, iteration and ``repr`` like the tuple it replaces."""

    def _names(self) -> tuple[str, ...]:
        return ("exact", *dict.fromkeys(n for table in SAMPLED_KL_ESTIMATORS.values() for n in table))

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._names())

    def __getitem__(self, index):  # type: ignore[no-untyped-def]
        return self._names()[index]

    def __len__(self) -> int:
        return len(self._names())

    def __repr__(self) -> str:
        return repr(self._names())


#: The names ``kl_estimator=`` takes: ``"exact"`` and every registered sampled estimator.
KL_ESTIMATORS = _EstimatorNames()


def register_kl_estimator(
    name: str, fn: KLEstimatorFn, direction: str = "forward", *, overwrite: bool = False
) -> KLEstimatorFn:
    """Register a sampled KL estimator, so that ``kl_estimator=name`` selects it (with ``kl_direction=direction``)
    in every algorithm class and as a population member setting.

    :param name: the name ``kl_estimator=`` will take (not ``"exact"``)
    :param fn: ``fn(log_ratio) -> Tensor``, the per-sample estimate (see :data:`KLEstimatorFn`)
    :param direction: ``"forward"`` (an estimate of KL(pi_old || pi)) or ``"reverse"`` (of KL(pi || pi_old))
    :param overwrite: replace an estimator already registered under ``name`` for that direction
    """
    if not isinstance(name, str) or not name or name == "exact":
        raise ValueError(f"register_kl_estimator: name must be a non-empty string other than 'exact', got {name!r}")
    if direction not in KL_DIRECTIONS:
        raise ValueError(f"register_kl_estimator: direction must be one of {KL_DIRECTIONS}, got {direction!r}")
    if not callable(fn):
        raise TypeError(f"register_kl_estimator: fn must be callable log_ratio -> Tensor, got {fn!r}")
    table = SAMPLED_KL_ESTIMATORS[direction]
    if name in table and not overwrite and table[name] is not fn:
        raise ValueError(
            f"register_kl_estimator: {name!r} is already registered for direction {direction!r}; pass overwrite=True"
        )
    table[name] = fn
    return fn


def categorical_kl(old_logits: th.Tensor, new_logits: th.Tensor) -> th.Tensor:
    """KL(p || q) = sum_a p(a) (log p(a) - log q(a)) for categorical distributions given by logits.

    Half-precision logits are computed in float32, as in :func:`masked_categorical_kl` (the KL is a difference of
    two log-probabilities, which bfloat16 keeps to about two digits).

    :param old_logits: (batch, n) unnormalised log-probabilities of p
    :param new_logits: (batch, n) unnormalised log-probabilities of q
    :return: (batch,), float32 for half-precision logits
    """
    old_logits, new_logits = _upcast_half(old_logits, new_logits)
    old_log_p = th.log_softmax(old_logits, dim=-1)
    new_log_p = th.log_softmax(new_logits, dim=-1)
    return (old_log_p.exp() * (old_log_p - new_log_p)).sum(dim=-1)


def _upcast_half(*tensors: th.Tensor) -> tuple[th.Tensor, ...]:
    """The tensors in float32 where any is half precision (float16, bfloat16); unchanged otherwise."""
    if any(t.dtype in (th.float16, th.bfloat16) for t in tensors):
        return tuple(t.float() for t in tensors)
    return tensors


def masked_categorical_kl(old_logits: th.Tensor, new_logits: th.Tensor, masks: th.Tensor | None) -> th.Tensor:
    """KL(p || q) between masked categoricals: the sum over the allowed actions only.

    sb3-contrib's ``MaskableCategorical`` sets a masked logit to -1e8, which is -inf in float16 (and then
    0 * (-inf - -inf) = NaN); a masked action has probability 0 under both distributions and adds 0, exactly
    as the masked entropy treats it. So the gradient is 0 on masked entries and finite elsewhere.

    Half-precision logits (float16, bfloat16, e.g. under autocast) are computed in float32: in bfloat16 the difference
    of two log-probabilities keeps about two digits, and the KL is such a difference (14% off in one probe).

    :param old_logits: (batch, n) logits of p, masked as at collection time
    :param new_logits: (batch, n) logits of q, under the same masks
    :param masks: (batch, n) bool, True where the action is allowed; None: no masking (plain categorical KL)
    :return: (batch,), float32 for half-precision logits
    """
    if masks is None:
        return categorical_kl(old_logits, new_logits)
    old_logits, new_logits = _upcast_half(old_logits, new_logits)
    old_log_p = th.log_softmax(old_logits, dim=-1)
    new_log_p = th.log_softmax(new_logits, dim=-1)
    terms = old_log_p.exp() * (old_log_p - new_log_p)
    return th.where(masks, terms, th.zeros_like(terms)).sum(dim=-1)


def bernoulli_kl(old_logits: th.Tensor, new_logits: th.Tensor) -> th.Tensor:
    """KL between independent Bernoulli vectors given by logits, summed over the last dimension.

    KL = p (log p - log q) + (1 - p) (log(1 - p) - log(1 - q)), with log p = logsigmoid(logit).

    :param old_logits: (batch, n)
    :param new_logits: (batch, n)
    :return: (batch,)
    """
    old_p = th.sigmoid(old_logits)
    log_p, log_not_p = th.nn.functional.logsigmoid(old_logits), th.nn.functional.logsigmoid(-old_logits)
    log_q, log_not_q = th.nn.functional.logsigmoid(new_logits), th.nn.functional.logsigmoid(-new_logits)
    return (old_p * (log_p - log_q) + (1.0 - old_p) * (log_not_p - log_not_q)).sum(dim=-1)


def diag_gaussian_kl(old_mean: th.Tensor, old_std: th.Tensor, new_mean: th.Tensor, new_std: th.Tensor) -> th.Tensor:
    """KL between diagonal Gaussians, summed over action dimensions.

    KL = sum_i log(s1_i / s0_i) + (s0_i^2 + (m0_i - m1_i)^2) / (2 s1_i^2) - 1/2

    The log term is ``2 (log s0 - log s1)``, not ``log(s0^2 / s1^2)``: the squared ratio under- or overflows (and its
    log loses the digits) long before the difference of logs does.

    :param old_mean: (batch, n)
    :param old_std: (batch, n), > 0
    :param new_mean: (batch, n)
    :param new_std: (batch, n), > 0
    :return: (batch,)
    """
    var_ratio = (old_std / new_std) ** 2
    mean_term = ((old_mean - new_mean) / new_std) ** 2
    log_var_ratio = 2.0 * (th.log(old_std) - th.log(new_std))
    return 0.5 * (var_ratio + mean_term - 1.0 - log_var_ratio).sum(dim=-1)


def _gaussian(dist: Distribution) -> th.distributions.Normal:
    return dist.distribution  # type: ignore[return-value]


def distribution_params(dist: Distribution) -> th.Tensor:
    """A flat (batch, d) description of the distribution of the last forward pass.

    Categorical, MultiCategorical, Bernoulli: the logits. Diagonal Gaussian (incl. gSDE, whose per-state
    standard deviation depends on the features): the mean then the standard deviation. sb3-contrib's masked
    distributions: the logits after masking (a masked MultiBinary is a categorical over 2 per dimension, 2 n logits).
    """
    if isinstance(dist, (CategoricalDistribution, MaskableCategoricalDistribution)):
        return dist.distribution.logits
    if isinstance(dist, MaskableMultiCategoricalDistribution):
        return th.cat([d.logits for d in dist.distributions], dim=1)
    if isinstance(dist, MultiCategoricalDistribution):
        return th.cat([d.logits for d in dist.distribution], dim=1)
    if isinstance(dist, BernoulliDistribution):
        return dist.distribution.logits
    if isinstance(dist, (DiagGaussianDistribution, StateDependentNoiseDistribution)):
        normal = _gaussian(dist)
        return th.cat([normal.loc, normal.scale], dim=1)
    raise TypeError(f"No exact KL for action distribution {type(dist).__name__}")


def distribution_param_dim(action_space: spaces.Space) -> int:
    """Width of :func:`distribution_params` for an action space."""
    if isinstance(action_space, spaces.Discrete):
        return int(action_space.n)
    if isinstance(action_space, spaces.MultiDiscrete):
        return int(np.sum(action_space.nvec))
    if isinstance(action_space, spaces.MultiBinary):
        return int(np.prod(action_space.shape))
    if isinstance(action_space, spaces.Box):
        return 2 * int(np.prod(action_space.shape))
    raise TypeError(f"Unsupported action space {action_space}")


def exact_kl(old_params: th.Tensor, dist: Distribution, direction: str = "forward") -> th.Tensor:
    """Analytic KL(pi_old || pi) per state (``direction="forward"``, the PPO paper's), or KL(pi || pi_old)
    (``"reverse"``, computed by :func:`reference_kl` with pi_old as the reference).

    :param old_params: (batch, d) from :func:`distribution_params` at collection time
    :param dist: SB3 distribution of the current policy on the same states (a masked one under the masks of
        collection time)
    :param direction: one of :data:`KL_DIRECTIONS`
    :return: (batch,)
    """
    if direction != "forward":
        if direction == "reverse":
            return reference_kl(dist, old_params)
        raise ValueError(f"kl_direction must be one of {KL_DIRECTIONS}, got {direction!r}")
    if isinstance(dist, CategoricalDistribution):
        return categorical_kl(old_params, dist.distribution.logits)
    if isinstance(dist, MaskableCategoricalDistribution):
        return masked_categorical_kl(old_params, dist.distribution.logits, dist.distribution.masks)
    if isinstance(dist, MaskableMultiCategoricalDistribution):  # incl. MaskableBernoulliDistribution
        splits = th.split(old_params, list(dist.action_dims), dim=1)
        kls = [masked_categorical_kl(o, d.logits, d.masks) for o, d in zip(splits, dist.distributions, strict=True)]
        return th.stack(kls, dim=1).sum(dim=1)
    if isinstance(dist, MultiCategoricalDistribution):
        splits = th.split(old_params, list(dist.action_dims), dim=1)
        return th.stack([categorical_kl(o, d.logits) for o, d in zip(splits, dist.distribution)], dim=1).sum(dim=1)
    if isinstance(dist, BernoulliDistribution):
        return bernoulli_kl(old_params, dist.distribution.logits)
    if isinstance(dist, (DiagGaussianDistribution, StateDependentNoiseDistribution)):
        normal = _gaussian(dist)
        half = old_params.shape[1] // 2
        return diag_gaussian_kl(old_params[:, :half], old_params[:, half:], normal.loc, normal.scale)
    raise TypeError(f"No exact KL for action distribution {type(dist).__name__}")


def reference_kl(dist: Distribution, reference_params: th.Tensor) -> th.Tensor:
    """Analytic KL(pi || pi_ref) per state, to a reference policy (the RLHF anchor): the reverse direction of
    :func:`exact_kl`, with the current distribution first.

    :param dist: SB3 distribution of the current policy (a masked one: its masked actions have probability 0 and add 0)
    :param reference_params: (batch, d) :func:`distribution_params` of the reference on the same states
    :return: (batch,)
    """
    params = distribution_params(dist)
    if isinstance(dist, CategoricalDistribution):
        return categorical_kl(params, reference_params)
    if isinstance(dist, MaskableCategoricalDistribution):
        return masked_categorical_kl(params, reference_params, dist.distribution.masks)
    if isinstance(dist, (MultiCategoricalDistribution, MaskableMultiCategoricalDistribution)):
        dims = list(dist.action_dims)
        masks = [d.masks for d in dist.distributions] if isinstance(dist, MaskableMultiCategoricalDistribution) else None
        kls = [
            masked_categorical_kl(p, q, None if masks is None else masks[i])
            for i, (p, q) in enumerate(zip(th.split(params, dims, dim=1), th.split(reference_params, dims, dim=1)))
        ]
        return th.stack(kls, dim=1).sum(dim=1)
    if isinstance(dist, BernoulliDistribution):
        return bernoulli_kl(params, reference_params)
    if isinstance(dist, (DiagGaussianDistribution, StateDependentNoiseDistribution)):
        half = params.shape[1] // 2
        return diag_gaussian_kl(params[:, :half], params[:, half:], reference_params[:, :half], reference_params[:, half:])
    raise TypeError(f"No exact KL for action distribution {type(dist).__name__}")


def sampled_kl(log_ratio: th.Tensor, estimator: str, direction: str = "forward") -> th.Tensor:
    """Per-sample estimates of KL(pi_old || pi) (``direction="forward"``) or KL(pi || pi_old) (``"reverse"``) from
    actions drawn from pi_old, by a registered estimator (see :data:`SAMPLED_KL_ESTIMATORS`).

    With ``log_ratio = log pi(a|s) - log pi_old(a|s)`` (so r = exp(log_ratio)), forward:
    k1 = -log r (unbiased, high variance, can be negative); k2 = (log r)^2 / 2 (biased, low variance);
    k3 = (r - 1) - log r (unbiased, low variance, always >= 0).

    :param log_ratio: (batch,), or with leading dimensions
    :param estimator: a registered name ("k1", "k2", "k3", or one added by :func:`register_kl_estimator`)
    :param direction: "forward" or "reverse"
    :return: the shape of ``log_ratio``
    """
    if direction not in SAMPLED_KL_ESTIMATORS:
        raise ValueError(f"kl_direction must be one of {KL_DIRECTIONS}, got {direction!r}")
    table = SAMPLED_KL_ESTIMATORS[direction]
    if estimator not in table:
        raise ValueError(
            f"kl_estimator must be one of {tuple(table)} for a sampled {direction} KL, got {estimator!r} "
            "(register one with kl.register_kl_estimator)"
        )
    return table[estimator](log_ratio)
