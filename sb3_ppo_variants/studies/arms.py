"""The arms of an ablation -- the names of ``--variants`` -- and where each arm's settings come from.

An arm is a named variant (a ``VARIANTS`` key), a baseline (:data:`~sb3_ppo_variants.studies.registry.BASELINES`),
a factorial cell, or a *label* defined in the hyperparameters file's env entry::

    sb3pv/Arithmetic-v0:
      default: {n_envs: 8}
      no_kl:   {variant: clip}
      kl_loss: {variant: clip_kl, kl_coef: 0.1}

(``--variants no_kl kl_loss``): a label's entry is merged over ``default``, and its ``variant`` key names the
algorithm (a name of the registry).

A factorial cell switches three components of the loss on or off, so that each one's effect can be isolated
(as in Andrychowicz et al. 2020, "What Matters in On-Policy Reinforcement Learning?",
https://arxiv.org/abs/2006.05990). Its name joins one token per component with ``+``::

    SURROGATE [+ KL] [+ ENTROPY]
    SURROGATE  clip | noclip                   clipped or unclipped surrogate
    KL         kl | adaptive_kl                fixed or adaptive KL penalty (absent: none)
    ENTROPY    ent_const | ent_sched           constant ent_coef (0.01) or a schedule ("lin_0.01": 0.01 -> 0)
                                               (absent: ent_coef as the hyperparameters say)

e.g. ``clip+adaptive_kl+ent_sched``. The named variants are factorial cells with the same arguments as their
classes -- ``clip`` = ``clip``, ``kl`` = ``noclip+kl``, ``adaptive_kl`` = ``noclip+adaptive_kl``,
``clip_kl`` = ``clip+kl`` -- and take an entropy token too (``clip_kl+ent_sched``). The KL coefficients
follow the classes: beta = 1.0 without clipping (``KLPPO``, ``AdaptiveKLPPO``), 0.2 with clipping
(``ClipKLPPO``, RLlib's default), d_targ = 0.01; a hyperparameter file may override them.
The baselines ``sb3_ppo`` (stable_baselines3.PPO), ``trpo``, ``maskable_ppo`` and ``recurrent_ppo`` (sb3-contrib)
are names too, and so is any other ``VARIANTS`` key (e.g. a contrib-hosted variant).
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from stable_baselines3.common.base_class import BaseAlgorithm

from sb3_ppo_variants import VARIANTS
from sb3_ppo_variants.algorithm import VariantPPO
from sb3_ppo_variants.hyperparams import load_hyperparams, split_hyperparams
from sb3_ppo_variants.schedules import as_schedule
from sb3_ppo_variants.studies import registry

__all__ = [
    "DEFAULT_ENT_COEF",
    "DEFAULT_ENT_SCHEDULE",
    "ENTROPY_TOKENS",
    "KL_TOKENS",
    "SURROGATE_TOKENS",
    "VariantSpec",
    "factorial_names",
    "filter_hyperparams",
    "hyperparams_for",
    "label_names",
    "parse_variant",
]

SURROGATE_TOKENS = {"clip": "clipped", "noclip": "unclipped"}
KL_TOKENS = {"kl": "fixed", "adaptive_kl": "adaptive"}
ENTROPY_TOKENS = ("ent_const", "ent_sched")
#: The entropy component's two settings: a constant coefficient, and a schedule that starts at the same value.
DEFAULT_ENT_COEF = 0.01
DEFAULT_ENT_SCHEDULE = "lin_0.01"

#: named variant -> (surrogate token, KL token or None): the factorial cell it is.
_NAMED_CELLS = {
    "clip": ("clip", None),
    "kl": ("noclip", "kl"),
    "adaptive_kl": ("noclip", "adaptive_kl"),
    "clip_kl": ("clip", "kl"),
}
_KL_TARGET = 0.01


def _kl_defaults(surrogate: str, kl: str | None) -> dict[str, Any]:
    """The KL arguments of the named class with this surrogate and penalty (see the module docstring)."""
    if kl is None:
        return {}
    defaults: dict[str, Any] = {"kl_coef": 0.2 if surrogate == "clip" else 1.0, "kl_estimator": "exact"}
    if kl == "adaptive_kl":
        defaults["kl_target"] = _KL_TARGET
    return defaults


@dataclass(frozen=True)
class VariantSpec:
    """What to build for one name of ``--variants``.

    :param name: the name as given (the key of the results)
    :param algorithm: a name of the registry (``variant_ppo`` for a factorial cell); empty for a label, whose
        algorithm is its entry's ``variant`` (per environment)
    :param defaults: constructor arguments a hyperparameter entry may override (the KL coefficients)
    :param overrides: constructor arguments that define the variant and win over the entry
        (``surrogate``, ``kl_penalty``, ``ent_coef`` of an entropy token)
    :param hyperparams_keys: keys looked up, in order, in an entry split per variant
    :param components: surrogate / KL penalty / entropy, for the report (empty for the baselines)
    """

    name: str
    algorithm: str
    defaults: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)
    hyperparams_keys: tuple[str, ...] = ()
    components: dict[str, str] = field(default_factory=dict)

    @property
    def is_label(self) -> bool:
        return not self.algorithm


def _grammar(labels: Collection[str] = ()) -> str:
    return (
        f"a named variant {list(VARIANTS)}, a baseline {list(registry.BASELINES)}, a factorial cell "
        f"'{'|'.join(SURROGATE_TOKENS)}[+{'|'.join(KL_TOKENS)}][+{'|'.join(ENTROPY_TOKENS)}]' "
        "(e.g. 'clip+adaptive_kl+ent_sched'; a named variant takes an entropy token too, 'clip_kl+ent_sched'), "
        f"or a label of the hyperparameters file ({sorted(labels) or 'none defined'})"
    )


def label_names(source: Mapping[str, Any] | None) -> set[str]:
    """The labels of a hyperparameters file: per-variant entries (of any env) that name their ``variant``."""
    labels = set()
    for entry in (source or {}).values():
        if isinstance(entry, dict):
            labels |= {key for key, value in entry.items() if isinstance(value, dict) and "variant" in value}
    return labels


def parse_variant(
    name: str, ent_coef: float = DEFAULT_ENT_COEF, ent_schedule: str = DEFAULT_ENT_SCHEDULE, labels: Collection[str] = ()
) -> VariantSpec:
    """The :class:`VariantSpec` of a ``--variants`` name (grammar in the module docstring).

    :param ent_coef: the constant coefficient of ``ent_const``
    :param ent_schedule: the schedule string of ``ent_sched``
    :param labels: the labels the hyperparameters file defines (:func:`label_names`)
    :raises ValueError: naming the argument, the value and the grammar
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"--variants: a name must be a non-empty string, got {name!r}; allowed: {_grammar(labels)}")
    as_schedule(ent_coef, "--ent-coef")
    as_schedule(ent_schedule, "--ent-schedule")
    if name in labels:
        return VariantSpec(name=name, algorithm="", hyperparams_keys=(name,))
    if name in registry.BASELINES or (name in VARIANTS and name not in _NAMED_CELLS):
        return VariantSpec(name=name, algorithm=name)
    tokens = name.split("+")
    entropy = tokens.pop() if tokens[-1] in ENTROPY_TOKENS else None
    if tokens and tokens[0] in _NAMED_CELLS and len(tokens) == 1:
        named: str | None = tokens[0]
        surrogate, kl = _NAMED_CELLS[tokens[0]]
    elif tokens and tokens[0] in SURROGATE_TOKENS and len(tokens) <= 2 and (len(tokens) == 1 or tokens[1] in KL_TOKENS):
        surrogate, kl = tokens[0], (tokens[1] if len(tokens) == 2 else None)
        named = next((key for key, cell in _NAMED_CELLS.items() if cell == (surrogate, kl)), None)
    else:
        raise ValueError(f"--variants: unknown name {name!r}; allowed: {_grammar(labels)}")
    overrides: dict[str, Any] = {}
    if entropy is not None:
        overrides["ent_coef"] = float(ent_coef) if entropy == "ent_const" else ent_schedule
    components = {
        "surrogate": SURROGATE_TOKENS[surrogate],
        "kl_penalty": KL_TOKENS.get(kl or "", "none"),
        "entropy": {None: "as hyperparameters", "ent_const": f"constant {ent_coef}", "ent_sched": ent_schedule}[entropy],
    }
    keys = tuple(dict.fromkeys(key for key in (name, named) if key is not None))
    if named is not None and entropy is None and name == named:
        return VariantSpec(name=name, algorithm=named, hyperparams_keys=keys, components=components)
    overrides.update(surrogate=components["surrogate"], kl_penalty=components["kl_penalty"])
    return VariantSpec(
        name=name,
        algorithm="variant_ppo",
        defaults=_kl_defaults(surrogate, kl),
        overrides=overrides,
        hyperparams_keys=keys,
        components=components,
    )


