"""One PPO training loop whose loss is composed of switchable terms; the named variants are settings of it."""

from __future__ import annotations

import copy
import inspect
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from sb3_contrib import MaskablePPO, RecurrentPPO
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback
from stable_baselines3.common.utils import explained_variance
from stable_baselines3.common.vec_env import VecEnv

from sb3_ppo_variants import losses
from sb3_ppo_variants.buffers import OldDistributionBufferMixin
from sb3_ppo_variants.controllers import AdaptiveKLController, FixedKLController, KLController, ProportionalKLController
from sb3_ppo_variants.hosts import MASKABLE_PPO_HOST, PPO_HOST, RECURRENT_PPO_HOST, Host, RecurrentPPOHost
from sb3_ppo_variants.kl import KL_ESTIMATORS, distribution_params, exact_kl, reference_kl, sampled_kl
from sb3_ppo_variants.schedules import ScheduleLike, check_schedule, schedule_value

if TYPE_CHECKING:
    from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

    _Host = OnPolicyAlgorithm
else:
    _Host = object

__all__ = [
    "KL_PENALTIES",
    "KL_REFERENCE_PLACES",
    "SURROGATES",
    "MaskableVariantPPO",
    "NonFiniteLossError",
    "RecurrentVariantPPO",
    "VariantAlgorithm",
    "VariantPPO",
]

SelfVariantAlgorithm = TypeVar("SelfVariantAlgorithm", bound="VariantAlgorithm")

SURROGATES = ("clipped", "unclipped", "dual_clip")
KL_PENALTIES = ("none", "fixed", "adaptive", "proportional")
KL_REFERENCE_PLACES = ("loss", "reward")


class NonFiniteLossError(FloatingPointError, ValueError):
    """A term of the loss became NaN or infinite; training stops instead of producing a garbage model.

    Also a ``ValueError``, so that tools which treat a ``ValueError`` as a failed setting (rl-zoo3's
    objective prunes a trial on ``AssertionError``/``ValueError``) go on with the next trial.
    """


@contextmanager
def _distribution_validation_off() -> Iterator[None]:
    """torch.distributions' argument checks cost ~10% of SB3's learn(); they are process-wide, so scope them."""
    previous = th.distributions.Distribution._validate_args
    th.distributions.Distribution.set_default_validate_args(False)
    try:
        yield
    finally:
        th.distributions.Distribution.set_default_validate_args(previous)


#: The arguments that take a schedule, with their allowed ranges (keyword arguments of ``check_schedule``).
_COEFFICIENTS: dict[str, dict[str, bool]] = {
    "learning_rate": {},
    "clip_range": {"strict": True},
    "clip_range_vf": {"strict": True, "allow_none": True},
    "ent_coef": {},
    "kl_coef": {},
}


def _checked_coefficients(values: dict[str, Any]) -> dict[str, Any]:
    """Each schedule-like argument validated, with schedule strings parsed (see ``check_schedule``)."""
    return {name: check_schedule(values[name], name, **rules) for name, rules in _COEFFICIENTS.items()}


def _parsed_load_coefficients(values: dict[str, Any]) -> dict[str, Any]:
    """The schedule-like attributes as ``load()`` left them: strings (load keyword arguments) parsed and
    validated; floats and callables kept as given, unchecked, as SB3's PPO does -- ``custom_objects`` such as
    ``{"clip_range": lambda _: 0.0}`` (SB3's documented way to load a model for inference, used by rl-zoo3's
    ``enjoy``) must load."""
    return {
        name: check_schedule(values[name], name, **rules) if isinstance(values[name], str) else values[name]
        for name, rules in _COEFFICIENTS.items()
    }


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


