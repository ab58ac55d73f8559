"""One PPO training loop whose loss is composed of switchable terms; the named variants are settings of it.

Read it in the order it runs: ``learn()`` (the host's) -> :meth:`VariantAlgorithm.collect_rollouts` (a forward hook
stores each step's distribution, and the reference's where there is one) -> :meth:`VariantAlgorithm.train` (the loss,
term by term, from :mod:`sb3_ppo_variants.losses` and :mod:`sb3_ppo_variants.kl`) -> the KL controller -> the logger.
What differs per host algorithm (SB3's PPO, sb3-contrib's MaskablePPO and RecurrentPPO) is a handful of small methods of
the host classes at the end of this module.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from sb3_contrib import MaskablePPO, RecurrentPPO
from sb3_contrib.common.maskable.buffers import MaskableDictRolloutBuffer, MaskableRolloutBuffer
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback
from stable_baselines3.common.utils import explained_variance
from stable_baselines3.common.vec_env import VecEnv

from sb3_ppo_variants import losses
from sb3_ppo_variants.buffers import OldDistributionBufferMixin, with_old_distribution
from sb3_ppo_variants.controllers import AdaptiveKLController, FixedKLController, KLController, ProportionalKLController
from sb3_ppo_variants.kl import distribution_params, exact_kl, reference_kl, sampled_kl
from sb3_ppo_variants.reference import KLReference
from sb3_ppo_variants.schedules import ScheduleLike, check_schedule, schedule_value
from sb3_ppo_variants.settings import (
    KL_PENALTIES,
    KL_REFERENCE_PLACES,
    KLDirection,
    KLEstimatorName,
    KLPenaltyName,
    KLReferencePlace,
    SurrogateName,
    VariantSettings,
)

if TYPE_CHECKING:
    import os

    from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
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

#: The registered surrogate terms (``losses.SURROGATES``: add one with ``losses.register_surrogate``).
SURROGATES = losses.SURROGATES


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


#: The host's arguments that take a schedule, with their allowed ranges (keyword arguments of ``check_schedule``);
#: ``kl_coef`` is checked with the settings, and parsed here again when ``load()`` replaces it.
_COEFFICIENTS: dict[str, dict[str, bool]] = {
    "learning_rate": {},
    "clip_range": {"strict": True},
    "clip_range_vf": {"strict": True, "allow_none": True},
    "ent_coef": {},
    "kl_coef": {},
}
_HOST_COEFFICIENTS = ("learning_rate", "clip_range", "clip_range_vf", "ent_coef")


def _parsed_load_coefficients(values: dict[str, Any]) -> dict[str, Any]:
    """The schedule-like attributes as ``load()`` left them: strings (load keyword arguments) parsed and
    validated; floats and callables kept as given, unchecked, as SB3's PPO does -- ``custom_objects`` such as
    ``{"clip_range": lambda _: 0.0}`` (SB3's documented way to load a model for inference, used by rl-zoo3's
    ``enjoy``) must load."""
    return {
        name: check_schedule(values[name], name, **rules) if isinstance(values[name], str) else values[name]
        for name, rules in _COEFFICIENTS.items()
    }


def _arguments(local_variables: dict[str, Any]) -> dict[str, Any]:
    """A host class's ``__init__`` arguments, from its ``locals()``."""
    return {name: value for name, value in local_variables.items() if name not in ("self", "__class__")}


