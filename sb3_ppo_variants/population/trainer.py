"""The population's mathematics on stacked tensors: SB3's GAE and one PPO update of K members at once.

Both are term for term the solo run's (``RolloutBuffer.compute_returns_and_advantage`` and ``VariantPPO.train``),
with each coefficient a (K,) tensor and the loss terms of :mod:`sb3_ppo_variants.losses` and
:mod:`sb3_ppo_variants.kl` taking the member dimension in front. Members differ in their switches too (surrogate,
KL penalty, KL estimator): each term present in the population is computed for every member and each member's
own is picked with ``th.where``, which passes a member exactly its own value and gradient.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch as th

from sb3_ppo_variants import losses
from sb3_ppo_variants.algorithm import NonFiniteLossError, VariantPPO
from sb3_ppo_variants.kl import sampled_kl
from sb3_ppo_variants.population.distributions import StackedDistribution
from sb3_ppo_variants.population.policy import StackedActorCritic, StackedAdam
from sb3_ppo_variants.schedules import schedule_value

__all__ = ["SURROGATE_TERMS", "MemberCoefficients", "RolloutData", "compute_gae", "rollout_kl", "update"]


@dataclass
class RolloutData:
    """One rollout of every member, flattened as SB3's buffer flattens it (index ``env * n_steps + step``).

    Shapes: (K, N, ...) with N = n_envs * n_steps.
    """

    observations: th.Tensor
    actions: th.Tensor
    old_values: th.Tensor
    old_log_prob: th.Tensor
    advantages: th.Tensor
    returns: th.Tensor
    old_dist_params: th.Tensor

    @staticmethod
    def flatten(tensor: th.Tensor) -> th.Tensor:
        """(K, n_steps, n_envs, ...) -> (K, n_envs * n_steps, ...), SB3's ``swap_and_flatten`` per member."""
        k, t, e = tensor.shape[:3]
        return tensor.transpose(1, 2).reshape(k, e * t, *tensor.shape[3:])


@dataclass
class MemberCoefficients:
    """The settings of one update, one entry per member; tensors are (K,) on the population's device.

    :param surrogate: per member, a key of ``SURROGATE_TERMS``
    :param kl_estimator: per member, ``"exact"``, ``"k1"``, ``"k2"`` or ``"k3"``
    :param penalised: (K,) bool, whether the member has a KL penalty
    :param clip_range_vf: None when no member clips its value; else (K,) with ``inf`` for the members that do not
    :param target_kl: (K,) with ``inf`` for the members without early stopping
    """

    learning_rate: th.Tensor
    clip_range: th.Tensor
    clip_range_vf: th.Tensor | None
    ent_coef: th.Tensor
    vf_coef: th.Tensor
    kl_coef: th.Tensor
    max_grad_norm: th.Tensor
    target_kl: th.Tensor
    dual_clip: th.Tensor
    surrogate: list[Any]
    kl_estimator: list[str]
    penalised: th.Tensor

    @classmethod
    def at(cls, models: list[VariantPPO], progress_remaining: float, device: th.device) -> MemberCoefficients:
        """The settings of ``models`` (one per member) for an update at ``progress_remaining``: schedules evaluated
        as ``VariantPPO.train`` evaluates them, each KL controller asked for its beta (``begin_update``)."""

        def tensor(values: list[float]) -> th.Tensor:
            return th.tensor(values, dtype=th.float32, device=device)

        def scheduled(name: str, default: float | None = None) -> list[float]:
            values = [getattr(model, name) for model in models]
            return [default if v is None and default is not None else schedule_value(v, progress_remaining) for v in values]

        controllers = [model.kl_controller for model in models]
        vf_clipped = any(model.clip_range_vf is not None for model in models)
        return cls(
            learning_rate=tensor(scheduled("learning_rate")),
            clip_range=tensor(scheduled("clip_range")),
            clip_range_vf=tensor(scheduled("clip_range_vf", float("inf"))) if vf_clipped else None,
            ent_coef=tensor(scheduled("ent_coef")),
            vf_coef=tensor([float(model.vf_coef) for model in models]),
            kl_coef=tensor([0.0 if c is None else c.begin_update(progress_remaining) for c in controllers]),
            max_grad_norm=tensor([float(model.max_grad_norm) for model in models]),
            target_kl=tensor(scheduled("target_kl", float("inf"))),
            dual_clip=tensor([float(model.dual_clip) for model in models]),
            surrogate=[model.surrogate for model in models],
            kl_estimator=[model.kl_estimator for model in models],
            penalised=th.tensor([c is not None for c in controllers], device=device),
        )


#: surrogate name -> loss per member, from (ratio, advantages, clip_range, dual_clip)
SURROGATE_TERMS: dict[str, Callable[[th.Tensor, th.Tensor, th.Tensor, th.Tensor], th.Tensor]] = {
    "clipped": lambda ratio, advantages, clip_range, dual_clip: losses.clipped_surrogate_loss(ratio, advantages, clip_range),
    "dual_clip": losses.dual_clip_surrogate_loss,
    "unclipped": lambda ratio, advantages, clip_range, dual_clip: losses.unclipped_surrogate_loss(ratio, advantages),
}