class VariantAlgorithm(_Host):
    """
    The variant logic, composed onto a PPO-like host algorithm (listed before the host in the bases, with a
    :class:`~sb3_ppo_variants.hosts.Host` adapter as ``host``): a loss composed of a surrogate (clipped or not),
    an optional KL penalty with a fixed, scheduled or adaptive coefficient, and an entropy bonus whose coefficient
    may follow a schedule. One training loop for every host (SB3's PPO, sb3-contrib's MaskablePPO and RecurrentPPO).

    Paper: https://arxiv.org/abs/1707.06347 (clipping: section 3; KL penalty: section 4)

    Takes every argument of the host with the same meaning (see its docstring);
    ``learning_rate``, ``clip_range``, ``clip_range_vf``, ``ent_coef`` and ``kl_coef`` accept a float,
    a function of the remaining progress (from 1 to 0) or a schedule string such as ``"lin_0.01"``
    (grammar in :mod:`sb3_ppo_variants.schedules`). The named variants (``ClipPPO``, ``KLPPO``,
    ``AdaptiveKLPPO``, ``ClipKLPPO``) fix ``surrogate`` and ``kl_penalty``.

    :param surrogate: ``"clipped"``: min(r A, clip(r, 1 - clip_range, 1 + clip_range) A);
        ``"unclipped"``: r A (``clip_range`` then only feeds the ``train/clip_fraction`` diagnostic);
        ``"dual_clip"``: the clipped term, bounded below by ``dual_clip * A`` where A < 0 (Ye et al. 2020)
    :param dual_clip: c > 1 of the ``"dual_clip"`` surrogate (3.0 in the paper); ignored by the others
    :param kl_penalty: ``"none"``, ``"fixed"`` (beta = ``kl_coef``, possibly scheduled),
        ``"adaptive"`` (beta starts at ``kl_coef`` and is halved or doubled after each update to keep
        the mean KL near ``kl_target``) or ``"proportional"`` (Ziegler et al. 2019, as in Hugging Face TRL:
        ``beta *= 1 + clip(KL / kl_target - 1, -0.2, 0.2) * n_steps / kl_horizon`` after each update, with
        n_steps the steps collected for it). The current beta is ``model.kl_controller.value``.
    :param kl_coef: beta >= 0; with ``"adaptive"`` or ``"proportional"``, the initial beta (its value at progress 1)
    :param kl_target: d_targ > 0 of the adaptive and proportional rules (a KL per step). Not SB3's ``target_kl``,
        which stops the epoch loop early when the approximate KL exceeds 1.5 * target_kl; both can be used together.
    :param kl_horizon: the horizon of the proportional rule, in steps (10000 in TRL)
    :param kl_estimator: how the KL penalty is estimated in the loss: ``"exact"`` (analytic, from the old
        distribution's parameters stored at collection time) or Schulman's sampled ``"k1"``, ``"k2"``,
        ``"k3"``. ``train/kl`` and the adaptive rule always use the exact KL.
    :param kl_reference: the anchor of the KL penalty. None: the paper's KL(pi_old || pi) to the policy that
        collected the rollout. A policy (frozen: a copy is kept, never trained) or the path of a saved one (a
        directory the policy class's ``from_pretrained`` reads, such as a ``TransformerPolicy``'s
        ``save_pretrained``, or a file of SB3's ``policy.save``): KL(pi || pi_ref) to that reference, as in RLHF,
        exact over the actions. The reference runs once per collected step, without gradients, and its
        distribution is stored in the rollout buffer; it never runs in the update. It must take the policy's
        observations and have its action space (for a language model: its vocabulary). Needs a ``kl_penalty``
        and the exact estimator; logged as ``train/kl_ref``. Not on RecurrentPPO hosts.
    :param kl_reference_in: where the KL to the reference enters: ``"loss"`` (beta * KL(pi || pi_ref) per step,
        GRPO style) or ``"reward"`` (beta * KL(pi_old || pi_ref) of each collected step subtracted from its reward
        before GAE, TRL's PPO style; the controllers then see the KL at collection)
    """

    #: what differs per host algorithm (see :mod:`sb3_ppo_variants.hosts`)
    host: ClassVar[Host]
    kl_controller: KLController | None
    # Set by the host algorithms (PPO, MaskablePPO, RecurrentPPO), which all have these arguments.
    clip_range: Any
    clip_range_vf: Any
    batch_size: Any  # int; or None with sb3-contrib's hosts: the whole rollout in one minibatch
    n_epochs: int
    normalize_advantage: bool
    target_kl: float | None

    def __init__(
        self,
        policy: Any,
        env: GymEnv | str,
        *args: Any,
        surrogate: str = "clipped",
        kl_penalty: str = "none",
        kl_coef: ScheduleLike = 1.0,
        kl_target: float | None = None,
        kl_estimator: str = "exact",
        dual_clip: float = 3.0,
        kl_reference: BasePolicy | str | os.PathLike[str] | None = None,
        kl_reference_in: str = "loss",
        kl_horizon: float = 10_000,
        **kwargs: Any,
    ):
        # The host's arguments, positional or not, by name and with the host's defaults (an unknown one is a TypeError).
        host_arguments = inspect.signature(super().__init__).bind(policy, env, *args, **kwargs)
        host_arguments.apply_defaults()
        arguments = dict(host_arguments.arguments)
        # Validate our arguments before the host builds environments, so bad input fails fast and clearly.
        self.surrogate = _choice("surrogate", surrogate, SURROGATES)
        self.kl_penalty = _choice("kl_penalty", kl_penalty, KL_PENALTIES)
        self.kl_estimator = _choice("kl_estimator", kl_estimator, tuple(KL_ESTIMATORS))
        if isinstance(dual_clip, bool) or not isinstance(dual_clip, (int, float)) or not dual_clip > 1:
            raise ValueError(f"dual_clip must be a float > 1, got {dual_clip!r}")
        self.dual_clip = float(dual_clip)
        coefficients = _checked_coefficients({**{name: arguments.get(name) for name in _COEFFICIENTS}, "kl_coef": kl_coef})
        self.kl_coef = coefficients.pop("kl_coef")
        if kl_target is not None:
            if isinstance(kl_target, bool) or not isinstance(kl_target, (int, float)):
                raise TypeError(f"kl_target must be a float > 0 or None, got {type(kl_target).__name__}: {kl_target!r}")
            if not kl_target > 0:
                raise ValueError(f"kl_target must be > 0, got {kl_target!r}")
        if self.kl_penalty in ("adaptive", "proportional") and kl_target is None:
            raise ValueError(f"kl_target must be given (a float > 0) when kl_penalty={self.kl_penalty!r}")
        self.kl_target = kl_target
        if isinstance(kl_horizon, bool) or not isinstance(kl_horizon, (int, float)) or not kl_horizon > 0:
            raise ValueError(f"kl_horizon must be a number of steps > 0, got {kl_horizon!r}")
        self.kl_horizon = kl_horizon
        self.kl_reference_in = _choice("kl_reference_in", kl_reference_in, KL_REFERENCE_PLACES)
        if kl_reference is not None:
            if not isinstance(kl_reference, (BasePolicy, str, os.PathLike)):
                raise TypeError(
                    f"kl_reference must be None, a policy or the path of a saved one, got {type(kl_reference).__name__}"
                )
            if self.kl_penalty == "none":
                raise ValueError(
                    f"kl_reference={kl_reference!r} needs a KL penalty: kl_penalty must be one of {KL_PENALTIES[1:]}, "
                    "got 'none' (use a variant with a KL penalty, e.g. ClipKLPPO)"
                )
            if self.kl_estimator != "exact":
                raise ValueError(f"kl_estimator must be 'exact' with a kl_reference, got {self.kl_estimator!r}")
            if isinstance(self.host, RecurrentPPOHost):
                raise ValueError(f"kl_reference is not supported on RecurrentPPO hosts ({type(self).__name__})")
        self.kl_reference = kl_reference
        self.reference_policy: BasePolicy | None = None
        target_kl = arguments.get("target_kl")
        if target_kl is not None and not target_kl > 0:
            raise ValueError(f"target_kl must be > 0 or None, got {target_kl!r}")
        self.kl_controller = self._make_kl_controller()

        init_setup_model = arguments.pop("_init_setup_model", True)
        super().__init__(**{**arguments, **coefficients, "_init_setup_model": False})
        if init_setup_model:
            self._setup_model()

    def _make_kl_controller(self) -> KLController | None:
        if self.kl_penalty == "none":
            return None
        if self.kl_penalty == "fixed":
            return FixedKLController(self.kl_coef)  # type: ignore[arg-type]
        initial = schedule_value(self.kl_coef, 1.0)  # type: ignore[arg-type]
        if not initial > 0:
            raise ValueError(
                f"kl_coef (the initial beta) must be > 0 with kl_penalty={self.kl_penalty!r}, got {self.kl_coef!r}"
            )
        if self.kl_penalty == "proportional":
            return ProportionalKLController(initial, self.kl_target, self.kl_horizon)  # type: ignore[arg-type]
        return AdaptiveKLController(initial, self.kl_target)  # type: ignore[arg-type]

    def _setup_model(self) -> None:
        # Called again by load(), after __dict__ was restored and updated with load()'s keyword arguments and
        # custom_objects: parse what those may have replaced (schedule strings), and let the controller see new
        # settings, but keep what was learned (an adapted beta lives in kl_controller.value). The constructor
        # validated its arguments already; values replaced at load time are the user's, as in SB3.
        self.__dict__.update(_parsed_load_coefficients({name: getattr(self, name) for name in _COEFFICIENTS}))
        if isinstance(self.kl_controller, FixedKLController):
            self.kl_controller.kl_coef = self.kl_coef  # type: ignore[assignment]
        elif isinstance(self.kl_controller, (AdaptiveKLController, ProportionalKLController)) and self.kl_target is not None:
            self.kl_controller.kl_target = float(self.kl_target)
        if isinstance(self.kl_controller, ProportionalKLController):
            self.kl_controller.horizon = float(self.kl_horizon)
        self.host.prepare_buffer(self)
        super()._setup_model()
        self.host.finish_buffer(self)
        self.reference_policy = self._make_reference_policy()

    def _make_reference_policy(self) -> BasePolicy | None:
        """The frozen reference policy of ``kl_reference`` (built again by ``load()``, from the saved setting)."""
        reference = self.kl_reference
        if reference is None:
            return None
        if isinstance(reference, BasePolicy):
            policy = copy.deepcopy(reference)
        else:
            path = os.fspath(reference)
            from_pretrained = getattr(self.policy_class, "from_pretrained", None)
            try:
                if os.path.isdir(path) and from_pretrained is not None:
                    policy = from_pretrained(path, self.observation_space, self.action_space)
                elif os.path.isfile(path):
                    policy = self.policy_class.load(path, device=self.device)  # type: ignore[attr-defined]
                else:
                    raise ValueError(
                        "it is neither a directory that the policy class's from_pretrained reads nor a file of policy.save"
                    )
            except (OSError, ValueError, KeyError, RuntimeError, TypeError) as error:
                raise ValueError(f"kl_reference={path!r}: cannot load a reference policy: {error}") from error
        policy = policy.to(self.device)
        policy.set_training_mode(False)
        policy.requires_grad_(False)
        self._check_reference(policy)
        return policy

    def _check_reference(self, reference: BasePolicy) -> None:
        """A reference must read the policy's observations and give a distribution over the policy's actions."""
        name = f"kl_reference={self.kl_reference!r}" if not isinstance(self.kl_reference, BasePolicy) else "kl_reference"
        if reference.action_space != self.action_space:
            raise ValueError(
                f"{name}: its action space {reference.action_space} does not match the policy's {self.action_space} "
                "(for a language model: the reference must have the policy's vocabulary)"
            )
        if reference.observation_space.shape != self.observation_space.shape:
            raise ValueError(
                f"{name}: its observation space {reference.observation_space} does not match the policy's "
                f"{self.observation_space}"
            )
        observation, _ = self.policy.obs_to_tensor(self.observation_space.sample())
        try:
            with th.no_grad():
                width = distribution_params(reference.get_distribution(observation)).shape[-1]  # type: ignore[attr-defined, operator]
                expected = distribution_params(self.policy.get_distribution(observation)).shape[-1]  # type: ignore[attr-defined]
        except (RuntimeError, ValueError, TypeError, IndexError) as error:
            raise ValueError(f"{name}: the reference cannot evaluate the policy's observations: {error}") from error
        if width != expected:
            raise ValueError(f"{name}: its distribution has {width} parameters, the policy's {expected}")

    def _excluded_save_params(self) -> list[str]:
        # The frozen reference is built again from kl_reference (a saved path, or the pickled policy) by load().
        return [*super()._excluded_save_params(), "reference_policy"]

    def collect_rollouts(  # type: ignore[override]
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: RolloutBuffer,
        n_rollout_steps: int,
        *args: Any,
        **kwargs: Any,
    ) -> bool:
        """The host's collection, plus the distribution of each step's forward pass stored in the buffer.

        A forward hook on the policy sees ``policy(obs)`` -- the call that picks the actions -- and
        nothing else (``predict``, used by callbacks such as EvalCallback, does not go through it).
        """
        assert isinstance(rollout_buffer, OldDistributionBufferMixin)

        policy = self.policy
        reference = self.reference_policy
        if reference is not None and self.kl_reference_in == "reward" and self.kl_controller is not None:
            rollout_buffer.reward_kl_coef = self.kl_controller.begin_update(self._current_progress_remaining)

        def store(module: th.nn.Module, inputs: Any, outputs: Any) -> None:
            if module is policy:  # a deepcopy of the policy (taken by a callback) carries the hook too
                rollout_buffer.store_old_distribution(distribution_params(module.action_dist))  # type: ignore[arg-type]
                if reference is not None:  # once per collected step, without gradients
                    with th.no_grad():
                        reference_params = distribution_params(reference.get_distribution(inputs[0]))  # type: ignore[attr-defined, operator]
                    rollout_buffer.store_distribution("ref_dist_params", reference_params)
                    rollout_buffer.store_reference_kl(reference_kl(module.action_dist, reference_params))  # type: ignore[arg-type]

        handle = policy.register_forward_hook(store)
        try:
            return super().collect_rollouts(env, callback, rollout_buffer, n_rollout_steps, *args, **kwargs)
        finally:
            handle.remove()

    def _actions(self, actions: th.Tensor) -> th.Tensor:
        if isinstance(self.action_space, spaces.Discrete):
            # Convert discrete action from float to long
            return actions.long().flatten()
        return actions

    @th.no_grad()
    def _rollout_kl(self) -> tuple[float, float]:
        """Mean exact KL(pi_old || pi) over the whole rollout, with the policy as it is now, and the mean
        KL(pi || pi_ref) to the reference policy (0 without one).

        Reads the buffer in order (``host.ordered_samples``) in evaluation mode (as at collection time): no random
        numbers are drawn and no BatchNorm statistics move, so the random streams, the network's state and
        ClipPPO's equality with SB3's PPO are untouched.
        """
        self.policy.set_training_mode(False)
        buffer = self.rollout_buffer
        size = buffer.buffer_size * buffer.n_envs
        chunk = max(self.batch_size or size, 1024)
        total = total_reference = 0.0
        for start in range(0, size, chunk):
            data = self.host.ordered_samples(buffer, np.arange(start, min(start + chunk, size)))
            self.host.evaluate(self.policy, data, self._actions(data.actions))
            dist = self.policy.action_dist  # type: ignore[attr-defined]
            total += _valid_steps(exact_kl(data.old_dist_params, dist), self.host.valid(data)).sum().item()
            if self.reference_policy is not None:
                total_reference += _valid_steps(reference_kl(dist, data.ref_dist_params), self.host.valid(data)).sum().item()
        return total / size, total_reference / size

    def _update_current_progress_remaining(self, num_timesteps: int, total_timesteps: int) -> None:
        # SB3 collects whole rollouts, so num_timesteps can pass total_timesteps (a rollout larger than the
        # budget): without the clamp, a "lin_0.01" entropy coefficient would turn negative.
        super()._update_current_progress_remaining(num_timesteps, total_timesteps)
        self._current_progress_remaining = min(1.0, max(0.0, self._current_progress_remaining))

    def train(self) -> None:
        """Update policy using the currently gathered rollout buffer."""
        # Switch to train mode (this affects batch norm / dropout)
        self.policy.set_training_mode(True)
        # Update optimizer learning rate
        self._update_learning_rate(self.policy.optimizer)
        progress = self._current_progress_remaining
        clip_range = self.clip_range(progress)  # type: ignore[operator]
        clip_range_vf = None if self.clip_range_vf is None else self.clip_range_vf(progress)  # type: ignore[operator]
        ent_coef = schedule_value(self.ent_coef, progress)
        anchored = self.reference_policy is not None
        in_reward = anchored and self.kl_reference_in == "reward"
        buffer: Any = self.rollout_buffer
        if self.kl_controller is None:
            kl_coef = 0.0
        else:  # in the reward, beta was chosen at collection
            kl_coef = buffer.reward_kl_coef if in_reward else self.kl_controller.begin_update(progress)
        clipped = self.surrogate != "unclipped"
        penalised = self.kl_controller is not None and not in_reward

        entropy_losses, pg_losses, value_losses, clip_fractions, kl_penalties = [], [], [], [], []
        approx_kl_divs: list[np.ndarray] = []
        continue_training = True
        # train for n_epochs epochs
        for epoch in range(self.n_epochs):
            approx_kl_divs = []
            # Do a complete pass on the rollout buffer
            rollout_data: Any
            for rollout_data in self.rollout_buffer.get(self.batch_size):
                actions = self._actions(rollout_data.actions)
                values, log_prob, entropy = self.host.evaluate(self.policy, rollout_data, actions)
                # Every term is a mean over the real steps (all of them, but for a recurrent host's padding).
                valid = self.host.valid(rollout_data)
                values, log_prob = _valid_steps(values.flatten(), valid), _valid_steps(log_prob, valid)
                entropy = None if entropy is None else _valid_steps(entropy, valid)
                old_log_prob = _valid_steps(rollout_data.old_log_prob, valid)
                old_values, returns = _valid_steps(rollout_data.old_values, valid), _valid_steps(rollout_data.returns, valid)
                # Normalize advantage (does not make sense if mini batchsize == 1, see GH issue #325)
                advantages = _valid_steps(rollout_data.advantages, valid)
                if self.normalize_advantage and len(advantages) > 1:
                    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

                # ratio between old and new policy, should be one at the first iteration
                ratio = th.exp(log_prob - old_log_prob)
                if self.surrogate == "clipped":
                    policy_loss = losses.clipped_surrogate_loss(ratio, advantages, clip_range)
                elif self.surrogate == "dual_clip":
                    policy_loss = losses.dual_clip_surrogate_loss(ratio, advantages, clip_range, self.dual_clip)
                else:
                    policy_loss = losses.unclipped_surrogate_loss(ratio, advantages)
                pg_losses.append(policy_loss.item())
                clip_fractions.append(losses.clip_fraction(ratio, clip_range).item())

                v_loss = losses.value_loss(values, old_values, returns, clip_range_vf)
                value_losses.append(v_loss.item())
                e_loss = losses.entropy_loss(entropy, log_prob)
                entropy_losses.append(e_loss.item())

                loss = policy_loss + ent_coef * e_loss + self.vf_coef * v_loss
                terms = {
                    "policy_gradient_loss": pg_losses[-1],
                    "value_loss": value_losses[-1],
                    "entropy_loss": entropy_losses[-1],
                }
                if penalised:
                    if anchored:
                        kl = _valid_steps(reference_kl(self.policy.action_dist, rollout_data.ref_dist_params), valid).mean()  # type: ignore[attr-defined]
                    elif self.kl_estimator == "exact":
                        kl = _valid_steps(exact_kl(rollout_data.old_dist_params, self.policy.action_dist), valid).mean()  # type: ignore[attr-defined]
                    else:
                        kl = sampled_kl(log_prob - old_log_prob, self.kl_estimator).mean()
                    loss = loss + kl_coef * kl
                    kl_penalties.append(kl.item())
                    terms["kl_penalty"] = kl_penalties[-1]
                self._check_finite(terms, kl_coef)

                # Approximate reverse KL for early stopping (SB3 issue #417, http://joschu.net/blog/kl-approx.html)
                with th.no_grad():
                    log_ratio = log_prob - old_log_prob
                    approx_kl_div = th.mean((th.exp(log_ratio) - 1) - log_ratio).cpu().numpy()
                    approx_kl_divs.append(approx_kl_div)

                if self.target_kl is not None and approx_kl_div > 1.5 * self.target_kl:
                    continue_training = False
                    if self.verbose >= 1:
                        print(f"Early stopping at step {epoch} due to reaching max kl: {approx_kl_div:.2f}")
                    break

                # Optimization step
                self.policy.optimizer.zero_grad()
                loss.backward()
                # Clip grad norm
                th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                self.policy.optimizer.step()

            self._n_updates += 1
            if not continue_training:
                break

        rollout_kl, rollout_reference_kl = self._rollout_kl()
        if self.kl_controller is not None:
            # the KL the penalty measures: to pi_old, to the reference after the update, or to it at collection
            anchor_kl = float(buffer.reference_kl.mean()) if in_reward else rollout_reference_kl if anchored else rollout_kl
            self.kl_controller.end_update(anchor_kl, n_steps=buffer.buffer_size * buffer.n_envs)
        explained_var = explained_variance(self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten())

        # Logs: SB3's PPO keys unchanged, then ours
        self.logger.record("train/entropy_loss", np.mean(entropy_losses))
        self.logger.record("train/policy_gradient_loss", np.mean(pg_losses))
        self.logger.record("train/value_loss", np.mean(value_losses))
        self.logger.record("train/approx_kl", np.mean(approx_kl_divs))
        self.logger.record("train/clip_fraction", np.mean(clip_fractions))
        self.logger.record("train/loss", loss.item())
        self.logger.record("train/explained_variance", explained_var)
        if hasattr(self.policy, "log_std"):
            self.logger.record("train/std", th.exp(self.policy.log_std).mean().item())
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        if clipped:
            self.logger.record("train/clip_range", clip_range)
        if clip_range_vf is not None:
            self.logger.record("train/clip_range_vf", clip_range_vf)
        self.logger.record("train/kl", rollout_kl)
        if anchored:
            self.logger.record("train/kl_ref", rollout_reference_kl)
        self.logger.record("train/kl_coef", kl_coef)
        self.logger.record("train/ent_coef", ent_coef)
        if kl_penalties:
            self.logger.record("train/kl_penalty", np.mean(kl_penalties))

    def _check_finite(self, terms: dict[str, float], kl_coef: float) -> None:
        bad = [name for name, value in terms.items() if not math.isfinite(value)]
        if bad:
            details = ", ".join(f"{name}={terms[name]}" for name in bad)
            raise NonFiniteLossError(
                f"{type(self).__name__}: non-finite loss term(s) at update {self._n_updates + 1} "
                f"(timestep {self.num_timesteps}): {details} (kl_coef={kl_coef}). "
                "Lower the learning rate, raise kl_coef or enable clipping."
            )

    def learn(  # type: ignore[override]
        self: SelfVariantAlgorithm,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str | None = None,
        reset_num_timesteps: bool = True,
        *args: Any,
        **kwargs: Any,
    ) -> SelfVariantAlgorithm:
        """The host's ``learn`` (``progress_bar``; MaskablePPO's ``use_masking``), runs named after the class."""
        with _distribution_validation_off():
            return super().learn(  # type: ignore[misc]
                total_timesteps,
                callback,
                log_interval,
                tb_log_name or type(self).__name__,
                reset_num_timesteps,
                *args,
                **kwargs,
            )


