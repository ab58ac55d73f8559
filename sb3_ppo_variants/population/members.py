"""A population's members: their settings (every ``VariantPPO`` setting), checked as a solo run checks them, their
random streams, and the record of a member that failed.

A member is a dict: ``{"variant": name, "seed": int, **settings}``. ``variant`` is a plain ``VARIANTS`` key (``"clip"``,
``"kl"``, ``"adaptive_kl"``, ``"clip_kl"``) or ``"variant_ppo"`` (:class:`~sb3_ppo_variants.VariantPPO` itself, whose
switches ``surrogate``, ``kl_penalty``, ``kl_estimator``, ``kl_direction``, ``dual_clip`` are all free). A named variant
commits to some switches (``clip``: the clipped surrogate and no KL penalty); a member may repeat them, and a value that
contradicts the variant is a ``ValueError`` naming both (the class's own check, as for a solo run). A member's settings
are deep-copied: a ``KLController`` given as ``kl_penalty`` is each member's own.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.torch_layers import FlattenExtractor

from sb3_ppo_variants import losses
from sb3_ppo_variants.algorithm import VariantPPO
from sb3_ppo_variants.hyperparams import split_hyperparams
from sb3_ppo_variants.population.distributions import stacked_distribution

__all__ = [
    "GENERAL_VARIANT",
    "STRUCTURAL_SETTINGS",
    "Member",
    "MemberFailure",
    "MemberStreams",
    "check_policy_kwargs",
    "check_spaces",
    "resolve_members",
]

#: Settings that fix shapes or loops: equal across a population's members.
STRUCTURAL_SETTINGS = (
    "n_envs",
    "n_steps",
    "batch_size",
    "n_epochs",
    "normalize_advantage",
    "policy",
    "policy_kwargs",
    "normalize",
    "normalize_kwargs",
    "env_kwargs",
)
#: The general class as a member's variant: every switch free (the ablation's factorial cells).
GENERAL_VARIANT = "variant_ppo"
SOLO_ONLY = "train it as a solo run (one model per process) instead"


def _variant_classes() -> dict[str, type[VariantPPO]]:
    from sb3_ppo_variants import VARIANTS

    classes = {name: cls for name, cls in VARIANTS.items() if issubclass(cls, VariantPPO)}
    return {**classes, GENERAL_VARIANT: VariantPPO}


@dataclass
class MemberStreams:
    """A member's random streams, all from ``numpy.random.SeedSequence(seed).spawn(4)`` so that no two coincide
    (and none is an environment's: those are seeded ``seed + i`` as ``make_vec_env`` seeds a solo run).

    :attr init_seed: seeds torch before the member's networks are built (SB3 seeds with ``seed`` itself)
    :attr action_noise: draws the sampling noise of the member's actions at collection
    :attr minibatch_order: draws the member's minibatch orders (SB3's ``rollout_buffer.get`` permutations)
    :attr evaluation_noise: draws the sampling noise of non-deterministic evaluations
    """

    init_seed: int
    action_noise: th.Generator
    minibatch_order: np.random.Generator
    evaluation_noise: th.Generator

    @classmethod
    def from_seed(cls, seed: int, device: th.device) -> MemberStreams:
        init, noise, order, evaluation = np.random.SeedSequence(seed).spawn(4)

        def torch_generator(sequence: np.random.SeedSequence) -> th.Generator:
            return th.Generator(device=device).manual_seed(int(sequence.generate_state(1, np.uint64)[0]))

        return cls(
            init_seed=int(init.generate_state(1, np.uint64)[0]),
            action_noise=torch_generator(noise),
            minibatch_order=np.random.Generator(np.random.PCG64(order)),
            evaluation_noise=torch_generator(evaluation),
        )

    def state(self) -> dict[str, Any]:
        return {
            "action_noise": self.action_noise.get_state(),
            "minibatch_order": self.minibatch_order.bit_generator.state,
            "evaluation_noise": self.evaluation_noise.get_state(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.action_noise.set_state(state["action_noise"])
        self.minibatch_order.bit_generator.state = state["minibatch_order"]
        self.evaluation_noise.set_state(state["evaluation_noise"])


@dataclass
class MemberFailure:
    """Why and when a member stopped: its loss, gradient or parameters went non-finite.

    :attr member: its index
    :attr label: "member k (variant, seed s)"
    :attr check: ``"loss"``, ``"gradient"`` or ``"parameters"``
    :attr timestep: the member's timesteps at the policy update that failed (after the rollout it learned from)
    :attr update: the number of that policy update (1 for the first)
    :attr terms: the loss terms of the minibatch that failed (``check == "loss"``), by SB3's log names
    """

    member: int
    label: str
    check: str
    timestep: int
    update: int
    terms: dict[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        what = {
            "loss": "non-finite loss term(s)",
            "gradient": "a non-finite gradient",
            "parameters": "an Adam step that made its parameters non-finite",
        }[self.check]
        details = "" if not self.terms else " (" + ", ".join(f"{name}={value}" for name, value in self.terms.items()) + ")"
        return (
            f"{self.label} failed at timestep {self.timestep} (policy update {self.update}): {what}{details}; "
            "it stopped updating with its last finite parameters. Lower the learning rate, raise kl_coef or enable clipping."
        )


@dataclass
class Member:
    """One member: its variant, seed, the rl-zoo3 entry it would be built from solo (``model_entry``), and a model
    holding its validated settings (``template``: built without environment or networks).

    :attr kl_direction: ``"forward"`` KL(pi_old || pi) or ``"reverse"`` KL(pi || pi_old)
    """

    index: int
    variant: str
    seed: int
    model_entry: dict[str, Any]
    settings: dict[str, Any]
    template: VariantPPO
    kl_direction: str = "forward"

    @property
    def label(self) -> str:
        return f"member {self.index} ({self.variant}, seed {self.seed})"

    @property
    def surrogate(self) -> losses.SurrogateFn:
        """The member's surrogate term (looked up in ``losses.SURROGATES``, so a registered term works)."""
        return losses.get_surrogate(self.template.surrogate)