def _pick(names: list[str], table: dict[str, Callable[..., th.Tensor]], *args: Any) -> th.Tensor:
    """Each member's own term: compute the terms present among ``names`` (one per member) and select per member."""
    present = list(dict.fromkeys(names))
    result = table[present[0]](*args)
    for name in present[1:]:
        mask = th.tensor([n == name for n in names], device=result.device)
        result = th.where(mask, table[name](*args), result)
    return result


def _kl_terms(distribution: StackedDistribution) -> dict[str, Callable[[th.Tensor, th.Tensor, th.Tensor], th.Tensor]]:
    """estimator name -> mean KL per member, from (old distribution parameters, new ones, log ratio)."""
    terms: dict[str, Callable[[th.Tensor, th.Tensor, th.Tensor], th.Tensor]] = {
        "exact": lambda old_params, params, log_ratio: distribution.kl(old_params, params).mean(dim=-1)
    }
    for name in ("k1", "k2", "k3"):
        terms[name] = functools.partial(_sampled_kl_mean, estimator=name)
    return terms


def _sampled_kl_mean(old_params: th.Tensor, params: th.Tensor, log_ratio: th.Tensor, estimator: str) -> th.Tensor:
    return sampled_kl(log_ratio, estimator).mean(dim=-1)


def compute_gae(
    rewards: th.Tensor,
    values: th.Tensor,
    episode_starts: th.Tensor,
    last_values: th.Tensor,
    dones: th.Tensor,
    gamma: th.Tensor,
    gae_lambda: th.Tensor,
) -> tuple[th.Tensor, th.Tensor]:
    """SB3's ``RolloutBuffer.compute_returns_and_advantage`` for every member at once.

    :param rewards: (K, n_steps, n_envs), truncated episodes already bootstrapped (+ gamma * V(terminal obs))
    :param values: (K, n_steps, n_envs)
    :param episode_starts: (K, n_steps, n_envs), 1.0 where the step's observation starts an episode
    :param last_values: (K, n_envs) values of the observations after the rollout
    :param dones: (K, n_envs) whether the rollout's last step ended an episode
    :param gamma: (K,)
    :param gae_lambda: (K,)
    :return: advantages and returns, (K, n_steps, n_envs)
    """
    n_steps = rewards.shape[1]
    gamma_ = gamma.to(rewards.dtype).unsqueeze(-1)
    # SB3 multiplies the two Python floats first, then the float32 arrays
    gamma_lambda = (gamma.double() * gae_lambda.double()).to(rewards.dtype).unsqueeze(-1)
    advantages = th.zeros_like(rewards)
    last_gae_lam = th.zeros_like(last_values)
    for step in reversed(range(n_steps)):
        if step == n_steps - 1:
            next_non_terminal = 1.0 - dones.to(rewards.dtype)
            next_values = last_values
        else:
            next_non_terminal = 1.0 - episode_starts[:, step + 1]
            next_values = values[:, step + 1]
        delta = rewards[:, step] + gamma_ * next_values * next_non_terminal - values[:, step]
        last_gae_lam = delta + gamma_lambda * next_non_terminal * last_gae_lam
        advantages[:, step] = last_gae_lam
    return advantages, advantages + values


@th.no_grad()
def rollout_kl(policy: StackedActorCritic, data: RolloutData, chunk: int = 1024) -> th.Tensor:
    """Each member's mean exact KL(pi_old || pi) over its whole rollout, with the policy as it is now: (K,)."""
    size = data.observations.shape[1]
    total = th.zeros(data.observations.shape[0], dtype=th.float64, device=data.observations.device)
    for start in range(0, size, chunk):
        params, _ = policy.forward(data.observations[:, start : start + chunk])
        total += policy.distribution.kl(data.old_dist_params[:, start : start + chunk], params).double().sum(dim=1)
    return total / size


