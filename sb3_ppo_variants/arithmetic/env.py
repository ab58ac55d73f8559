"""The arithmetic environment: answer a prompt such as ``"37+48="`` one token at a time.

Each episode poses one problem of its split. The observation is the token ids so far (the prompt, then the answer
generated so far), right-padded to a fixed length: a ``Box`` of integers, so that SB3 passes the ids through
instead of one-hot encoding them. The action is the next token. The episode ends when the policy emits the end
token (the answer is then scored), emits the padding token (malformed, reward 0), or reaches
``max_answer_tokens`` without an end token (too long, reward 0).

The problems (every operand pair with every operator) are split once, by ``split_seed``, into a training set and a
held-out set (``held_out_fraction`` of them); an environment poses only the problems of its ``split``. The split is by
problem up to commutation: for a commutative operator (``+``, ``*``) ``a+b`` and its twin ``b+a`` (the same answer)
fall on the same side, so a held-out prompt's twin is never trained on.

The reward is the built-in exact (or shaped) score against the correct answer, or any scorer of one's own:
``ArithmeticEnv(reward_fn=score)`` with ``score(prompt, answer_text) -> float`` (the hook where TRL users plug in a
reward model).
"""

from __future__ import annotations

import copy
import math
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from sb3_ppo_variants.arithmetic.tokenizer import CharTokenizer, load_tokenizer

__all__ = [
    "COMMUTATIVE",
    "ENV_ID",
    "OPERATORS",
    "REWARDS",
    "SPLITS",
    "ArithmeticEnv",
    "answer_score",
    "generate_answers",
    "greedy_accuracy",
    "prompt_subset",
]

ENV_ID = "sb3pv/Arithmetic-v0"
OPERATORS: dict[str, Callable[[int, int], int]] = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
#: The operators for which ``a op b == b op a``: a problem and its commuted twin are held out together.
COMMUTATIVE = frozenset({"+", "*"})
REWARDS = ("exact", "digits")
SPLITS = ("train", "held_out")
_INTEGER = re.compile(r"-?[0-9]+")


def answer_score(answer: str, correct: str, reward: str = "exact") -> float:
    """The reward for ``answer`` (the text before the end token) when ``correct`` is right.

    ``"exact"``: 1 for exactly the correct text (no leading zeros, no sign on a non-negative result), else 0.
    ``"digits"`` (shaped): 1 for the exact answer; for any other integer literal, the fraction of the
    ``max(len(answer), len(correct))`` right-aligned character positions (units under units) where they agree,
    e.g. ``"84"`` for ``"85"`` scores 1/2 and ``"185"`` for ``"85"`` 2/3; 0 for anything that is not an integer.
    """
    if answer == correct:
        return 1.0
    if reward == "exact" or not _INTEGER.fullmatch(answer):
        return 0.0
    width = max(len(answer), len(correct))
    return sum(a == c for a, c in zip(answer.rjust(width), correct.rjust(width))) / width


def _operand_values(digits: int | Sequence[int], operands: Sequence[int] | None) -> list[int]:
    if operands is not None:
        values = sorted({int(value) for value in operands})
        if not values or any(value < 0 for value in values) or any(not float(v).is_integer() for v in operands):
            raise ValueError(f"operands must be a non-empty sequence of integers >= 0, got {operands!r}")
        return values
    counts = [digits] if isinstance(digits, int) else list(digits)
    if not counts or any(isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= 6 for d in counts):
        raise ValueError(f"digits must be an int in [1, 6] or a sequence of them (operand digit counts), got {digits!r}")
    ranges: set[int] = set()
    for count in counts:
        ranges.update(range(0 if count == 1 else 10 ** (count - 1), 10**count))
    return sorted(ranges)


def _call_reward_fn(reward_fn: Callable[[str, str], float], prompt: str, answer: str) -> float:
    value = reward_fn(prompt, answer)
    try:
        reward = float(value)
    except (TypeError, ValueError):
        reward = math.nan
    if not math.isfinite(reward):
        raise ValueError(f"reward_fn={reward_fn!r} must return a finite number, returned {value!r} for {(prompt, answer)!r}")
    return reward