class VariantAlgorithm(_Host):
    """
    The variant logic, composed onto a PPO-like host algorithm (listed before the host in the bases): a loss composed
    of a surrogate, an optional KL penalty with a fixed, scheduled or adaptive coefficient, and an entropy bonus whose
    coefficient may follow a schedule. One training loop for every host (SB3's PPO, sb3-contrib's MaskablePPO and
    RecurrentPPO).

    Paper: https://arxiv.org/abs/1707.06347 (clipping: section 3; KL penalty: section 4)

    Every class takes its host's parameters first, in the host's order and with the host's defaults, positionally or
    by keyword, with the same meaning (see the host's docstring); ``learning_rate``, ``clip_range``,
    ``clip_range_vf``, ``ent_coef`` and ``kl_coef`` also accept a schedule string such as ``"lin_0.01"`` (grammar in
    :mod:`sb3_ppo_variants.schedules`). The settings below follow, keyword-only; one left at ``None`` takes the class's
    default (:attr:`defaults`): the named variants (``ClipPPO``, ``KLPPO``, ``AdaptiveKLPPO``, ``ClipKLPPO``) are
    these classes with other defaults.

    :param surrogate: a name registered in :data:`sb3_ppo_variants.losses.SURROGATES` or a function
        ``fn(ratio, advantages, clip_range) -> Tensor`` (the term to minimise, averaged over the last axis; extra
        parameters named like a setting, such as ``dual_clip``, get it by keyword). Built in: ``"clipped"``:
        min(r A, clip(r, 1 - clip_range, 1 + clip_range) A); ``"unclipped"``: r A (``clip_range`` then only feeds the
        ``train/clip_fraction`` diagnostic); ``"dual_clip"``: the clipped term, bounded below by ``dual_clip * A``
        where A < 0 (Ye et al. 2020); ``"spo"``: r A - |A| / (2 clip_range) (r - 1)^2 (Xie et al. 2024).
        Add one with ``losses.register_surrogate``.
    :param dual_clip: c > 1 of the ``"dual_clip"`` surrogate (3.0 in the paper); ignored by the others
    :param kl_penalty: a :class:`~sb3_ppo_variants.controllers.KLController` object (used as given, its state saved
        with the model; ``kl_coef``, ``kl_target`` and ``kl_horizon`` are then not read), or ``"none"``, ``"fixed"``
        (beta = ``kl_coef``, possibly scheduled), ``"adaptive"`` (beta starts at ``kl_coef`` and is halved or doubled
        after each update to keep the mean KL near ``kl_target``) or ``"proportional"`` (Ziegler et al. 2019, as in
        Hugging Face TRL: ``beta *= 1 + clip(d / kl_target - 1, -0.2, 0.2) * n / kl_horizon`` after each update).
        Without a ``kl_reference``, d is the mean KL per step and n the steps collected for the update; with one, TRL's
        units: d is the KL per response (an episode: the KL summed over its steps) and n the responses that ended in
        the rollout (no change when none did). The current beta is ``model.kl_controller.value``.
    :param kl_coef: beta >= 0; with ``"adaptive"`` or ``"proportional"``, the initial beta (its value at progress 1)
    :param kl_target: d_targ > 0 of the adaptive and proportional rules (a KL per step; per response with a
        ``kl_reference`` and the proportional rule). Not SB3's ``target_kl``, which stops the epoch loop early when the
        approximate KL exceeds 1.5 * target_kl; both can be used together.
    :param kl_horizon: the horizon of the proportional rule: steps, or responses with a ``kl_reference`` (10000 in TRL)
    :param kl_estimator: how the KL penalty is estimated. For the KL to pi_old: ``"exact"`` (analytic, from the old
        distribution's parameters stored at collection time) or Schulman's sampled ``"k1"``, ``"k2"``, ``"k3"`` (or one
        added with ``kl.register_kl_estimator``). ``train/kl`` and the controllers always use the exact KL. For a
        ``kl_reference`` in the loss: ``"exact"`` only. In the reward (TRL's ``kl_penalty``), at the sampled action
        a_t: ``"k1"`` (default), log pi_old(a_t) - log pi_ref(a_t); ``"abs"``, its absolute value; ``"k2"``, half its
        square; ``"k3"``, (r - 1) - log r with r = pi_ref(a_t) / pi_old(a_t); or ``"full"``, the exact KL over the
        actions (which, a function of the state only, puts no pull on the sampled action).
    :param kl_direction: the direction of the KL to pi_old: ``"forward"``, KL(pi_old || pi), the paper's; or
        ``"reverse"``, KL(pi || pi_old) (exact, or the reverse sampled estimators). With a ``kl_reference`` the
        penalty is KL(pi || pi_ref) and this stays ``"forward"``.
    :param kl_reference: the anchor of the KL penalty. None: the paper's KL to the policy that collected the rollout.
        A policy (or another model's ``kl_reference``), or the path of a saved one (a directory the policy class's
        ``from_pretrained`` reads, such as a ``TransformerPolicy``'s ``save_pretrained``, or a file of SB3's
        ``policy.save``): a frozen copy is taken at construction (``model.kl_reference``, a
        :class:`~sb3_ppo_variants.reference.KLReference`), saved with its weights in the model's zip (``load()`` needs
        neither the object nor the path) and anchors KL(pi || pi_ref), as in RLHF. It runs once per collected step,
        without gradients, under the step's action masks on MaskablePPO hosts; it never runs in the update. It must
        take the policy's observations and have its action space (for a language model: its vocabulary). Needs a
        ``kl_penalty``; logged as ``train/kl_ref`` (per step) and ``train/kl_ref_per_response`` (summed over an
        episode). Not on RecurrentPPO hosts.
    :param kl_reference_in: where the KL to the reference enters: ``"loss"`` (beta * KL(pi || pi_ref) per step,
        exact, GRPO style) or ``"reward"`` (TRL's PPO: beta * k(a_t) of each collected step subtracted from its
        reward before GAE, with k the ``kl_estimator`` at the sampled action; beta is the one in force at collection)
    """

    #: The class's settings (keyword arguments of :class:`~sb3_ppo_variants.settings.VariantSettings`) where they
    #: differ from ``VariantSettings``'s: a setting passed as None (the signature's default) takes its value here.
    defaults: ClassVar[dict[str, Any]] = {}
    #: The switches a named variant's name commits it to: setting -> the values allowed (a class in the tuple allows
    #: its instances, as ``KLController`` does a user's controller). A value outside is a ``ValueError`` naming both
    #: the setting and the variant: ``ClipPPO(surrogate="spo")`` would be SPO under the name ClipPPO.
    #: :class:`VariantPPO` and its host siblings allow everything.
    allowed: ClassVar[dict[str, tuple[Any, ...]]] = {}
    #: the key of ``VARIANTS`` of the plain variant the class is (None for the general classes)
    variant: ClassVar[str | None] = None
    #: whether this host can evaluate a reference policy at collection (RecurrentPPO's LSTM states cannot be shared)
    supports_reference: ClassVar[bool] = True
    #: the host's default buffers (for a Dict and for any other observation space)
    default_buffers: ClassVar[tuple[type[RolloutBuffer], type[RolloutBuffer]]] = (DictRolloutBuffer, RolloutBuffer)

    # The settings, after validation (see VariantSettings): the class's defaults filled in.
    surrogate: str | losses.SurrogateFn
    dual_clip: float
    kl_penalty: str | KLController
    kl_coef: ScheduleLike
    kl_target: float | None
    kl_horizon: float
    kl_estimator: str
    kl_direction: str
    kl_reference_in: str
    kl_controller: KLController | None
    kl_reference: KLReference | None
    # Set by the host algorithms (PPO, MaskablePPO, RecurrentPPO), which all have these arguments.
    clip_range: Any
    clip_range_vf: Any
    batch_size: Any  # int; or None with sb3-contrib's hosts: the whole rollout in one minibatch
    n_epochs: int
    normalize_advantage: bool
    target_kl: float | None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # inspect.signature(cls) (help(), IDEs that ask Python) shows the class's defaults in place of the None that
        # means "the class's default" in the inherited __init__.
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__ or cls.defaults:
            signature = inspect.signature(cls.__init__)
            parameters = list(signature.parameters.values())[1:]
            resolved = {**VariantSettings.defaults(), **cls.defaults}
            cls.__signature__ = signature.replace(  # type: ignore[attr-defined]
                parameters=[p.replace(default=resolved[p.name]) if p.name in resolved else p for p in parameters]
            )

    def _init_variant(self, arguments: dict[str, Any]) -> None:
        """Validate the settings, then build the host with its arguments (called by each host class's ``__init__``)."""
        given = {name: arguments.pop(name) for name in VariantSettings.names()}
        defaults = {**VariantSettings.defaults(), **type(self).defaults}
        # Validate before the host builds environments, so bad input fails fast and clearly.
        self._check_allowed({name: value for name, value in given.items() if value is not None})
        settings = VariantSettings(**{name: defaults[name] if value is None else value for name, value in given.items()})
        if settings.kl_reference is not None and not self.supports_reference:
            raise ValueError(f"kl_reference is not supported on RecurrentPPO hosts ({type(self).__name__})")
        self.__dict__.update(vars(settings))
        for name in _HOST_COEFFICIENTS:
            arguments[name] = check_schedule(arguments[name], name, **_COEFFICIENTS[name])
        target_kl = arguments["target_kl"]
        if target_kl is not None and not target_kl > 0:
            raise ValueError(f"target_kl must be > 0 or None, got {target_kl!r}")
        self.kl_controller = self._make_kl_controller()

        init_setup_model = arguments.pop("_init_setup_model")
        super().__init__(**arguments, _init_setup_model=False)
        if init_setup_model:
            self._setup_model()

    @classmethod
    def _check_allowed(cls, given: dict[str, Any]) -> None:
        """The settings passed explicitly (before any other check, so the message names the contradiction)."""
        for name, allowed in cls.allowed.items():
            if name not in given:
                continue
            value = given[name]
            if any(value == a if isinstance(a, str) else isinstance(value, a) for a in allowed):
                continue
            named = [a for a in allowed if isinstance(a, str)]
            kinds = " or ".join(repr(a) for a in named) + "".join(
                f" or a {a.__name__}" for a in allowed if not isinstance(a, str)
            )
            has = f"{name}={named[0]!r}" if len(allowed) == 1 else f"{name} {kinds}"
            raise ValueError(
                f"{name}={value!r} contradicts variant {cls.variant!r} ({cls.__name__} has {has}); "
                "use VariantPPO (variant 'variant_ppo') to choose every switch"
            )

    def _make_kl_controller(self) -> KLController | None:
        if isinstance(self.kl_penalty, KLController):
            return self.kl_penalty
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
        if isinstance(self.kl_penalty, KLController):
            # the user's controller: pickled once as the setting and once as the controller; one object again
            self.kl_penalty = self.kl_controller  # type: ignore[assignment]
        elif isinstance(self.kl_controller, FixedKLController):
            self.kl_controller.kl_coef = self.kl_coef  # type: ignore[assignment]
        elif isinstance(self.kl_controller, (AdaptiveKLController, ProportionalKLController)) and self.kl_target is not None:
            self.kl_controller.kl_target = float(self.kl_target)
        if isinstance(self.kl_controller, ProportionalKLController) and not isinstance(self.kl_penalty, KLController):
            self.kl_controller.horizon = float(self.kl_horizon)
        self._prepare_buffer()
        super()._setup_model()
        self._finish_buffer()
        # The frozen reference: built from the setting at construction; after load(), the saved frozen copy itself.
        if self.kl_reference is not None and not isinstance(self.kl_reference, KLReference):
            self.kl_reference = KLReference.build(self.kl_reference, self)
        if self.kl_reference is not None:
            self.kl_reference.to(self.device)
            # the reference's full rows are kept only for the exact KL to it in the update (or TRL's "full")
            buffer: Any = self.rollout_buffer
            buffer.keeps_reference_rows = self.kl_reference_in == "loss" or self.kl_estimator == "full"
            buffer.reset()

    @property
    def reference_policy(self) -> BasePolicy | None:
        """The frozen reference policy (``kl_reference.policy``), or None."""
        return None if self.kl_reference is None else self.kl_reference.policy

    def collect_rollouts(  # type: ignore[override]
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: RolloutBuffer,
        n_rollout_steps: int,
        *args: Any,
        **kwargs: Any,
    ) -> bool:
        """The host's collection, plus the distribution of each step's forward pass stored in the buffer (and, with a
        reference, the reference's log-probability of the action taken and its KL: see :meth:`_store_reference_step`).

        A forward hook on the policy sees ``policy(obs, ...)`` -- the call that picks the actions -- and
        nothing else (``predict``, used by callbacks such as EvalCallback, does not go through it).
        """
        assert isinstance(rollout_buffer, OldDistributionBufferMixin)
        policy = self.policy
        in_reward = self.kl_reference is not None and self.kl_reference_in == "reward"
        if in_reward and self.kl_controller is not None:
            rollout_buffer.reward_kl_coef = self.kl_controller.begin_update(self._current_progress_remaining)

        def store(module: th.nn.Module, args: tuple[Any, ...], call_kwargs: dict[str, Any], outputs: Any) -> None:
            if module is policy:  # a deepcopy of the policy (taken by a callback) carries the hook too
                rollout_buffer.store_old_distribution(distribution_params(module.action_dist))  # type: ignore[arg-type]
                if self.kl_reference is not None:
                    self._store_reference_step(rollout_buffer, args[0], call_kwargs, outputs)

        handle = policy.register_forward_hook(store, with_kwargs=True)
        try:
            return super().collect_rollouts(env, callback, rollout_buffer, n_rollout_steps, *args, **kwargs)
        finally:
            handle.remove()

    def _store_reference_step(
        self, buffer: OldDistributionBufferMixin, observations: Any, call_kwargs: dict[str, Any], outputs: Any
    ) -> None:
        """Evaluate the reference on a collection step (once, without gradients) and record what the update needs:
        its full distribution only where the exact KL to it is needed (``keeps_reference_rows``); always the
        log-probability of the action taken and the KL to it -- the exact KL(pi_old || pi_ref), or with the reward
        placement the estimate k(a_t) at the sampled action (TRL's per-token penalty)."""
        assert self.kl_reference is not None
        dist: Distribution = self.policy.action_dist  # type: ignore[assignment]
        actions, log_prob = outputs[0], outputs[2]
        reference = self.kl_reference.distribution(self, observations, call_kwargs)
        with th.no_grad():
            reference_params = distribution_params(reference)
            if buffer.keeps_reference_rows:
                buffer.store_distribution("ref_dist_params", reference_params)
            reference_log_prob = reference.log_prob(actions)
            if self.kl_reference_in == "loss" or self.kl_estimator == "full":
                kl = reference_kl(dist, reference_params)
            else:  # with log r = log pi_ref(a_t) - log pi_old(a_t): k1 = -log r, k2 = (log r)^2 / 2, ...
                kl = sampled_kl(reference_log_prob - log_prob, self.kl_estimator, "forward")  # type: ignore[arg-type]
        buffer.store_reference_step(reference_log_prob, kl)

    def _actions(self, actions: th.Tensor) -> th.Tensor:
        if isinstance(self.action_space, spaces.Discrete):
            # Convert discrete action from float to long
            return actions.long().flatten()
        return actions

    @th.no_grad()
    def _rollout_kl(self) -> tuple[float, float]:
        """Mean exact KL(pi_old || pi) (or KL(pi || pi_old), per ``kl_direction``) over the whole rollout, with the
        policy as it is now, and the mean KL(pi || pi_ref) to the reference policy (0 where its rows are not kept).

        Reads the buffer in order (:meth:`_ordered_samples`) in evaluation mode (as at collection time): no random
        numbers are drawn and no BatchNorm statistics move, so the random streams, the network's state and
        ClipPPO's equality with SB3's PPO are untouched.
        """
        self.policy.set_training_mode(False)
        buffer = self.rollout_buffer
        size = buffer.buffer_size * buffer.n_envs
        chunk = max(self.batch_size or size, 1024)
        total = total_reference = 0.0
        for start in range(0, size, chunk):
            data = self._ordered_samples(np.arange(start, min(start + chunk, size)))
            self._evaluate(data, self._actions(data.actions))
            dist = self.policy.action_dist  # type: ignore[attr-defined]
            valid = self._valid(data)
            total += _valid_steps(exact_kl(data.old_dist_params, dist, self.kl_direction), valid).sum().item()
            if data.ref_dist_params is not None:
                total_reference += _valid_steps(reference_kl(dist, data.ref_dist_params), valid).sum().item()
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
        surrogate = losses.get_surrogate(self.surrogate)
        surrogate_options = losses.surrogate_options(surrogate, {"dual_clip": self.dual_clip})
        anchored = self.kl_reference is not None
        in_reward = anchored and self.kl_reference_in == "reward"
        buffer: Any = self.rollout_buffer
        if self.kl_controller is None:
            kl_coef = 0.0
        else:  # in the reward, beta was chosen at collection
            kl_coef = buffer.reward_kl_coef if in_reward else self.kl_controller.begin_update(progress)
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
                values, log_prob, entropy = self._evaluate(rollout_data, actions)
                # Every term is a mean over the real steps (all of them, but for a recurrent host's padding).
                valid = self._valid(rollout_data)
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
                policy_loss = surrogate(ratio, advantages, clip_range, **surrogate_options)
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
                    kl = self._kl_penalty(rollout_data, log_prob - old_log_prob, valid)
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
        # The KL to the reference: per step (at collection in the reward placement, after the update in the loss) and,
        # in TRL's units, per response (an episode: the KL summed over its steps), where a response ended.
        steps, responses = buffer.buffer_size * buffer.n_envs, buffer.responses()
        reference_kl_per_step = float(buffer.reference_kl.mean()) if in_reward else rollout_reference_kl
        reference_kl_per_response = reference_kl_per_step * steps / responses if responses else None
        if self.kl_controller is not None:
            self._end_controller_update(rollout_kl, reference_kl_per_step, reference_kl_per_response, responses)
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
        if self.surrogate != "unclipped":
            self.logger.record("train/clip_range", clip_range)
        if clip_range_vf is not None:
            self.logger.record("train/clip_range_vf", clip_range_vf)
        self.logger.record("train/kl", rollout_kl)
        if anchored:
            self.logger.record("train/kl_ref", reference_kl_per_step)
            if reference_kl_per_response is not None:
                self.logger.record("train/kl_ref_per_response", reference_kl_per_response)
        self.logger.record("train/kl_coef", kl_coef)
        self.logger.record("train/ent_coef", ent_coef)
        if kl_penalties:
            self.logger.record("train/kl_penalty", np.mean(kl_penalties))

    def _kl_penalty(self, rollout_data: Any, log_ratio: th.Tensor, valid: th.Tensor | None) -> th.Tensor:
        """The KL term of a minibatch, a mean over its real steps: KL(pi || pi_ref) to the reference (exact), or the
        KL to pi_old in ``kl_direction``, exact or by a sampled estimator of ``log_ratio = log pi - log pi_old``."""
        dist: Distribution = self.policy.action_dist  # type: ignore[assignment]
        if self.kl_reference is not None:
            return _valid_steps(reference_kl(dist, rollout_data.ref_dist_params), valid).mean()
        if self.kl_estimator == "exact":
            return _valid_steps(exact_kl(rollout_data.old_dist_params, dist, self.kl_direction), valid).mean()
        return sampled_kl(log_ratio, self.kl_estimator, self.kl_direction).mean()  # type: ignore[arg-type]

    def _end_controller_update(
        self, rollout_kl: float, reference_kl_per_step: float, reference_kl_per_response: float | None, responses: int
    ) -> None:
        """Give the controller the KL the penalty measures: to pi_old (per step, n = steps), or to the reference: in
        TRL's units for the proportional rule (per response, n = responses that ended in the rollout; no change when
        none did), per step for the others."""
        assert self.kl_controller is not None
        buffer: Any = self.rollout_buffer
        steps = buffer.buffer_size * buffer.n_envs
        if self.kl_reference is None:
            self.kl_controller.end_update(rollout_kl, n_steps=steps)
        elif isinstance(self.kl_controller, ProportionalKLController):
            if reference_kl_per_response is not None:
                self.kl_controller.end_update(reference_kl_per_response, n_steps=responses)
        else:
            self.kl_controller.end_update(reference_kl_per_step, n_steps=steps)

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

    # What differs per host: SB3's PPO here (minibatches of independent steps, all valid); overridden below.

    def _prepare_buffer(self) -> None:
        """Before the host's ``_setup_model``: make its rollout buffer class one that keeps the distributions."""
        base = self.rollout_buffer_class
        if base is None:
            base = self.default_buffers[0] if isinstance(self.observation_space, spaces.Dict) else self.default_buffers[1]
        self.rollout_buffer_class = with_old_distribution(base)

    def _finish_buffer(self) -> None:
        """After the host's ``_setup_model`` (nothing to do where ``rollout_buffer_class`` is honoured)."""

    def _evaluate(self, data: Any, actions: th.Tensor) -> tuple[th.Tensor, th.Tensor, th.Tensor | None]:
        """values, log pi(a|s) and the entropy (or None) on a minibatch; ``policy.action_dist`` is then its distribution."""
        return self.policy.evaluate_actions(data.observations, actions)

    def _valid(self, data: Any) -> th.Tensor | None:
        """(batch,) bool: the minibatch's real steps, over which every mean is taken; None where all are."""
        return None

    def _ordered_samples(self, batch_inds: np.ndarray) -> Any:
        """Samples of the (flattened) rollout at ``batch_inds`` in order, drawing no random numbers."""
        # No public route: get() shuffles (it draws from numpy's global generator, which would change the training
        # run); _get_samples is the method every SB3 and sb3-contrib buffer implements for exactly this.
        return self.rollout_buffer._get_samples(batch_inds)

    def _reference_distribution(self, reference: BasePolicy, observations: Any, call_kwargs: dict[str, Any]) -> Distribution:
        """The reference's distribution on a collection step's observations (``call_kwargs``: the policy call's)."""
        return reference.get_distribution(observations)  # type: ignore[attr-defined, operator]

    def _check_reference_policy(self, reference: BasePolicy, name: str) -> None:
        """Host-specific requirements on a reference policy (none for SB3's PPO)."""


