"""A language-model policy for SB3: a causal transformer (Hugging Face ``transformers``' GPT-2 architecture) as the
features extractor, its LM head as the action net, and a value head.

The observation is a right-padded row of token ids (see :class:`~sb3_ppo_variants.arithmetic.env.ArithmeticEnv`);
the features are the transformer's hidden state at the last real token, so the action distribution is the LM's
next-token distribution. With causal attention the padding after the last real token cannot change it. The same code
takes a tiny model configured here or any GPT-2 checkpoint saved with ``save_pretrained`` (``model_path``).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.type_aliases import Schedule
from transformers import GPT2Config, GPT2LMHeadModel

from sb3_ppo_variants.schedules import ConstantSchedule

__all__ = ["DEFAULT_MODEL_CONFIG", "GPT2FeaturesExtractor", "TransformerPolicy", "make_language_model"]

#: The CPU-sized default: 2 layers, width 64, 4 heads, no dropout (dropout would make the ratio of a policy to
#: itself differ from 1 in PPO's update).
DEFAULT_MODEL_CONFIG: dict[str, Any] = {
    "n_layer": 2,
    "n_embd": 64,
    "n_head": 4,
    "resid_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "attn_pdrop": 0.0,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "bos_token_id": 1,
}
_DROPOUTS = ("resid_pdrop", "embd_pdrop", "attn_pdrop")


def make_language_model(
    observation_space: spaces.Space,
    action_space: spaces.Space,
    model_path: str | os.PathLike[str] | None = None,
    model_config: dict[str, Any] | None = None,
    dropout: float = 0.0,
) -> GPT2LMHeadModel:
    """The GPT-2 language model for these spaces: loaded from ``model_path`` (``from_pretrained``) or new from
    ``DEFAULT_MODEL_CONFIG`` updated with ``model_config`` (``vocab_size`` = the number of actions, ``n_positions`` =
    the observation's length).

    :raises ValueError: when the spaces are not a 1-D Box of token ids and a Discrete over the vocabulary, or the
        model's vocabulary or context length does not match them
    """
    if not isinstance(action_space, spaces.Discrete):
        raise ValueError(f"action_space must be Discrete (one action per token), got {action_space}")
    if not isinstance(observation_space, spaces.Box) or len(observation_space.shape) != 1:
        raise ValueError(f"observation_space must be a 1-D Box of token ids, got {observation_space}")
    obs_length = int(observation_space.shape[0])
    dropouts = dict.fromkeys(_DROPOUTS, float(dropout))
    if model_path is not None:
        if model_config:
            raise ValueError(f"give model_path or model_config, not both (got model_config={model_config!r})")
        if not os.path.isdir(model_path):
            raise ValueError(f"model_path must be a directory written by save_pretrained, got {str(model_path)!r}")
        model = GPT2LMHeadModel.from_pretrained(model_path, **dropouts)  # type: ignore[arg-type]  # config overrides
        source = f"model_path={str(model_path)!r}"
    else:
        settings = {**DEFAULT_MODEL_CONFIG, "vocab_size": int(action_space.n), "n_positions": obs_length, **dropouts}
        settings.update(model_config or {})
        model = GPT2LMHeadModel(GPT2Config(**settings))
        source = f"model_config={model_config!r}"
    config = model.config
    if config.vocab_size != int(action_space.n):
        raise ValueError(
            f"{source}: the model's vocabulary has {config.vocab_size} tokens but the action space has {action_space.n} "
            "actions (use the tokenizer the model was trained with)"
        )
    if config.n_positions < obs_length:
        raise ValueError(f"{source}: the model reads at most {config.n_positions} tokens, the observation has {obs_length}")
    if float(np.max(observation_space.high)) > config.vocab_size - 1:
        raise ValueError(
            f"observation_space holds token ids up to {np.max(observation_space.high)}, beyond {source}'s vocabulary"
        )
    return model


class GPT2FeaturesExtractor(BaseFeaturesExtractor):
    """The hidden state of a GPT-2 transformer at each observation's last real (non-padding) token.

    :param observation_space: a 1-D Box of right-padded token ids
    :param language_model: the ``GPT2LMHeadModel`` (its ``lm_head`` becomes the policy's action net)
    """

    def __init__(self, observation_space: spaces.Box, language_model: GPT2LMHeadModel):
        super().__init__(observation_space, features_dim=int(language_model.config.n_embd))
        self.language_model = language_model
        config = language_model.config
        pad = config.pad_token_id if config.pad_token_id is not None else config.eos_token_id
        if not isinstance(pad, int):
            raise ValueError(f"the language model's config needs a pad_token_id or one eos_token_id, got {pad!r}")
        self.pad_token_id = pad

    def forward(self, observations: th.Tensor) -> th.Tensor:
        ids = observations.long()
        real = ids != self.pad_token_id
        last = real.sum(dim=1).clamp(min=1) - 1
        hidden = self.language_model.transformer(input_ids=ids, attention_mask=real.long()).last_hidden_state
        return hidden[th.arange(ids.shape[0], device=ids.device), last]


class TransformerPolicy(ActorCriticPolicy):
    """Actor-critic policy whose actor is a GPT-2 language model (see the module docstring).

    Takes :class:`~stable_baselines3.common.policies.ActorCriticPolicy`'s arguments, with these defaults: no MLP
    between the transformer and the heads (``net_arch=[]``), no orthogonal initialisation (it would overwrite the
    LM head, which GPT-2 ties to the token embedding), one features extractor for actor and critic.

    :param model_path: a directory written by ``save_pretrained`` (this package's pretraining, or a real GPT-2
        checkpoint); None for a new model
    :param model_config: ``GPT2Config`` settings for a new model, over ``DEFAULT_MODEL_CONFIG``
    :param dropout: the transformer's dropout probabilities (0 by default, also for a loaded checkpoint)
    """

    features_extractor: GPT2FeaturesExtractor

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        model_path: str | os.PathLike[str] | None = None,
        model_config: dict[str, Any] | None = None,
        dropout: float = 0.0,
        **kwargs: Any,
    ):
        if not kwargs.get("share_features_extractor", True):
            raise ValueError("share_features_extractor must be True for TransformerPolicy (one transformer, two heads)")
        for name in ("features_extractor_class", "features_extractor_kwargs"):
            if kwargs.pop(name, None) not in (None, GPT2FeaturesExtractor) and name == "features_extractor_class":
                raise ValueError(f"{name} is fixed to GPT2FeaturesExtractor by TransformerPolicy")
        self.model_path = None if model_path is None else str(model_path)
        self.model_config = model_config
        self.dropout = dropout
        language_model = make_language_model(observation_space, action_space, model_path, model_config, dropout)
        kwargs.setdefault("net_arch", [])
        kwargs.setdefault("ortho_init", False)
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            features_extractor_class=GPT2FeaturesExtractor,
            features_extractor_kwargs={"language_model": language_model},
            **kwargs,
        )

    def _build(self, lr_schedule: Schedule) -> None:
        super()._build(lr_schedule)
        # The action net is the LM head (SB3's _build has no hook between creating the action net and the optimizer,
        # so the optimizer is made again, over the parameters that are used).
        self.action_net = self.features_extractor.language_model.lm_head
        # A zero value head: its first gradients do not reach (and disturb) the pretrained transformer.
        th.nn.init.zeros_(self.value_net.weight)
        th.nn.init.zeros_(self.value_net.bias)
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)  # type: ignore[call-arg]

    @property
    def language_model(self) -> GPT2LMHeadModel:
        return self.features_extractor.language_model

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        del data["features_extractor_class"], data["features_extractor_kwargs"]
        data.update(model_path=self.model_path, model_config=self.model_config, dropout=self.dropout)
        return data

    def save_pretrained(self, directory: str | os.PathLike[str], tokenizer: Any = None) -> None:
        """Save the language model (not the value head) with ``save_pretrained``, and ``tokenizer`` with it if given,
        so that it can be loaded as ``model_path`` or as a KL reference."""
        self.language_model.save_pretrained(directory)
        if tokenizer is not None:
            tokenizer.save_pretrained(directory)

    @classmethod
    def from_pretrained(
        cls, model_path: str | os.PathLike[str], observation_space: spaces.Space, action_space: spaces.Space, **kwargs: Any
    ) -> TransformerPolicy:
        """A policy over these spaces whose language model is loaded from ``model_path`` (e.g. a KL reference)."""
        return cls(observation_space, action_space, ConstantSchedule(0.0), model_path=model_path, **kwargs)