def factorial_names(entropy: bool = True) -> list[str]:
    """Every cell of {clip, noclip} x {no KL, kl, adaptive_kl} (x {ent_const, ent_sched}): 12 names (6 without entropy)."""
    kls: list[str | None] = [None, *KL_TOKENS]
    ents: list[str | None] = list(ENTROPY_TOKENS) if entropy else [None]
    return ["+".join(t for t in (s, k, e) if t) for s, k, e in itertools.product(SURROGATE_TOKENS, kls, ents)]


def filter_hyperparams(algorithm: type[BaseAlgorithm], hyperparams: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Drop the constructor arguments ``algorithm`` does not take (a shared entry used for sb3_ppo or trpo).

    Every argument of :class:`VariantPPO` reaches the named variants through ``**kwargs``, so they keep all.

    :return: the filtered entry and the sorted names of the dropped keys
    """
    if issubclass(algorithm, VariantPPO):
        return dict(hyperparams), []
    accepted = set(inspect.signature(algorithm.__init__).parameters)
    # Keys that are not constructor arguments (n_envs, policy, rl-zoo3's wrappers...) are kept: split_hyperparams sorts them.
    kept = {key: value for key, value in hyperparams.items() if key in accepted or not split_hyperparams({key: value})[0]}
    return kept, sorted(set(hyperparams) - set(kept))


def hyperparams_for(
    spec: VariantSpec, env_id: str, source: dict[str, Any] | None, label: str
) -> tuple[dict[str, Any], str, str]:
    """The rl-zoo3 entry of ``spec`` on ``env_id`` and the algorithm it builds.

    A named variant or factorial cell takes the first of ``spec.hyperparams_keys`` the entry is split by, else
    its ``default`` (or the whole entry), over the variant's KL defaults; a label takes its own entry over
    ``default``, and its ``variant`` key names the algorithm.

    :param source: the loaded YAML (env id -> entry), or None for the algorithms' own defaults
    :param label: where ``source`` comes from, for the report
    :return: the entry, a description of where it came from, and the algorithm's registry name
    :raises ValueError: for a label that ``env_id``'s entry does not define, or whose ``variant`` is not a name
    """
    entry = (source or {}).get(env_id)
    if spec.is_label:
        if not isinstance(entry, dict) or not isinstance(entry.get(spec.name), dict):
            raise ValueError(f"--variants {spec.name}: a label that the entry of {env_id} in {label} does not define")
        merged = load_hyperparams(source or {}, env_id, spec.name)
        algorithm = merged.pop("variant")
        if algorithm not in registry.algorithm_names():
            raise ValueError(
                f"--variants {spec.name}: its variant on {env_id} must be one of {registry.algorithm_names()}, "
                f"got {algorithm!r}"
            )
        return merged, f"{label} [{env_id}][{spec.name}]", algorithm
    if source is None or env_id not in source:
        where = "the algorithm's defaults" + ("" if source is None else f" ({env_id} not in {label})")
        return dict(spec.defaults), where, spec.algorithm
    key = next((k for k in spec.hyperparams_keys if isinstance(entry, dict) and isinstance(entry.get(k), dict)), None)
    merged = load_hyperparams(source, env_id, key)
    where = f"{label} [{env_id}]" + (f"[{key}]" if key else "")
    return {**spec.defaults, **merged}, where, spec.algorithm