def _valid_steps(values: th.Tensor, valid: th.Tensor | None) -> th.Tensor:
    """The entries of a (batch,) tensor at the valid steps; the tensor itself when every step is valid."""
    return values if valid is None else values[valid]


class VariantPPO(VariantAlgorithm, PPO):  # type: ignore[misc]
    """
    PPO with a loss composed of a surrogate, an optional KL penalty with a fixed, scheduled or adaptive coefficient
    (to pi_old or to a frozen reference policy), and an entropy bonus whose coefficient may follow a schedule.

    Paper: https://arxiv.org/abs/1707.06347 (clipping: section 3; KL penalty: section 4)

    Takes :class:`stable_baselines3.PPO`'s parameters first, in its order, with its defaults and meaning; then,
    keyword-only, the settings of :class:`VariantAlgorithm`. With ``surrogate="clipped"`` and ``kl_penalty="none"``
    (its defaults) it gives the same numbers as ``stable_baselines3.PPO`` for the same seed and arguments.
    """

    def __init__(
        self,
        policy: str | type[ActorCriticPolicy],
        env: GymEnv | str,
        learning_rate: ScheduleLike = 3e-4,
        n_steps: int = 2048,
        batch_size: int = 64,
        n_epochs: int = 10,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        clip_range: ScheduleLike = 0.2,
        clip_range_vf: ScheduleLike | None = None,
        normalize_advantage: bool = True,
        ent_coef: ScheduleLike = 0.0,
        vf_coef: float = 0.5,
        max_grad_norm: float = 0.5,
        use_sde: bool = False,
        sde_sample_freq: int = -1,
        rollout_buffer_class: type[RolloutBuffer] | None = None,
        rollout_buffer_kwargs: dict[str, Any] | None = None,
        target_kl: float | None = None,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
        *,
        surrogate: SurrogateName | str | losses.SurrogateFn | None = None,
        dual_clip: float | None = None,
        kl_penalty: KLPenaltyName | KLController | None = None,
        kl_coef: ScheduleLike | None = None,
        kl_target: float | None = None,
        kl_horizon: float | None = None,
        kl_estimator: KLEstimatorName | str | None = None,
        kl_direction: KLDirection | None = None,
        kl_reference: BasePolicy | KLReference | str | os.PathLike[str] | None = None,
        kl_reference_in: KLReferencePlace | None = None,
    ):
        self._init_variant(_arguments(locals()))