def _valid_steps(values: th.Tensor, valid: th.Tensor | None) -> th.Tensor:
    """The entries of a (batch,) tensor at the valid steps; the tensor itself when every step is valid."""
    return values if valid is None else values[valid]


class VariantPPO(VariantAlgorithm, PPO):  # type: ignore[misc]
    """
    PPO with a loss composed of a surrogate (clipped or not), an optional KL penalty with a fixed,
    scheduled or adaptive coefficient, and an entropy bonus whose coefficient may follow a schedule.

    Paper: https://arxiv.org/abs/1707.06347 (clipping: section 3; KL penalty: section 4)

    Takes every argument of :class:`stable_baselines3.PPO` with the same meaning, and those of
    :class:`VariantAlgorithm` (``surrogate``, ``kl_penalty``, ``kl_coef``, ``kl_target``, ``kl_estimator``,
    ``dual_clip``). With ``surrogate="clipped"`` and ``kl_penalty="none"`` it gives the same numbers as
    ``stable_baselines3.PPO`` for the same seed and arguments.
    """

    host = PPO_HOST


class MaskableVariantPPO(VariantAlgorithm, MaskablePPO):  # type: ignore[misc]
    """
    sb3-contrib's MaskablePPO (invalid action masking, https://arxiv.org/abs/2006.14171) with the variant loss of
    :class:`VariantAlgorithm`. The new distribution is evaluated under the masks of collection time, so the exact
    KL is the masked distributions' (masked actions add 0). Takes every argument of
    :class:`sb3_contrib.MaskablePPO` (its ``learn(use_masking=...)`` and ``predict(action_masks=...)`` too) and
    those of :class:`VariantAlgorithm`. With ``surrogate="clipped"`` and ``kl_penalty="none"`` it gives the same
    numbers as ``MaskablePPO`` for the same seed and arguments.
    """

    host = MASKABLE_PPO_HOST


class RecurrentVariantPPO(VariantAlgorithm, RecurrentPPO):  # type: ignore[misc]
    """
    sb3-contrib's RecurrentPPO (LSTM policies) with the variant loss of :class:`VariantAlgorithm`. Minibatches are
    padded sequences; every term (advantage normalisation, surrogate, value loss, entropy, KL) is a mean over the
    real steps, and padded steps get a neutral stored distribution (finite KL and gradient). Takes every argument of
    :class:`sb3_contrib.RecurrentPPO` and those of :class:`VariantAlgorithm`. With ``surrogate="clipped"`` and
    ``kl_penalty="none"`` it gives the same numbers as ``RecurrentPPO`` for the same seed and arguments.
    """

    host = RECURRENT_PPO_HOST
