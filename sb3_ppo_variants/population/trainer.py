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
from sb3_ppo_variants.algorithm import VariantPPO
from sb3_ppo_variants.kl import sampled_kl
from sb3_ppo_variants.population.distributions import StackedDistribution
from sb3_ppo_variants.population.policy import StackedActorCritic, StackedAdam
from sb3_ppo_variants.schedules import schedule_value

__all__ = ["MemberCoefficients", "RolloutData", "UpdateResult", "compute_gae", "rollout_kl", "update"]


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

    :param clip_range_vf: (K,), used where ``vf_clipped``
    :param vf_clipped: (K,) bool, whether the member clips its value prediction
    :param target_kl: (K,) with ``inf`` for the members without early stopping
    :param surrogate: per member, its surrogate term (a name of ``losses.SURROGATES``, or a function)
    :param kl_term: per member, ``(kl_estimator, kl_direction)`` of its KL penalty, or None without one
    :param kl_direction: per member, the direction of its KL to pi_old ("forward" or "reverse"), penalised or not:
        ``train/kl`` and its controller use it
    :param penalised: (K,) bool, whether the member has a KL penalty
    """

    learning_rate: th.Tensor
    clip_range: th.Tensor
    clip_range_vf: th.Tensor
    vf_clipped: th.Tensor
    ent_coef: th.Tensor
    vf_coef: th.Tensor
    kl_coef: th.Tensor
    max_grad_norm: th.Tensor
    target_kl: th.Tensor
    dual_clip: th.Tensor
    surrogate: list[Any]
    kl_term: list[tuple[str, str] | None]
    kl_direction: list[str]
    penalised: th.Tensor

    @classmethod
    def at(
        cls,
        models: list[VariantPPO],
        progress_remaining: float,
        device: th.device,
        kl_directions: list[str] | None = None,
    ) -> MemberCoefficients:
        """The settings of ``models`` (one per member) for an update at ``progress_remaining``: schedules evaluated
        as ``VariantPPO.train`` evaluates them, each KL controller asked for its beta (``begin_update``).

        :param kl_directions: per member, "forward" or "reverse" (default: each model's ``kl_direction``, else forward)
        """

        def tensor(values: list[float]) -> th.Tensor:
            return th.tensor(values, dtype=th.float32, device=device)

        def scheduled(name: str, default: float | None = None) -> list[float]:
            values = [getattr(model, name) for model in models]
            return [default if v is None and default is not None else schedule_value(v, progress_remaining) for v in values]

        if kl_directions is None:
            kl_directions = [getattr(model, "kl_direction", "forward") for model in models]
        controllers = [model.kl_controller for model in models]
        return cls(
            learning_rate=tensor(scheduled("learning_rate")),
            clip_range=tensor(scheduled("clip_range")),
            clip_range_vf=tensor(scheduled("clip_range_vf", 0.0)),
            vf_clipped=th.tensor([model.clip_range_vf is not None for model in models], device=device),
            ent_coef=tensor(scheduled("ent_coef")),
            vf_coef=tensor([float(model.vf_coef) for model in models]),
            kl_coef=tensor([0.0 if c is None else c.begin_update(progress_remaining) for c in controllers]),
            max_grad_norm=tensor([float(model.max_grad_norm) for model in models]),
            target_kl=tensor(scheduled("target_kl", float("inf"))),
            dual_clip=tensor([float(model.dual_clip) for model in models]),
            surrogate=[model.surrogate for model in models],
            kl_term=[
                None if c is None else (model.kl_estimator, direction)
                for model, c, direction in zip(models, controllers, kl_directions)
            ],
            kl_direction=list(kl_directions),
            penalised=th.tensor([c is not None for c in controllers], device=device),
        )


class _Groups:
    """The members grouped by a key (their surrogate, their KL estimator, ...): each term is computed once per group,
    on that group's members only, and assembled per member. A member's term is then computed by the same operations
    on the same numbers whatever its companions (no term of another member's flows into its value or gradient).

    :param keys: one per member; None leaves a member out (its entry of an assembled term is 0)
    """

    def __init__(self, keys: list[Any], device: th.device):
        self.n_members = len(keys)
        members: dict[Any, list[int]] = {}
        for k, key in enumerate(keys):
            if key is not None:
                members.setdefault(key, []).append(k)
        self.whole = len(members) == 1 and len(next(iter(members.values()))) == self.n_members
        self.groups = [(key, th.tensor(indices, device=device)) for key, indices in members.items()]

    def __bool__(self) -> bool:
        return bool(self.groups)

    def assemble(self, term: Callable[..., th.Tensor], *tensors: th.Tensor) -> th.Tensor:
        """``term(key, *rows)`` for each group, ``rows`` being the group's rows of each (K, ...) tensor: (K,)."""
        if self.whole:
            return term(self.groups[0][0], *tensors)
        result: th.Tensor | None = None
        for key, index in self.groups:
            part = term(key, *(tensor.index_select(0, index) for tensor in tensors))
            if result is None:
                result = th.zeros(self.n_members, dtype=part.dtype, device=part.device)
            result = result.index_copy(0, index, part)
        assert result is not None
        return result


def _surrogate_term(
    surrogate: Any, ratio: th.Tensor, advantages: th.Tensor, clip_range: th.Tensor, dual_clip: th.Tensor
) -> th.Tensor:
    fn = losses.get_surrogate(surrogate)
    return fn(ratio, advantages, clip_range, **losses.surrogate_options(fn, {"dual_clip": dual_clip}))


def _value_term(
    clipped: bool, values: th.Tensor, old_values: th.Tensor, returns: th.Tensor, clip_range_vf: th.Tensor
) -> th.Tensor:
    return losses.value_loss(values, old_values, returns, clip_range_vf if clipped else None)


def _kl_term(
    key: tuple[str, str], old_params: th.Tensor, params: th.Tensor, log_ratio: th.Tensor, distribution: StackedDistribution
) -> th.Tensor:
    """The mean KL of a group of members: exact (analytic) or a sampled estimator, forward KL(pi_old || pi) or
    reverse KL(pi || pi_old), per member (K,)."""
    estimator, direction = key
    if estimator == "exact":
        kl = distribution.kl(old_params, params) if direction == "forward" else distribution.kl(params, old_params)
        return kl.mean(dim=-1)
    return sampled_kl(log_ratio, estimator, direction).mean(dim=-1)


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
def rollout_kl(policy: StackedActorCritic, data: RolloutData, chunk: int = 1024, reverse: bool = False) -> th.Tensor:
    """Each member's mean exact KL(pi_old || pi) (``reverse``: KL(pi || pi_old)) over its whole rollout, with the
    policy as it is now: (K,)."""
    size = data.observations.shape[1]
    total = th.zeros(data.observations.shape[0], dtype=th.float64, device=data.observations.device)
    for start in range(0, size, chunk):
        params, _ = policy.forward(data.observations[:, start : start + chunk])
        old = data.old_dist_params[:, start : start + chunk]
        kl = policy.distribution.kl(params, old) if reverse else policy.distribution.kl(old, params)
        total += kl.double().sum(dim=1)
    return total / size


def _explained_variance(values: th.Tensor, returns: th.Tensor) -> np.ndarray:
    """SB3's ``explained_variance`` per member (float32 numpy, NaN where the returns do not vary)."""
    y_pred, y_true = values.cpu().numpy(), returns.cpu().numpy()
    var_y = np.var(y_true, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(var_y == 0, np.nan, 1 - np.var(y_true - y_pred, axis=1) / var_y)


_GATHERED = ("observations", "actions", "old_log_prob", "advantages", "old_values", "returns", "old_dist_params")


def _minibatch(rows: dict[str, th.Tensor], flat_index: th.Tensor, shape: tuple[int, ...], name: str) -> th.Tensor:
    """The rows ``flat_index`` (K * B,) of the flattened (K * N, ...) tensor ``name``, as (K, B, ...) (C-contiguous)."""
    tensor = rows[name]
    return tensor.index_select(0, flat_index).view(*shape, *tensor.shape[1:])


#: at most this many bytes in one member chunk's largest activation. An update runs its forward and backward passes
#: chunk by chunk, so that a chunk's activations stay in the core's cache (2 MB of L2 per core here): K=64 on rl-zoo3's
#: CartPole entry (batch 256 x 64 units, 64 kB per member) took 18.2 ms per minibatch's forward and backward in chunks
#: of 16 members, 22.5 ms all at once (chunks of 8: 20 ms, of 32: 19 ms). A member's numbers do not depend on its chunk.
CHUNK_BYTES = 1 << 20


@dataclass
class _Chunk:
    """Some members (``rows`` of every (K, ...) tensor), their coefficients and their term groups: one forward and
    backward pass. Coefficients are (K',), ``clip_range``, ``clip_range_vf`` and ``dual_clip`` (K', 1)."""

    rows: slice
    coefficients: dict[str, th.Tensor]
    surrogates: _Groups
    value_clipping: _Groups
    penalties: _Groups


def _chunks(policy: StackedActorCritic, coefficients: MemberCoefficients, batch_size: int) -> list[_Chunk]:
    """The members in chunks of at most :data:`CHUNK_BYTES` of activations each (on a GPU, one chunk)."""
    n_members, device = coefficients.clip_range.shape[0], coefficients.clip_range.device
    size = n_members
    if device.type == "cpu":
        size = max(1, CHUNK_BYTES // (batch_size * policy.widest * policy.flat.element_size()))
    names = ("ent_coef", "vf_coef", "kl_coef", "penalised", "target_kl", "learning_rate", "max_grad_norm")
    chunks = []
    for start in range(0, n_members, size):
        rows = slice(start, min(start + size, n_members))
        values = {name: getattr(coefficients, name)[rows] for name in names}
        for name in ("clip_range", "clip_range_vf", "dual_clip"):  # (K', 1): they meet (K', batch) tensors
            values[name] = getattr(coefficients, name)[rows].unsqueeze(1)
        chunks.append(
            _Chunk(
                rows,
                values,
                _Groups(coefficients.surrogate[rows], device),
                _Groups(coefficients.vf_clipped[rows].tolist(), device),
                _Groups(coefficients.kl_term[rows], device),
            )
        )
    return chunks


def _forward_backward(
    policy: StackedActorCritic,
    chunk: _Chunk,
    batch: dict[str, th.Tensor],
    active: th.Tensor,
    healthy: th.Tensor,
    normalize_advantage: bool,
    with_kl: bool,
) -> dict[str, Any]:
    """One minibatch of a chunk's members: their loss terms, and the gradient of the loss of those that step.

    A member steps where it is ``active`` and ``healthy``, its terms are finite and its approximate KL is within
    1.5 ``target_kl`` (SB3's early stop). ``batch`` holds the chunk's rows of the minibatch.
    :return: ``terms`` (name -> (K',)), ``loss``, ``approx_kl``, ``clip_fraction``, ``finite``, ``stepping`` (K',), and
        ``grad`` (K', P)
    """
    c = chunk.coefficients
    flat = policy.flat.detach()[chunk.rows].requires_grad_(True)
    params, values = policy.forward(batch["observations"], flat)
    log_prob, entropy = policy.distribution.log_prob_and_entropy(params, batch["actions"])
    advantages = batch["advantages"]
    if normalize_advantage and advantages.shape[1] > 1:
        advantages = (advantages - advantages.mean(dim=1, keepdim=True)) / (advantages.std(dim=1, keepdim=True) + 1e-8)

    log_ratio = log_prob - batch["old_log_prob"]
    ratio = th.exp(log_ratio)
    policy_loss = chunk.surrogates.assemble(_surrogate_term, ratio, advantages, c["clip_range"], c["dual_clip"])
    v_loss = chunk.value_clipping.assemble(_value_term, values, batch["old_values"], batch["returns"], c["clip_range_vf"])
    e_loss = losses.entropy_loss(entropy, log_prob)
    loss = policy_loss + c["ent_coef"] * e_loss + c["vf_coef"] * v_loss
    terms = {"policy_gradient_loss": policy_loss, "value_loss": v_loss, "entropy_loss": e_loss}
    if chunk.penalties:
        kl_term = functools.partial(_kl_term, distribution=policy.distribution)
        kl = chunk.penalties.assemble(kl_term, batch["old_dist_params"], params, log_ratio)
        loss = th.where(c["penalised"], loss + c["kl_coef"] * kl, loss)
        terms["kl_penalty"] = kl
    elif with_kl:  # other chunks' members have a penalty: these have none (0, as _Groups gives them)
        terms["kl_penalty"] = th.zeros_like(loss)

    with th.no_grad():
        finite = th.stack([th.isfinite(value) for value in terms.values()]).all(dim=0)
        approx_kl = th.mean((th.exp(log_ratio) - 1) - log_ratio, dim=-1)
        stepping = active & healthy & finite & ~(approx_kl > 1.5 * c["target_kl"])
        clip_fraction = losses.clip_fraction(ratio, c["clip_range"])
    (grad,) = th.autograd.grad(th.where(stepping, loss, 0.0).sum(), flat)
    return {
        "terms": {name: value.detach() for name, value in terms.items()},
        "loss": loss.detach(),
        "approx_kl": approx_kl,
        "clip_fraction": clip_fraction,
        "finite": finite,
        "stepping": stepping,
        "grad": grad,
    }


def _joined(parts: list[dict[str, Any]], key: str) -> Any:
    """The chunks' parts of ``key`` as one (K, ...) tensor (a dict of them for ``terms``)."""
    if len(parts) == 1:
        return parts[0][key]
    if key == "terms":
        return {name: th.cat([part[key][name] for part in parts]) for name in parts[0][key]}
    return th.cat([part[key] for part in parts])


#: what stopped a member, by code (0: nothing)
FAILURE_CHECKS = ("", "loss", "gradient", "parameters")


@dataclass
class UpdateResult:
    """What one update of every member gives back (numpy, (K,) each).

    :attr stats: per member, SB3's log values without ``train/``, with ``kl``: the exact rollout KL after the update in
        the member's ``kl_direction`` (what ``VariantPPO`` logs as ``train/kl`` and its controller sees)
    :attr n_epochs_run: the epochs each member entered (SB3 counts them in ``_n_updates``)
    :attr failed: (K,) bool, the members that failed during this update
    :attr failure_check: per member, the index in ``FAILURE_CHECKS`` of what failed
    :attr failure_terms: per member, its loss terms at the minibatch that failed (``check == "loss"``)
    """

    stats: dict[str, np.ndarray]
    n_epochs_run: np.ndarray
    failed: np.ndarray
    failure_check: np.ndarray
    failure_terms: dict[str, np.ndarray]


def update(
    policy: StackedActorCritic,
    optimizer: StackedAdam,
    data: RolloutData,
    coefficients: MemberCoefficients,
    orders: np.ndarray | list[np.ndarray],
    batch_size: int,
    normalize_advantage: bool,
    failed: th.Tensor | None = None,
) -> UpdateResult:
    """One policy update of every member: ``VariantPPO.train`` with a leading member dimension.

    Every member's numbers are those it would have alone: each term is computed per member (members grouped by their
    switches, see :class:`_Groups`), Adam and gradient clipping are per member, and a member that stops (``target_kl``)
    or fails simply stops stepping. A member whose loss terms, gradient or next parameters are non-finite fails: it
    keeps its last finite parameters and Adam state. The minibatch loop makes no device round trip: the checks run on
    the device and are read once, after the update (on the CPU, Adam reads whether all of a chunk's members step,
    which costs nothing there). On the CPU each minibatch runs in chunks of members whose
    activations fit the cache (:data:`CHUNK_BYTES`): forward, backward, clipping and Adam, chunk after chunk; a
    member's numbers do not depend on its chunk.

    :param orders: (n_epochs, K, N): per epoch, the minibatch order of each member (its ``rollout_buffer.get``
        permutation)
    :param failed: (K,) bool, members that failed before (they do not update)
    """
    device = data.observations.device
    n_members, size = data.observations.shape[:2]
    chunks = _chunks(policy, coefficients, batch_size)
    with_kl = any(chunk.penalties for chunk in chunks)
    row_offsets = th.arange(n_members, device=device).unsqueeze(1) * size  # member k's rows start at k * N
    # (K * N, ...) views (copies at most once per update): a minibatch is then one index_select per tensor, where
    # indexing with two index tensors took 4x longer (7% of a K=64 Pendulum update); the old distributions only for
    # a KL penalty
    gathered = [name for name in _GATHERED if with_kl or name != "old_dist_params"]
    rows = {name: getattr(data, name).flatten(0, 1) for name in gathered}
    healthy = th.ones(n_members, dtype=th.bool, device=device) if failed is None else ~failed
    active = healthy.clone()
    check = th.zeros(n_members, dtype=th.long, device=device)
    sums: dict[str, th.Tensor] = {}
    bad_terms: dict[str, th.Tensor] = {}
    counts = th.zeros(n_members, device=device)
    epoch_kl_sum = th.zeros(n_members, device=device)
    epoch_kl_count = th.zeros(n_members, device=device)
    last_loss = th.zeros(n_members, device=device)
    n_epochs_run = th.zeros(n_members, dtype=th.long, device=device)
    # (a minibatch gathered by index_select is C-contiguous whatever the orders' layout: a reduction over a strided
    # layout rounded differently from one over rows, and a member's advantage mean then depended on K)
    orders_t = th.as_tensor(np.asarray(orders), device=device)

    for order in orders_t:
        if not bool(active.any()):  # one host read per epoch, as SB3 stops the epoch loop
            break
        n_epochs_run += active.long()
        epoch_kl_sum = th.where(active, 0.0, epoch_kl_sum)
        epoch_kl_count = th.where(active, 0.0, epoch_kl_count)
        for start in range(0, size, batch_size):
            index = order[:, start : start + batch_size]
            flat_index, shape = (row_offsets + index).reshape(-1), index.shape
            batch = {name: _minibatch(rows, flat_index, shape, name) for name in gathered}
            parts = []
            for chunk in chunks:
                part = _forward_backward(
                    policy,
                    chunk,
                    {name: tensor[chunk.rows] for name, tensor in batch.items()},
                    active[chunk.rows],
                    healthy[chunk.rows],
                    normalize_advantage,
                    with_kl,
                )
                # the chunk's optimiser step now, while its gradient is in the cache (per member: no other chunk's
                # forward pass reads these members' parameters)
                c = chunk.coefficients
                norms = optimizer.clip_grad_norm(c["max_grad_norm"], grads=[part["grad"]])
                part["grad_broken"] = part["stepping"] & ~th.isfinite(norms)
                stepping = part["stepping"] & ~part["grad_broken"]
                part["applied"] = optimizer.step(c["learning_rate"], stepping, members=chunk.rows, grads=[part.pop("grad")])
                parts.append(part)

            with th.no_grad():
                terms = _joined(parts, "terms")
                broken = active & ~_joined(parts, "finite")  # checked where a solo run checks: each minibatch it evaluates
                for name, value in terms.items():
                    bad_terms[name] = th.where(broken, value, bad_terms.get(name, th.zeros_like(value)))
                check = th.where(broken, 1, check)
                healthy &= ~broken
                approx_kl = _joined(parts, "approx_kl")
                terms["clip_fraction"] = _joined(parts, "clip_fraction")
                for name, value in terms.items():
                    sums[name] = sums.get(name, th.zeros_like(value)) + th.where(active, value, 0.0)
                counts += active.float()
                epoch_kl_sum += th.where(active, approx_kl, 0.0)
                epoch_kl_count += active.float()
                last_loss = th.where(active, _joined(parts, "loss"), last_loss)
                broken = _joined(parts, "grad_broken")
                check = th.where(broken, 2, check)
                stepping = _joined(parts, "stepping") & ~broken
                applied = _joined(parts, "applied")
                broken = stepping & ~applied
                check = th.where(broken, 3, check)
                healthy &= check == 0
                active = stepping & applied

    newly_failed = (check != 0).cpu().numpy()
    stats = {name: (value / counts.clamp(min=1)).cpu().numpy() for name, value in sums.items()}
    stats["approx_kl"] = (epoch_kl_sum / epoch_kl_count.clamp(min=1)).cpu().numpy()
    stats["loss"] = last_loss.cpu().numpy()
    rollout = rollout_kl(policy, data)
    reverse = th.tensor([direction == "reverse" for direction in coefficients.kl_direction], device=device)
    if bool(reverse.any()):
        rollout = th.where(reverse, rollout_kl(policy, data, reverse=True), rollout)
    stats["kl"] = rollout.cpu().numpy()
    stats["explained_variance"] = _explained_variance(data.old_values, data.returns)
    if "log_std" in policy.params:
        stats["std"] = policy.params["log_std"].detach().exp().mean(dim=1).cpu().numpy()
    return UpdateResult(
        stats=stats,
        n_epochs_run=n_epochs_run.cpu().numpy(),
        failed=newly_failed,
        failure_check=check.cpu().numpy(),
        failure_terms={name: value.cpu().numpy() for name, value in bad_terms.items()},
    )