class MaskableVariantPPO(VariantAlgorithm, MaskablePPO):  # type: ignore[misc]
    """
    sb3-contrib's MaskablePPO (invalid action masking, https://arxiv.org/abs/2006.14171) with the variant loss of
    :class:`VariantAlgorithm`. The new distribution, and a reference policy's, are evaluated under the masks of
    collection time, so every exact KL is the masked distributions' (masked actions add 0). Takes
    :class:`sb3_contrib.MaskablePPO`'s parameters first, in its order, with its defaults (its
    ``learn(use_masking=...)`` and ``predict(action_masks=...)`` too); then, keyword-only, the settings of
    :class:`VariantAlgorithm`. With ``surrogate="clipped"`` and ``kl_penalty="none"`` it gives the same numbers as
    ``MaskablePPO`` for the same seed and arguments.
    """

    default_buffers = (MaskableDictRolloutBuffer, MaskableRolloutBuffer)  # type: ignore[assignment]

    def __init__(
        self,
        policy: str | type[MaskableActorCriticPolicy],
        env: GymEnv | str,
        learning_rate: ScheduleLike = 3e-4,
        n_steps: int = 2048,
        batch_size: int | None = 64,
        n_epochs: int = 10,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        clip_range: ScheduleLike = 0.2,
        clip_range_vf: ScheduleLike | None = None,
        normalize_advantage: bool = True,
        ent_coef: ScheduleLike = 0.0,
        vf_coef: float = 0.5,
        max_grad_norm: float = 0.5,
        rollout_buffer_class: type[RolloutBuffer] | None = None,
        rollout_buffer_kwargs: dict[str, Any] | None = None,
        target_kl: float | None = None,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
        *,
        surrogate: SurrogateName | str | losses.SurrogateFn | None = None,
        dual_clip: float | None = None,
        kl_penalty: KLPenaltyName | KLController | None = None,
        kl_coef: ScheduleLike | None = None,
        kl_target: float | None = None,
        kl_horizon: float | None = None,
        kl_estimator: KLEstimatorName | str | None = None,
        kl_direction: KLDirection | None = None,
        kl_reference: BasePolicy | KLReference | str | os.PathLike[str] | None = None,
        kl_reference_in: KLReferencePlace | None = None,
    ):
        self._init_variant(_arguments(locals()))

    def _evaluate(self, data: Any, actions: th.Tensor) -> tuple[th.Tensor, th.Tensor, th.Tensor | None]:
        return self.policy.evaluate_actions(data.observations, actions, action_masks=data.action_masks)  # type: ignore[call-arg]

    def _reference_distribution(self, reference: BasePolicy, observations: Any, call_kwargs: dict[str, Any]) -> Distribution:
        # MaskablePPO collects with policy(obs, action_masks=masks): the reference sees the same masks.
        return reference.get_distribution(observations, action_masks=call_kwargs.get("action_masks"))  # type: ignore[attr-defined, operator]

    def _check_reference_policy(self, reference: BasePolicy, name: str) -> None:
        if not isinstance(reference, MaskableActorCriticPolicy):
            raise ValueError(
                f"{name}: on a MaskablePPO host the reference must be a MaskableActorCriticPolicy (evaluated under the "
                f"action masks of collection time), got {type(reference).__name__}"
            )


