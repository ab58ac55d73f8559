"""What differs between the on-policy algorithms the variants are composed onto: one small adapter per host.

The training loop, the loss, the schedules and the KL controllers are :class:`~sb3_ppo_variants.algorithm.
VariantAlgorithm`'s, written once. A host adapter says how a minibatch of that host's buffer is evaluated
(action masks for MaskablePPO; LSTM states and episode starts for RecurrentPPO), which of its steps are real
(RecurrentPPO pads sequences: every mean is taken over the valid steps), how the rollout is read in order
without random numbers (for the post-update KL), and how the rollout buffer gets the stored distributions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch as th
from gymnasium import spaces
from sb3_contrib.common.maskable.buffers import MaskableDictRolloutBuffer, MaskableRolloutBuffer
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer

from sb3_ppo_variants.buffers import with_old_distribution

if TYPE_CHECKING:
    from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

__all__ = ["MASKABLE_PPO_HOST", "PPO_HOST", "RECURRENT_PPO_HOST", "Host", "MaskablePPOHost", "RecurrentPPOHost"]


class Host:
    """SB3's PPO: minibatches of independent steps, all valid; ``rollout_buffer_class`` picks the buffer."""

    #: the host's default buffers (for a Dict and for any other observation space)
    buffers: tuple[type[RolloutBuffer], type[RolloutBuffer]] = (DictRolloutBuffer, RolloutBuffer)  # type: ignore[assignment]

    def prepare_buffer(self, model: OnPolicyAlgorithm) -> None:
        """Before the host's ``_setup_model``: make its rollout buffer class one that keeps the distributions."""
        base = model.rollout_buffer_class
        if base is None:
            base = self.buffers[0] if isinstance(model.observation_space, spaces.Dict) else self.buffers[1]
        model.rollout_buffer_class = with_old_distribution(base)

    def finish_buffer(self, model: OnPolicyAlgorithm) -> None:
        """After the host's ``_setup_model`` (nothing to do where ``rollout_buffer_class`` is honoured)."""

    def evaluate(self, policy: Any, data: Any, actions: th.Tensor) -> tuple[th.Tensor, th.Tensor, th.Tensor | None]:
        """values, log pi(a|s) and the entropy (or None) on a minibatch; ``policy.action_dist`` is then its distribution."""
        return policy.evaluate_actions(data.observations, actions)

    def valid(self, data: Any) -> th.Tensor | None:
        """(batch,) bool: the minibatch's real steps, over which every mean is taken; None where all are."""
        return None

    def ordered_samples(self, buffer: Any, batch_inds: np.ndarray) -> Any:
        """Samples of the (flattened) rollout at ``batch_inds`` in order, drawing no random numbers."""
        # No public route: get() shuffles (it draws from numpy's global generator, which would change the training
        # run); _get_samples is the method every SB3 and sb3-contrib buffer implements for exactly this.
        return buffer._get_samples(batch_inds)


class MaskablePPOHost(Host):
    """sb3-contrib's MaskablePPO: the new distribution is evaluated under the masks stored at collection."""

    buffers = (MaskableDictRolloutBuffer, MaskableRolloutBuffer)  # type: ignore[assignment]

    def evaluate(self, policy: Any, data: Any, actions: th.Tensor) -> tuple[th.Tensor, th.Tensor, th.Tensor | None]:
        return policy.evaluate_actions(data.observations, actions, action_masks=data.action_masks)


class RecurrentPPOHost(Host):
    """sb3-contrib's RecurrentPPO: padded sequences with LSTM states; ``mask`` marks the real steps."""

    def prepare_buffer(self, model: OnPolicyAlgorithm) -> None:
        """RecurrentPPO takes no ``rollout_buffer_class``: its buffer is rebuilt in :meth:`finish_buffer`."""

    def finish_buffer(self, model: OnPolicyAlgorithm) -> None:
        # Same constructor arguments as RecurrentPPO._setup_model's; building a buffer draws no random numbers.
        buffer: Any = model.rollout_buffer
        buffer_class: Any = with_old_distribution(type(buffer))
        model.rollout_buffer = buffer_class(
            buffer.buffer_size,
            buffer.observation_space,
            buffer.action_space,
            buffer.hidden_state_shape,
            buffer.device,
            gamma=buffer.gamma,
            gae_lambda=buffer.gae_lambda,
            n_envs=buffer.n_envs,
        )

    def evaluate(self, policy: Any, data: Any, actions: th.Tensor) -> tuple[th.Tensor, th.Tensor, th.Tensor | None]:
        return policy.evaluate_actions(data.observations, actions, data.lstm_states, data.episode_starts)

    def valid(self, data: Any) -> th.Tensor | None:
        return data.mask > 1e-8  # as RecurrentPPO.train converts it

    def ordered_samples(self, buffer: Any, batch_inds: np.ndarray) -> Any:
        # As the recurrent buffer's get(): the first step of each env starts a sequence.
        env_change = np.zeros((buffer.buffer_size, buffer.n_envs))
        env_change[0, :] = 1.0
        return buffer._get_samples(batch_inds, buffer.swap_and_flatten(env_change))


PPO_HOST = Host()
MASKABLE_PPO_HOST = MaskablePPOHost()
RECURRENT_PPO_HOST = RecurrentPPOHost()