def _held_out_problems(
    operators: Sequence[str], values: Sequence[int], held_out_fraction: float, split_seed: int
) -> list[bool]:
    """Whether each problem (in the order operator, first operand, second operand) is held out.

    The problems are grouped by what they ask up to commutation (``a+b`` with ``b+a``; ``a-b`` alone), the groups
    shuffled with ``split_seed``, and whole groups held out in that order until at least ``held_out_fraction`` of the
    problems are (one twin more at most).
    """
    group_of: dict[tuple[str, int, int], int] = {}
    groups = []
    for op in operators:
        for a in values:
            for b in values:
                key = (op, min(a, b), max(a, b)) if op in COMMUTATIVE else (op, a, b)
                groups.append(group_of.setdefault(key, len(group_of)))
    sizes = np.bincount(groups)
    order = np.random.default_rng(split_seed).permutation(len(sizes))
    n_held_out = max(1, math.ceil(held_out_fraction * len(groups)))
    # the shortest prefix of the shuffled groups that holds n_held_out problems
    n_groups = int(np.searchsorted(np.cumsum(sizes[order]), n_held_out)) + 1
    held = np.zeros(len(sizes), dtype=bool)
    held[order[:n_groups]] = True
    return held[groups].tolist()


class ArithmeticEnv(gym.Env[np.ndarray, np.int64]):
    """Arithmetic problems answered token by token (see the module docstring).

    :param operators: the operators of the problems, among ``"+"``, ``"-"``, ``"*"``
    :param digits: the operands' digit counts: ``2`` gives operands 10..99, ``(1, 2)`` gives 0..99
    :param operands: the operand values themselves (replaces ``digits``), e.g. ``range(0, 50)``
    :param split: ``"train"`` or ``"held_out"``: which problems the episodes pose
    :param held_out_fraction: the fraction of problems kept out of training, in (0, 1)
    :param split_seed: seeds the split of the problems into training and held-out sets (not the episodes)
    :param reward: ``"exact"`` (1 for an exactly correct answer, else 0) or ``"digits"`` (shaped, see
        :func:`answer_score`)
    :param reward_fn: one's own scorer instead of ``reward``: a callable ``(prompt, answer_text) -> float``, e.g.
        ``reward_fn("37+48=", "85")``, called once per answer that ends with the end token (``answer_text`` is the
        decoded text before it, possibly malformed such as ``"8+5"``); an answer that ends with a padding token or
        runs past ``max_answer_tokens`` gets 0 without a call. The hook for a reward model (TRL's PPO scores the
        response with one). It must return a finite number; for ``SubprocVecEnv`` it must be picklable (a
        module-level function, not a lambda). ``info["is_correct"]`` still says whether the answer is exact.
    :param max_answer_tokens: the most tokens an answer may take, end token included (default: the longest correct
        answer plus one)
    :param obs_length: the observation's length (default: the longest prompt plus ``max_answer_tokens``); must hold
        the longest prompt and answer
    :param tokenizer: a :class:`CharTokenizer` (the default), a directory saved by ``save_pretrained`` (a
        ``CharTokenizer``'s or a Hugging Face tokenizer's), or any object with ``encode``, ``decode``,
        ``pad_token_id``, ``eos_token_id`` and ``len()``
    :param render_mode: ``"ansi"`` renders the text so far; other modes (SB3's ``make_vec_env`` asks for
        ``"rgb_array"``) render nothing
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(
        self,
        operators: Sequence[str] = ("+",),
        digits: int | Sequence[int] = 2,
        operands: Sequence[int] | None = None,
        split: str = "train",
        held_out_fraction: float = 0.2,
        split_seed: int = 0,
        reward: str = "exact",
        reward_fn: Callable[[str, str], float] | None = None,
        max_answer_tokens: int | None = None,
        obs_length: int | None = None,
        tokenizer: Any = None,
        render_mode: str | None = None,
    ):
        if isinstance(operators, str):
            operators = list(operators)
        if not operators or any(op not in OPERATORS for op in operators) or len(set(operators)) != len(operators):
            raise ValueError(f"operators must be distinct operators among {list(OPERATORS)}, got {operators!r}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if reward not in REWARDS:
            raise ValueError(f"reward must be one of {REWARDS}, got {reward!r}")
        if reward_fn is not None and not callable(reward_fn):
            raise TypeError(f"reward_fn must be a callable (prompt, answer_text) -> float or None, got {reward_fn!r}")
        if reward_fn is not None and reward != "exact":
            raise ValueError(f"give reward or reward_fn, not both: reward={reward!r} with reward_fn={reward_fn!r}")
        if not isinstance(held_out_fraction, (int, float)) or not 0 < held_out_fraction < 1:
            raise ValueError(f"held_out_fraction must be a float in (0, 1), got {held_out_fraction!r}")
        self.operators = tuple(operators)
        self.split = split
        self.reward = reward
        self.reward_fn = reward_fn
        self.render_mode = render_mode
        if tokenizer is None:
            tokenizer = CharTokenizer()
        elif isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = load_tokenizer(tokenizer)
        self.tokenizer = tokenizer
        self.pad_token_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
        self.eos_token_id = int(tokenizer.eos_token_id)

        values = _operand_values(digits, operands)
        problems = [(f"{a}{op}{b}=", str(OPERATORS[op](a, b))) for op in self.operators for a in values for b in values]
        held_out = _held_out_problems(self.operators, values, held_out_fraction, split_seed)
        if all(held_out):
            raise ValueError(f"held_out_fraction={held_out_fraction} leaves no training problem out of {len(problems)}")
        chosen = [i for i in range(len(problems)) if held_out[i] == (split == "held_out")]
        other = [i for i in range(len(problems)) if held_out[i] != (split == "held_out")]
        #: The prompts of this split and their correct answers, in a fixed order.
        self.prompts = [problems[i][0] for i in chosen]
        self.answers = [problems[i][1] for i in chosen]
        #: The prompts of the other split (the held-out prompts, in a training env).
        self.other_prompts = [problems[i][0] for i in other]
        try:
            encoded = [(tokenizer.encode(prompt), tokenizer.encode(answer)) for prompt, answer in problems]
        except ValueError as error:
            raise ValueError(f"tokenizer {tokenizer!r} cannot encode every problem: {error}") from None
        self._prompt_ids = [np.asarray(encoded[i][0], dtype=np.int64) for i in chosen]

        longest_prompt = max(len(prompt_ids) for prompt_ids, _ in encoded)
        longest_answer = max(len(answer_ids) for _, answer_ids in encoded)
        if max_answer_tokens is None:
            max_answer_tokens = longest_answer + 1
        if isinstance(max_answer_tokens, bool) or not isinstance(max_answer_tokens, int) or max_answer_tokens < 1:
            raise ValueError(f"max_answer_tokens must be an int >= 1, got {max_answer_tokens!r}")
        self.max_answer_tokens = max_answer_tokens
        needed = longest_prompt + max_answer_tokens
        if obs_length is None:
            obs_length = needed
        if isinstance(obs_length, bool) or not isinstance(obs_length, int) or obs_length < needed:
            raise ValueError(
                f"obs_length={obs_length!r} is too short: the longest prompt takes {longest_prompt} tokens and an answer up "
                f"to max_answer_tokens={max_answer_tokens}, so obs_length must be an int >= {needed}"
            )
        self.obs_length = obs_length
        self.observation_space = spaces.Box(low=0, high=len(tokenizer) - 1, shape=(obs_length,), dtype=np.int64)
        self.action_space: spaces.Discrete = spaces.Discrete(len(tokenizer))
        self._tokens = np.full(obs_length, self.pad_token_id, dtype=np.int64)
        self._prompt_length = 0
        self._n_answer = 0
        self._problem = 0

    def observation(self, prompt: str, answer_ids: Sequence[int] = ()) -> np.ndarray:
        """The observation for ``prompt`` followed by the answer tokens ``answer_ids`` (padded to ``obs_length``)."""
        ids = [*self.tokenizer.encode(prompt), *answer_ids]
        if len(ids) > self.obs_length:
            raise ValueError(
                f"prompt {prompt!r} with {len(answer_ids)} answer tokens is longer than obs_length={self.obs_length}"
            )
        obs = np.full(self.obs_length, self.pad_token_id, dtype=np.int64)
        obs[: len(ids)] = ids
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode on a random problem of the split, or on ``options["prompt_index"]`` (into ``self.prompts``)."""
        super().reset(seed=seed)
        if options and "prompt_index" in options:
            self._problem = int(options["prompt_index"])
        else:
            self._problem = int(self.np_random.integers(len(self.prompts)))
        prompt_ids = self._prompt_ids[self._problem]
        self._tokens = np.full(self.obs_length, self.pad_token_id, dtype=np.int64)
        self._tokens[: len(prompt_ids)] = prompt_ids
        self._prompt_length = len(prompt_ids)
        self._n_answer = 0
        return self._tokens.copy(), {"prompt": self.prompts[self._problem]}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        token = int(action)
        if not 0 <= token < self.action_space.n:
            raise ValueError(f"action must be a token id in [0, {self.action_space.n}), got {action!r}")
        self._tokens[self._prompt_length + self._n_answer] = token
        self._n_answer += 1
        answer_ids = self._tokens[self._prompt_length : self._prompt_length + self._n_answer]
        info: dict[str, Any] = {"prompt": self.prompts[self._problem], "correct_answer": self.answers[self._problem]}
        if token == self.eos_token_id:
            info["answer"] = self.tokenizer.decode(answer_ids[:-1].tolist())
            info["is_correct"] = info["answer"] == self.answers[self._problem]
            if self.reward_fn is None:
                reward = answer_score(info["answer"], self.answers[self._problem], self.reward)
            else:
                reward = _call_reward_fn(self.reward_fn, info["prompt"], info["answer"])
            return self._tokens.copy(), reward, True, False, info
        if token == self.pad_token_id or self._n_answer >= self.max_answer_tokens:
            # A padding token is not an answer; an answer without an end token within the limit is too long.
            info["answer"] = self.tokenizer.decode(answer_ids.tolist())
            info["is_correct"] = False
            return self._tokens.copy(), 0.0, True, False, info
        return self._tokens.copy(), 0.0, False, False, info

    def render(self) -> str | None:  # type: ignore[override]
        if self.render_mode != "ansi":
            return None
        return self.tokenizer.decode(self._tokens[: self._prompt_length + self._n_answer].tolist())