class RecurrentVariantPPO(VariantAlgorithm, RecurrentPPO):  # type: ignore[misc]
    """
    sb3-contrib's RecurrentPPO (LSTM policies) with the variant loss of :class:`VariantAlgorithm`. Minibatches are
    padded sequences; every term (advantage normalisation, surrogate, value loss, entropy, KL) is a mean over the
    real steps, and padded steps get a neutral stored distribution (finite KL and gradient). Takes
    :class:`sb3_contrib.RecurrentPPO`'s parameters first, in its order, with its defaults; then, keyword-only, the
    settings of :class:`VariantAlgorithm` (but ``kl_reference``). With ``surrogate="clipped"`` and
    ``kl_penalty="none"`` it gives the same numbers as ``RecurrentPPO`` for the same seed and arguments.
    """

    supports_reference = False

    def __init__(
        self,
        policy: str | type[RecurrentActorCriticPolicy],
        env: GymEnv | str,
        learning_rate: ScheduleLike = 3e-4,
        n_steps: int = 128,
        batch_size: int | None = 128,
        n_epochs: int = 10,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        clip_range: ScheduleLike = 0.2,
        clip_range_vf: ScheduleLike | None = None,
        normalize_advantage: bool = True,
        ent_coef: ScheduleLike = 0.0,
        vf_coef: float = 0.5,
        max_grad_norm: float = 0.5,
        use_sde: bool = False,
        sde_sample_freq: int = -1,
        target_kl: float | None = None,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
        *,
        surrogate: SurrogateName | str | losses.SurrogateFn | None = None,
        dual_clip: float | None = None,
        kl_penalty: KLPenaltyName | KLController | None = None,
        kl_coef: ScheduleLike | None = None,
        kl_target: float | None = None,
        kl_horizon: float | None = None,
        kl_estimator: KLEstimatorName | str | None = None,
        kl_direction: KLDirection | None = None,
        kl_reference: BasePolicy | KLReference | str | os.PathLike[str] | None = None,
        kl_reference_in: KLReferencePlace | None = None,
    ):
        self._init_variant(_arguments(locals()))

    def _prepare_buffer(self) -> None:
        """RecurrentPPO takes no ``rollout_buffer_class``: its buffer is rebuilt in :meth:`_finish_buffer`."""

    def _finish_buffer(self) -> None:
        # Same constructor arguments as RecurrentPPO._setup_model's; building a buffer draws no random numbers.
        buffer: Any = self.rollout_buffer
        buffer_class: Any = with_old_distribution(type(buffer))
        self.rollout_buffer = buffer_class(
            buffer.buffer_size,
            buffer.observation_space,
            buffer.action_space,
            buffer.hidden_state_shape,
            buffer.device,
            gamma=buffer.gamma,
            gae_lambda=buffer.gae_lambda,
            n_envs=buffer.n_envs,
        )

    def _evaluate(self, data: Any, actions: th.Tensor) -> tuple[th.Tensor, th.Tensor, th.Tensor | None]:
        return self.policy.evaluate_actions(data.observations, actions, data.lstm_states, data.episode_starts)  # type: ignore[call-arg]

    def _valid(self, data: Any) -> th.Tensor | None:
        return data.mask > 1e-8  # as RecurrentPPO.train converts it

    def _ordered_samples(self, batch_inds: np.ndarray) -> Any:
        # As the recurrent buffer's get(): the first step of each env starts a sequence.
        buffer: Any = self.rollout_buffer
        env_change = np.zeros((buffer.buffer_size, buffer.n_envs))
        env_change[0, :] = 1.0
        return buffer._get_samples(batch_inds, buffer.swap_and_flatten(env_change))