def _explained_variance(values: th.Tensor, returns: th.Tensor) -> np.ndarray:
    """SB3's ``explained_variance`` per member (float32 numpy, NaN where the returns do not vary)."""
    y_pred, y_true = values.cpu().numpy(), returns.cpu().numpy()
    var_y = np.var(y_true, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(var_y == 0, np.nan, 1 - np.var(y_true - y_pred, axis=1) / var_y)


def update(
    policy: StackedActorCritic,
    optimizer: StackedAdam,
    data: RolloutData,
    coefficients: MemberCoefficients,
    orders: list[np.ndarray],
    batch_size: int,
    normalize_advantage: bool,
) -> dict[str, np.ndarray]:
    """One policy update of every member: ``VariantPPO.train`` with a leading member dimension.

    :param orders: per epoch, (K, N) the minibatch order of each member (its ``rollout_buffer.get`` permutation)
    :return: per-member diagnostics, (K,) arrays under SB3's log keys without ``train/`` (plus ``n_epochs_run``
        and ``kl``, the rollout KL after the update)
    """
    device = data.observations.device
    n_members, size = data.observations.shape[:2]
    members = th.arange(n_members, device=device).unsqueeze(1)
    active = th.ones(n_members, dtype=th.bool, device=device)
    sums: dict[str, th.Tensor] = {}
    counts = th.zeros(n_members, device=device)
    epoch_kl_sum = th.zeros(n_members, device=device)
    epoch_kl_count = th.zeros(n_members, device=device)
    last_loss = th.zeros(n_members, device=device)
    n_epochs_run = th.zeros(n_members, dtype=th.long, device=device)
    clip_range = coefficients.clip_range.unsqueeze(1)
    clip_range_vf = None if coefficients.clip_range_vf is None else coefficients.clip_range_vf.unsqueeze(1)
    dual_clip = coefficients.dual_clip.unsqueeze(1)
    penalised = bool(coefficients.penalised.any())
    kl_terms = _kl_terms(policy.distribution)

    for order in orders:
        if not bool(active.any()):
            break
        n_epochs_run += active.long()
        epoch_kl_sum = th.where(active, 0.0, epoch_kl_sum)
        epoch_kl_count = th.where(active, 0.0, epoch_kl_count)
        order_t = th.as_tensor(order, device=device)
        for start in range(0, size, batch_size):
            if not bool(active.any()):
                break
            index = order_t[:, start : start + batch_size]
            observations = data.observations[members, index]
            actions = data.actions[members, index]
            old_log_prob = data.old_log_prob[members, index]
            old_dist_params = data.old_dist_params[members, index]
            params, values = policy.forward(observations)
            log_prob = policy.distribution.log_prob(params, actions)
            entropy = policy.distribution.entropy(params)
            advantages = data.advantages[members, index]
            if normalize_advantage and advantages.shape[1] > 1:
                advantages = (advantages - advantages.mean(dim=1, keepdim=True)) / (advantages.std(dim=1, keepdim=True) + 1e-8)

            ratio = th.exp(log_prob - old_log_prob)
            policy_loss = _pick(coefficients.surrogate, SURROGATE_TERMS, ratio, advantages, clip_range, dual_clip)
            v_loss = losses.value_loss(values, data.old_values[members, index], data.returns[members, index], clip_range_vf)
            e_loss = losses.entropy_loss(entropy, log_prob)
            loss = policy_loss + coefficients.ent_coef * e_loss + coefficients.vf_coef * v_loss
            terms = {"policy_gradient_loss": policy_loss, "value_loss": v_loss, "entropy_loss": e_loss}
            if penalised:
                kl = _pick(coefficients.kl_estimator, kl_terms, old_dist_params, params, log_prob - old_log_prob)
                loss = th.where(coefficients.penalised, loss + coefficients.kl_coef * kl, loss)
                terms["kl_penalty"] = th.where(coefficients.penalised, kl, 0.0)
            _check_finite(terms, active)

            with th.no_grad():
                log_ratio = log_prob - old_log_prob
                approx_kl = th.mean((th.exp(log_ratio) - 1) - log_ratio, dim=-1)
                terms["clip_fraction"] = losses.clip_fraction(ratio, clip_range)
                for name, value in terms.items():
                    sums[name] = sums.get(name, th.zeros_like(value)) + th.where(active, value.detach(), 0.0)
                counts += active.float()
                epoch_kl_sum += th.where(active, approx_kl, 0.0)
                epoch_kl_count += active.float()
                last_loss = th.where(active, loss.detach(), last_loss)
                stepping = active & ~(approx_kl > 1.5 * coefficients.target_kl)

            if bool(stepping.any()):
                optimizer.zero_grad()
                th.where(stepping, loss, 0.0).sum().backward()
                optimizer.clip_grad_norm(coefficients.max_grad_norm)
                optimizer.step(coefficients.learning_rate, None if bool(stepping.all()) else stepping)
            active = stepping

    result = {name: (value / counts.clamp(min=1)).cpu().numpy() for name, value in sums.items()}
    result["approx_kl"] = (epoch_kl_sum / epoch_kl_count.clamp(min=1)).cpu().numpy()
    result["loss"] = last_loss.cpu().numpy()
    result["n_epochs_run"] = n_epochs_run.cpu().numpy()
    result["kl"] = rollout_kl(policy, data).cpu().numpy()
    result["explained_variance"] = _explained_variance(data.old_values, data.returns)
    if "log_std" in policy.params:
        result["std"] = policy.params["log_std"].detach().exp().mean(dim=1).cpu().numpy()
    return result


def _check_finite(terms: dict[str, th.Tensor], active: th.Tensor) -> None:
    finite = th.stack([th.isfinite(value) for value in terms.values()]).all(dim=0) | ~active
    if not bool(finite.all()):
        bad = th.nonzero(~finite).flatten().tolist()
        details = "; ".join(
            f"member {k}: " + ", ".join(f"{name}={float(value[k])}" for name, value in terms.items()) for k in bad
        )
        raise NonFiniteLossError(
            f"Population: non-finite loss term(s) for member(s) {bad}: {details}. "
            "Lower the learning rate, raise kl_coef or enable clipping."
        )