def prompt_subset(env: ArithmeticEnv, n_prompts: int, seed: int = 0) -> ArithmeticEnv:
    """A copy of ``env`` that poses only ``n_prompts`` of its prompts (all of them if it has fewer), drawn with ``seed``
    (e.g. a quicker accuracy check on part of the held-out set)."""
    subset = copy.copy(env)
    chosen = sorted(np.random.default_rng(seed).permutation(len(env.prompts))[:n_prompts])
    subset.prompts = [env.prompts[i] for i in chosen]
    subset.answers = [env.answers[i] for i in chosen]
    subset._prompt_ids = [env._prompt_ids[i] for i in chosen]
    return subset


def generate_answers(
    predict: Callable[..., Any], env: ArithmeticEnv, prompts: Sequence[str] | None = None, deterministic: bool = True
) -> list[str | None]:
    """The answers a policy gives to ``prompts`` (default: all of ``env.prompts``), all prompts at once: the text
    before the end token, or None where the episode would end without one (a padding token, or too long).

    :param predict: an SB3 model's or policy's ``predict`` (takes a batch of observations)
    :param deterministic: greedy decoding (the most likely token) when True, sampling otherwise
    """
    prompts = list(env.prompts if prompts is None else prompts)
    answers: list[list[int]] = [[] for _ in prompts]
    active = list(range(len(prompts)))
    while active:
        obs = np.stack([env.observation(prompts[i], answers[i]) for i in active])
        actions, _ = predict(obs, deterministic=deterministic)
        still = []
        for i, token in zip(active, np.asarray(actions).reshape(-1).tolist()):
            answers[i].append(int(token))
            if token not in (env.eos_token_id, env.pad_token_id) and len(answers[i]) < env.max_answer_tokens:
                still.append(i)
        active = still
    return [env.tokenizer.decode(ids[:-1]) if ids[-1] == env.eos_token_id else None for ids in answers]


def greedy_accuracy(predict: Callable[..., Any], env: ArithmeticEnv) -> float:
    """The fraction of ``env.prompts`` (every problem of its split) that greedy decoding answers exactly."""
    answers = generate_answers(predict, env)
    return float(np.mean([answer == correct for answer, correct in zip(answers, env.answers)]))