def _member_from_spec(index: int, member: Any, base: dict[str, Any]) -> Member:
    if not isinstance(member, dict):
        raise TypeError(f"member {index} must be a dict such as {{'variant': 'clip', 'seed': 0}}, got {member!r}")
    classes = _variant_classes()
    overrides = dict(member)
    variant = overrides.pop("variant", "clip")
    if variant not in classes:
        from sb3_ppo_variants import VARIANTS

        hosted = " (variants on sb3-contrib's hosts run solo)" if variant in VARIANTS else ""
        raise ValueError(f"member {index}: variant must be one of {list(classes)}{hosted}, got {variant!r}")
    if "seed" not in overrides:
        raise ValueError(f"member {index} ({variant}): seed is required (an int)")
    seed = overrides.pop("seed")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"member {index} ({variant}): seed must be an int, got {seed!r}")
    label = f"member {index} ({variant}, seed {seed})"
    for key in ("device", "env", "_init_setup_model", "verbose", "tensorboard_log"):
        if key in overrides:
            raise ValueError(f"{label}: {key!r} is a setting of the Population, not of a member")
    # a copy: settings that are objects (a KLController given as kl_penalty) must not be shared between members
    entry = copy.deepcopy({**base, **overrides})
    model_kwargs, settings = split_hyperparams(entry)
    if settings.get("frame_stack"):
        raise ValueError(f"{label}: frame_stack is not supported in a population; {SOLO_ONLY}")
    for key in ("use_sde", "rollout_buffer_class", "rollout_buffer_kwargs"):
        if model_kwargs.get(key):
            raise ValueError(f"{label}: {key}={model_kwargs[key]!r} is not supported in a population; {SOLO_ONLY}")
    if model_kwargs.get("kl_reference") is not None:
        raise ValueError(
            f"{label}: kl_reference={model_kwargs['kl_reference']!r} is not supported in a population (its members' KL "
            f"is to the policy that collected the rollout); {SOLO_ONLY}"
        )
    policy = settings.get("policy", "MlpPolicy")
    if policy not in ("MlpPolicy", ActorCriticPolicy):
        raise ValueError(f"{label}: policy must be 'MlpPolicy' in a population, got {policy!r}; {SOLO_ONLY}")
    cls = classes[variant]
    try:
        # the class checks every setting, and a named variant rejects a switch that contradicts its name
        template = cls(
            "MlpPolicy",
            None,  # type: ignore[arg-type]  # settings only: no environment, no networks
            seed=int(seed),
            device="cpu",
            _init_setup_model=False,
            **model_kwargs,
        )
    except (TypeError, ValueError) as error:
        raise type(error)(f"{label}: {error}") from None
    try:
        losses.get_surrogate(template.surrogate)
    except ValueError as error:
        raise ValueError(f"{label}: {error}") from None
    settings = {
        "n_envs": int(settings.get("n_envs", 1)),
        "policy": "MlpPolicy",
        "normalize": settings.get("normalize", False),
        "normalize_kwargs": settings.get("normalize_kwargs"),
        "env_kwargs": settings.get("env_kwargs"),
        "n_steps": template.n_steps,
        "batch_size": template.batch_size,
        "n_epochs": template.n_epochs,
        "normalize_advantage": template.normalize_advantage,
        "policy_kwargs": template.policy_kwargs,
    }
    return Member(index, variant, int(seed), entry, settings, template, template.kl_direction)


