"""The frozen reference policy of a KL to a reference (``kl_reference``, the RLHF anchor): built once, never trained,
saved inside the model's zip, evaluated once per collected step.

:class:`KLReference` is the whole machinery: it builds the frozen copy from a policy object or a saved path, checks it
against the model, evaluates it under the model's collection-time inputs (the action masks of a MaskablePPO host) and
pickles itself with its weights (on the CPU), so that ``load()`` needs neither the source object nor the source path.
"""

from __future__ import annotations

import copy
import os
from typing import TYPE_CHECKING, Any

import torch as th
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import BasePolicy

from sb3_ppo_variants.kl import distribution_params

if TYPE_CHECKING:
    from sb3_ppo_variants.algorithm import VariantAlgorithm

__all__ = ["KLReference"]


class KLReference:
    """A frozen reference policy pi_ref (parameters without gradients, in evaluation mode).

    :param policy: the frozen policy (a copy nobody else holds)
    :param source: where it came from, for messages: the path, or ``"a policy object"``
    """

    def __init__(self, policy: BasePolicy, source: str):
        policy.set_training_mode(False)
        policy.requires_grad_(False)
        self.policy = policy
        self.source = source

    @classmethod
    def build(cls, setting: BasePolicy | str | os.PathLike[str], model: VariantAlgorithm) -> KLReference:
        """The frozen copy of ``kl_reference``: a deep copy of a policy object, or the policy saved at a path (a
        directory the policy class's ``from_pretrained`` reads, such as a ``TransformerPolicy``'s ``save_pretrained``,
        or a file of SB3's ``policy.save``), checked against the model's spaces. A path that cannot be read is a
        ``ValueError`` naming ``kl_reference``."""
        if isinstance(setting, BasePolicy):
            reference = cls(copy.deepcopy(setting), "a policy object")
        else:
            path = os.fspath(setting)
            from_pretrained = getattr(model.policy_class, "from_pretrained", None)
            try:
                if os.path.isdir(path) and from_pretrained is not None:
                    policy = from_pretrained(path, model.observation_space, model.action_space)
                elif os.path.isfile(path):
                    policy = model.policy_class.load(path, device=model.device)  # type: ignore[attr-defined]
                else:
                    raise ValueError(
                        "it is neither a directory that the policy class's from_pretrained reads nor a file of policy.save"
                    )
            except Exception as error:  # whatever the loaders raise on a file they cannot read (pickle, zip, OS errors)
                raise ValueError(f"kl_reference={path!r}: cannot load a reference policy: {error}") from error
            reference = cls(policy, repr(path))
        reference.to(model.device)
        reference.check(model)
        return reference

    @property
    def name(self) -> str:
        return "kl_reference" if self.source == "a policy object" else f"kl_reference={self.source}"

    def to(self, device: th.device | str) -> KLReference:
        self.policy = self.policy.to(device)
        return self

    def distribution(self, model: VariantAlgorithm, observations: Any, call_kwargs: dict[str, Any]) -> Distribution:
        """pi_ref on the observations of a collection step, evaluated as the model's host evaluates its policy there
        (under the step's action masks on a MaskablePPO host), without gradients."""
        with th.no_grad():
            return model._reference_distribution(self.policy, observations, call_kwargs)

    def check(self, model: VariantAlgorithm) -> None:
        """The reference reads the policy's observations and gives a distribution over the policy's actions."""
        if self.policy.action_space != model.action_space:
            raise ValueError(
                f"{self.name}: its action space {self.policy.action_space} does not match the policy's "
                f"{model.action_space} (for a language model: the reference must have the policy's vocabulary)"
            )
        if self.policy.observation_space.shape != model.observation_space.shape:
            raise ValueError(
                f"{self.name}: its observation space {self.policy.observation_space} does not match the policy's "
                f"{model.observation_space}"
            )
        model._check_reference_policy(self.policy, self.name)
        observation, _ = model.policy.obs_to_tensor(model.observation_space.sample())
        try:
            width = distribution_params(self.distribution(model, observation, {})).shape[-1]
            with th.no_grad():
                expected = distribution_params(model.policy.get_distribution(observation)).shape[-1]  # type: ignore[attr-defined]
        except (RuntimeError, ValueError, TypeError, IndexError) as error:
            raise ValueError(f"{self.name}: the reference cannot evaluate the policy's observations: {error}") from error
        if width != expected:
            raise ValueError(f"{self.name}: its distribution has {width} parameters, the policy's {expected}")

    def __getstate__(self) -> dict[str, Any]:
        # Saved with the model (cloudpickled into its zip): the weights travel on the CPU, so that a model trained on a
        # GPU loads anywhere; the model moves the reference to its device when it loads.
        state = dict(self.__dict__)
        parameter = next(self.policy.parameters(), None)
        if parameter is not None and parameter.device.type != "cpu":
            state["policy"] = copy.deepcopy(self.policy).to("cpu")
        return state

    def __repr__(self) -> str:
        return f"KLReference({type(self.policy).__name__} from {self.source})"
