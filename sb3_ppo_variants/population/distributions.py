"""Action distributions of K stacked policies, as plain tensor functions (no ``torch.distributions`` objects).

Each distribution is described by the same flat parameter vector per state as
:func:`sb3_ppo_variants.kl.distribution_params` (logits; or a Gaussian's mean then standard deviation), so the
old distribution stored at collection time feeds the same exact-KL terms of :mod:`sb3_ppo_variants.kl`.
Sampling uses noise drawn beforehand from each member's own generator (Gumbel-max for categorical actions,
``mean + std * N(0, 1)`` for Gaussians), so a member's actions never depend on its companions.

Shapes: ``params`` (K, batch, d); ``actions`` (K, batch, action_dim) as floats (as SB3's rollout buffer stores
them); results per state (K, batch).
"""

from __future__ import annotations

import math

import numpy as np
import torch as th
from gymnasium import spaces
from torch.nn import functional as F

from sb3_ppo_variants.kl import bernoulli_kl, categorical_kl, diag_gaussian_kl

__all__ = ["StackedDistribution", "stacked_distribution"]

_LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))


class StackedDistribution:
    """Base class: the operations the population needs on one kind of action distribution."""

    #: width of the per-step noise drawn for sampling
    noise_dim: int
    #: width of an action as the rollout buffer stores it
    action_dim: int
    #: whether the noise is standard normal (else standard exponential, for Gumbel-max)
    gaussian_noise: bool = False

    def params(self, action_out: th.Tensor, log_std: th.Tensor | None) -> th.Tensor:
        """The flat parameters from the action head's output (K, batch, n) and, for Gaussians, log_std (K, n)."""
        return action_out

    def sample(self, params: th.Tensor, noise: th.Tensor) -> th.Tensor:
        raise NotImplementedError

    def mode(self, params: th.Tensor) -> th.Tensor:
        raise NotImplementedError

    def log_prob(self, params: th.Tensor, actions: th.Tensor) -> th.Tensor:
        raise NotImplementedError

    def entropy(self, params: th.Tensor) -> th.Tensor:
        raise NotImplementedError

    def log_prob_and_entropy(self, params: th.Tensor, actions: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        """:meth:`log_prob` and :meth:`entropy` together (a distribution may share work between them)."""
        return self.log_prob(params, actions), self.entropy(params)

    def kl(self, old_params: th.Tensor, params: th.Tensor) -> th.Tensor:
        """Exact KL(pi_old || pi) per state."""
        raise NotImplementedError

    def env_actions(self, actions: th.Tensor) -> np.ndarray:
        """Actions (K, batch, action_dim) as the environments take them: (K * batch, ...) numpy."""
        raise NotImplementedError


def _gumbel_argmax(logits: th.Tensor, exponential: th.Tensor) -> th.Tensor:
    # argmax(logits + Gumbel) == argmax(logits - log(E)), E ~ Exp(1): one exact draw from softmax(logits)
    return th.argmax(logits - th.log(exponential), dim=-1)


def _entropy_of(log_p: th.Tensor) -> th.Tensor:
    return -(log_p.exp() * log_p).sum(dim=-1)


def _categorical_entropy(logits: th.Tensor) -> th.Tensor:
    return _entropy_of(th.log_softmax(logits, dim=-1))


class _Categorical(StackedDistribution):
    def __init__(self, n: int):
        self.noise_dim = n
        self.action_dim = 1

    def sample(self, params: th.Tensor, noise: th.Tensor) -> th.Tensor:
        return _gumbel_argmax(params, noise).unsqueeze(-1).float()

    def mode(self, params: th.Tensor) -> th.Tensor:
        return th.argmax(params, dim=-1).unsqueeze(-1).float()

    def log_prob(self, params: th.Tensor, actions: th.Tensor) -> th.Tensor:
        return th.log_softmax(params, dim=-1).gather(-1, actions.long()).squeeze(-1)

    def entropy(self, params: th.Tensor) -> th.Tensor:
        return _categorical_entropy(params)

    def log_prob_and_entropy(self, params: th.Tensor, actions: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        # one normalisation of the logits for both, as torch.distributions.Categorical (SB3's) normalises once
        log_p = th.log_softmax(params, dim=-1)
        return log_p.gather(-1, actions.long()).squeeze(-1), _entropy_of(log_p)

    def kl(self, old_params: th.Tensor, params: th.Tensor) -> th.Tensor:
        return categorical_kl(old_params, params)

    def env_actions(self, actions: th.Tensor) -> np.ndarray:
        return actions.long().reshape(-1).cpu().numpy()


class _MultiCategorical(StackedDistribution):
    def __init__(self, nvec: np.ndarray):
        self.sizes = [int(n) for n in np.asarray(nvec).reshape(-1)]
        self.noise_dim = sum(self.sizes)
        self.action_dim = len(self.sizes)
        self.shape = tuple(np.asarray(nvec).shape)

    def _split(self, tensor: th.Tensor) -> tuple[th.Tensor, ...]:
        return th.split(tensor, self.sizes, dim=-1)

    def sample(self, params: th.Tensor, noise: th.Tensor) -> th.Tensor:
        parts = zip(self._split(params), self._split(noise))
        return th.stack([_gumbel_argmax(logits, exp) for logits, exp in parts], dim=-1).float()

    def mode(self, params: th.Tensor) -> th.Tensor:
        return th.stack([th.argmax(logits, dim=-1) for logits in self._split(params)], dim=-1).float()

    def log_prob(self, params: th.Tensor, actions: th.Tensor) -> th.Tensor:
        per_dim = [
            th.log_softmax(logits, dim=-1).gather(-1, actions[..., i : i + 1].long()).squeeze(-1)
            for i, logits in enumerate(self._split(params))
        ]
        return th.stack(per_dim, dim=-1).sum(dim=-1)

    def entropy(self, params: th.Tensor) -> th.Tensor:
        return th.stack([_categorical_entropy(logits) for logits in self._split(params)], dim=-1).sum(dim=-1)

    def kl(self, old_params: th.Tensor, params: th.Tensor) -> th.Tensor:
        pairs = zip(self._split(old_params), self._split(params))
        return th.stack([categorical_kl(old, new) for old, new in pairs], dim=-1).sum(dim=-1)

    def env_actions(self, actions: th.Tensor) -> np.ndarray:
        return actions.long().reshape(-1, *self.shape).cpu().numpy()


class _Bernoulli(StackedDistribution):
    def __init__(self, shape: tuple[int, ...]):
        self.shape = shape
        self.noise_dim = self.action_dim = int(np.prod(shape))

    def sample(self, params: th.Tensor, noise: th.Tensor) -> th.Tensor:
        # noise ~ Exp(1): exp(-E) is uniform on (0, 1]
        return (th.exp(-noise) < th.sigmoid(params)).float()

    def mode(self, params: th.Tensor) -> th.Tensor:
        return th.round(th.sigmoid(params))

    def log_prob(self, params: th.Tensor, actions: th.Tensor) -> th.Tensor:
        return -F.binary_cross_entropy_with_logits(params, actions, reduction="none").sum(dim=-1)

    def entropy(self, params: th.Tensor) -> th.Tensor:
        return F.binary_cross_entropy_with_logits(params, th.sigmoid(params), reduction="none").sum(dim=-1)

    def kl(self, old_params: th.Tensor, params: th.Tensor) -> th.Tensor:
        return bernoulli_kl(old_params, params)

    def env_actions(self, actions: th.Tensor) -> np.ndarray:
        return actions.long().reshape(-1, *self.shape).cpu().numpy()


class _DiagGaussian(StackedDistribution):
    """SB3's ``DiagGaussianDistribution``: a state-independent ``log_std`` per member; actions clipped to the
    bounds only when the environment takes them (the buffer keeps the sampled action, as SB3's does)."""

    gaussian_noise = True

    def __init__(self, space: spaces.Box):
        self.shape = space.shape
        self.noise_dim = self.action_dim = int(np.prod(space.shape))
        self.low, self.high = space.low.reshape(-1), space.high.reshape(-1)

    def params(self, action_out: th.Tensor, log_std: th.Tensor | None) -> th.Tensor:
        assert log_std is not None
        std = th.ones_like(action_out) * log_std.exp().unsqueeze(1)
        return th.cat([action_out, std], dim=-1)

    def _mean_std(self, params: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        return params[..., : self.action_dim], params[..., self.action_dim :]

    def sample(self, params: th.Tensor, noise: th.Tensor) -> th.Tensor:
        mean, std = self._mean_std(params)
        return mean + std * noise

    def mode(self, params: th.Tensor) -> th.Tensor:
        return self._mean_std(params)[0]

    def log_prob(self, params: th.Tensor, actions: th.Tensor) -> th.Tensor:
        mean, std = self._mean_std(params)
        return (-((actions - mean) ** 2) / (2 * std**2) - std.log() - _LOG_SQRT_2PI).sum(dim=-1)

    def entropy(self, params: th.Tensor) -> th.Tensor:
        return (0.5 + _LOG_SQRT_2PI + self._mean_std(params)[1].log()).sum(dim=-1)

    def kl(self, old_params: th.Tensor, params: th.Tensor) -> th.Tensor:
        old_mean, old_std = self._mean_std(old_params)
        mean, std = self._mean_std(params)
        return diag_gaussian_kl(old_mean, old_std, mean, std)

    def env_actions(self, actions: th.Tensor) -> np.ndarray:
        flat = actions.reshape(-1, self.action_dim).cpu().numpy()
        return np.clip(flat, self.low, self.high).reshape(-1, *self.shape)


def stacked_distribution(action_space: spaces.Space) -> StackedDistribution:
    """The stacked distribution SB3's MlpPolicy uses for ``action_space`` (without gSDE)."""
    if isinstance(action_space, spaces.Discrete):
        return _Categorical(int(action_space.n))
    if isinstance(action_space, spaces.MultiDiscrete):
        return _MultiCategorical(action_space.nvec)
    if isinstance(action_space, spaces.MultiBinary):
        return _Bernoulli(tuple(np.atleast_1d(action_space.shape)))
    if isinstance(action_space, spaces.Box):
        return _DiagGaussian(action_space)
    raise ValueError(
        f"action space {action_space} is not supported in a population (Discrete, Box, MultiDiscrete, MultiBinary are); "
        "train such runs solo"
    )