def resolve_members(members: list[dict[str, Any]], hyperparams: dict[str, Any] | None) -> list[Member]:
    """Each member's settings checked (as its solo model's constructor checks them), and the settings that fix shapes
    checked equal across members; raises ``TypeError``/``ValueError`` naming the member and the setting."""
    if not isinstance(members, (list, tuple)) or not members:
        raise ValueError(
            f"members must be a non-empty list of dicts such as {{'variant': 'clip', 'seed': 0}}, got {members!r}"
        )
    base = dict(hyperparams or {})
    resolved = [_member_from_spec(index, member, base) for index, member in enumerate(members)]
    for name in STRUCTURAL_SETTINGS:
        values = [m.settings[name] for m in resolved]
        if any(value != values[0] for value in values[1:]):
            groups: dict[str, list[int]] = {}
            for m, value in zip(resolved, values):
                groups.setdefault(repr(value), []).append(m.index)
            listing = "; ".join(f"{value} for members {indices}" for value, indices in groups.items())
            raise ValueError(f"{name} must be equal across a population's members (it fixes shapes or loops); got {listing}")
    return resolved


def check_spaces(observation_space: spaces.Space, action_space: spaces.Space) -> None:
    """Raise a ``ValueError`` for spaces a population cannot train: flat Box observations and Discrete, Box,
    MultiDiscrete or MultiBinary actions are supported."""
    if not isinstance(observation_space, spaces.Box) or is_image_space(observation_space):
        raise ValueError(
            f"observation space {observation_space} is not supported in a population (flat Box observations "
            f"with MlpPolicy are); {SOLO_ONLY}"
        )
    stacked_distribution(action_space)  # raises for an action space it has no distribution for


def check_policy_kwargs(policy_kwargs: dict[str, Any]) -> None:
    """Raise a ``ValueError`` for policy settings a population cannot train (another feature extractor or optimiser)."""
    extractor = policy_kwargs.get("features_extractor_class", FlattenExtractor)
    if extractor is not FlattenExtractor:
        raise ValueError(f"policy_kwargs features_extractor_class={extractor!r} is not supported in a population; {SOLO_ONLY}")
    optimizer = policy_kwargs.get("optimizer_class", th.optim.Adam)
    if optimizer is not th.optim.Adam:
        raise ValueError(f"policy_kwargs optimizer_class={optimizer!r}: a population trains with Adam only; {SOLO_ONLY}")
    unknown = set(policy_kwargs.get("optimizer_kwargs") or {}) - {"eps", "betas"}
    if unknown:
        raise ValueError(
            f"policy_kwargs optimizer_kwargs {sorted(unknown)} are not supported in a population (eps, betas are)"
        )
