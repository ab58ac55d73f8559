"""Every variant on every action space, with Dict observations, VecNormalize, callbacks and the progress bar.

The assertions go beyond "it runs": for every rollout, the old distribution stored in the buffer by the forward
hook must be the one the policy (as it was at collection time) gives for the stored observations, row by row,
and must give back the stored ``log_prob`` of the stored action; the ``train/kl`` logged after every update must
be finite, positive and equal to KL(pi_old || pi_new) recomputed here with ``torch.distributions`` alone.
EvalCallback calls ``predict`` in the middle of collection, between the hook and ``rollout_buffer.add``: a test
checks that this leaves the stored distributions intact, and that the same check does catch a ``predict`` that
goes through ``policy.forward``. Another one checks that a copy of the policy taken by a
callback during collection cannot write into the buffer.
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from helpers import PLAIN_VARIANTS
from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback, EvalCallback
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize
from torch.distributions import Bernoulli, Categorical, Normal, kl_divergence

from sb3_ppo_variants import VARIANTS

# Per-variant settings: constructor arguments, and what the variant must log.
VARIANT_SETTINGS: dict[str, dict[str, Any]] = {
    "clip": dict(kwargs={}, kl_penalty_logged=False),
    "kl": dict(kwargs=dict(kl_coef=0.5), kl_penalty_logged=True),
    "adaptive_kl": dict(kwargs=dict(kl_coef=1.0, kl_target=0.01), kl_penalty_logged=True),
    "clip_kl": dict(kwargs=dict(kl_coef=0.2, kl_target=0.01), kl_penalty_logged=True),
}
assert set(VARIANT_SETTINGS) == set(PLAIN_VARIANTS)

# Large enough for a KL of ~1e-3 per update, which float32 computes to better than the 1e-3 relative tolerance below
LEARNING_RATE = 3e-3
BOX_ACTIONS = spaces.Box(-1.0, 1.0, (2,), np.float32)
ACTION_CASES: dict[str, tuple[spaces.Space, dict[str, Any]]] = {
    "discrete": (spaces.Discrete(3), {}),
    "box": (BOX_ACTIONS, {}),
    "box_sde": (BOX_ACTIONS, dict(use_sde=True)),
    "multidiscrete": (spaces.MultiDiscrete([3, 2]), {}),
    "multibinary": (spaces.MultiBinary(3), {}),
}
OBSERVATION_CASES: dict[str, tuple[str, spaces.Space]] = {
    "box": ("MlpPolicy", spaces.Box(-1.0, 1.0, (3,), np.float32)),
    "dict": ("MultiInputPolicy", spaces.Dict({"vec": spaces.Box(-1.0, 1.0, (3,), np.float32), "disc": spaces.Discrete(4)})),
}


class SpacesEnv(gym.Env):
    """Random observations from any space, any action space, N(0, 1) rewards, episodes of ``ep_length`` steps."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space, ep_length: int = 16):
        super().__init__()
        self.observation_space = copy.deepcopy(observation_space)
        self.action_space = copy.deepcopy(action_space)
        self.ep_length = ep_length
        self.t = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self.observation_space.seed(seed)
        self.t = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        self.t += 1
        reward = float(self.np_random.normal())
        return self.observation_space.sample(), reward, False, self.t >= self.ep_length, {}


def make_vec_env(obs_space: spaces.Space, action_space: spaces.Space, n_envs: int, ep_length: int = 16) -> DummyVecEnv:
    return DummyVecEnv([lambda: SpacesEnv(obs_space, action_space, ep_length)] * n_envs)


class RecordingLogger(Logger):
    """A logger without outputs that keeps every recorded value, in order."""

    def __init__(self) -> None:
        super().__init__(folder=None, output_formats=[])
        self.history: dict[str, list[Any]] = defaultdict(list)

    def record(self, key: str, value: Any, exclude: str | tuple[str, ...] | None = None) -> None:
        super().record(key, value, exclude)
        self.history[key].append(value)


class RolloutSnapshots(BaseCallback):
    """Copies the filled rollout buffer and the collecting policy's weights at the end of each collection,
    i.e. before ``train`` reads (and reorders) the buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.snapshots: list[dict[str, Any]] = []

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        buffer = self.model.rollout_buffer
        self.snapshots.append(
            dict(
                observations=copy.deepcopy(buffer.observations),
                actions=buffer.actions.copy(),
                log_probs=buffer.log_probs.copy(),
                old_dist_params=buffer.old_dist_params.copy(),
                # state_dict, not the policy: a deepcopy made during collection would carry the forward hook along
                policy_state={k: v.detach().clone() for k, v in self.model.policy.state_dict().items()},
            )
        )


# ---- the old distribution, rebuilt from the stored parameters with torch.distributions only -------------------
# Layout (sb3_ppo_variants.kl.distribution_params): logits for Discrete/MultiDiscrete/MultiBinary, mean then std
# for Box.


def _split(space: spaces.Space, params: th.Tensor) -> list[th.Tensor]:
    return list(th.split(params, [int(n) for n in space.nvec], dim=1))


def _stored_vs_sb3_discrete(space, stored, dist):
    # Here and below: rows stored during the rollout (n_envs rows per forward pass) against the policy rerun on the
    # whole rollout in one forward pass (other matmul shapes round differently): probabilities measured at most
    # 8.9e-8 absolute, 3.0e-7 relative on matching rows
    return th.isclose(th.softmax(stored, -1), dist.distribution.probs, rtol=1e-4, atol=1e-6).all(-1)


def _stored_vs_sb3_multidiscrete(space, stored, dist):
    rows = [
        # as in _stored_vs_sb3_discrete
        th.isclose(th.softmax(part, -1), sub.probs, rtol=1e-4, atol=1e-6).all(-1)
        for part, sub in zip(_split(space, stored), dist.distribution)
    ]
    return th.stack(rows, dim=1).all(-1)


def _stored_vs_sb3_multibinary(space, stored, dist):
    # as in _stored_vs_sb3_discrete
    return th.isclose(th.sigmoid(stored), dist.distribution.probs, rtol=1e-4, atol=1e-6).all(-1)


def _stored_vs_sb3_box(space, stored, dist):
    d = stored.shape[1] // 2
    normal = dist.distribution
    # as in _stored_vs_sb3_discrete: means measured 3.0e-8, standard deviations 2.4e-7 absolute on matching rows
    same_mean = th.isclose(stored[:, :d], normal.loc, rtol=1e-4, atol=1e-6).all(-1)
    same_std = th.isclose(stored[:, d:], normal.scale.expand_as(normal.loc), rtol=1e-4, atol=1e-6).all(-1)
    return same_mean & same_std


def _log_prob_discrete(space, stored, actions):
    return Categorical(logits=stored).log_prob(actions[:, 0].long())


def _log_prob_multidiscrete(space, stored, actions):
    parts = _split(space, stored)
    return sum(Categorical(logits=part).log_prob(actions[:, i].long()) for i, part in enumerate(parts))


def _log_prob_multibinary(space, stored, actions):
    return Bernoulli(logits=stored).log_prob(actions).sum(-1)


def _log_prob_box(space, stored, actions):
    d = stored.shape[1] // 2
    return Normal(stored[:, :d], stored[:, d:]).log_prob(actions).sum(-1)


def _kl_discrete(space, stored, dist):
    return kl_divergence(Categorical(logits=stored), Categorical(logits=dist.distribution.logits))


def _kl_multidiscrete(space, stored, dist):
    parts = _split(space, stored)
    return sum(
        kl_divergence(Categorical(logits=p), Categorical(logits=sub.logits)) for p, sub in zip(parts, dist.distribution)
    )


def _kl_multibinary(space, stored, dist):
    return kl_divergence(Bernoulli(logits=stored), Bernoulli(logits=dist.distribution.logits)).sum(-1)


def _kl_box(space, stored, dist):
    d = stored.shape[1] // 2
    new = dist.distribution
    return kl_divergence(Normal(stored[:, :d], stored[:, d:]), Normal(new.loc, new.scale.expand_as(new.loc))).sum(-1)


Check = Callable[[spaces.Space, th.Tensor, Any], th.Tensor]
BY_SPACE: dict[type, dict[str, Check]] = {
    spaces.Discrete: dict(same=_stored_vs_sb3_discrete, log_prob=_log_prob_discrete, kl=_kl_discrete),
    spaces.MultiDiscrete: dict(same=_stored_vs_sb3_multidiscrete, log_prob=_log_prob_multidiscrete, kl=_kl_multidiscrete),
    spaces.MultiBinary: dict(same=_stored_vs_sb3_multibinary, log_prob=_log_prob_multibinary, kl=_kl_multibinary),
    spaces.Box: dict(same=_stored_vs_sb3_box, log_prob=_log_prob_box, kl=_kl_box),
}


def _rows(array: np.ndarray, n: int) -> np.ndarray:
    return array.reshape(n, *array.shape[2:])


def _flat_obs(observations, n: int):
    if isinstance(observations, dict):
        return {key: _rows(value, n) for key, value in observations.items()}
    return _rows(observations, n)


@contextmanager
def _policy_with(model, state: dict[str, th.Tensor]):
    """The model's own policy with the weights ``state``, in eval mode (a deepcopy fails with gSDE's non-leaf
    tensors); its weights and mode are restored afterwards. Only used after learn(), when no hook is left."""
    policy = model.policy
    saved = {k: v.detach().clone() for k, v in policy.state_dict().items()}
    was_training = policy.training
    policy.load_state_dict(state)
    policy.set_training_mode(False)
    try:
        yield policy
    finally:
        policy.load_state_dict(saved)
        policy.set_training_mode(was_training)


@th.no_grad()
def stored_rows_consistent(model, snapshot: dict[str, Any]) -> np.ndarray:
    """Per buffer row: do the stored old-distribution parameters equal the distribution of the collecting policy
    on the stored observation, and give back the stored log_prob of the stored action?"""
    space = model.action_space
    checks = BY_SPACE[type(space)]
    n = snapshot["actions"].shape[0] * snapshot["actions"].shape[1]
    with _policy_with(model, snapshot["policy_state"]) as policy:
        dist = policy.get_distribution(obs_as_tensor(_flat_obs(snapshot["observations"], n), policy.device))
    stored = th.as_tensor(_rows(snapshot["old_dist_params"], n))
    same = checks["same"](space, stored, dist)
    actions = th.as_tensor(_rows(snapshot["actions"], n)).float()  # the buffer may keep the action space's dtype
    log_probs = th.as_tensor(snapshot["log_probs"].reshape(n))
    same_log_prob = th.isclose(checks["log_prob"](space, stored, actions), log_probs, rtol=1e-4, atol=1e-4)
    return (same & same_log_prob).numpy()


@th.no_grad()
def exact_rollout_kl(model, snapshot: dict[str, Any], new_state: dict[str, th.Tensor]) -> float:
    """Mean KL(pi_old || pi_new) over the snapshot's rollout, pi_new being the policy with ``new_state``."""
    space = model.action_space
    n = snapshot["actions"].shape[0] * snapshot["actions"].shape[1]
    with _policy_with(model, new_state) as policy:
        dist = policy.get_distribution(obs_as_tensor(_flat_obs(snapshot["observations"], n), policy.device))
    stored = th.as_tensor(_rows(snapshot["old_dist_params"], n)).double()
    return float(BY_SPACE[type(space)]["kl"](space, stored, _double(dist)).mean())


class _Double:
    """A view of an SB3 distribution with float64 parameters, so the reference KL is more precise than the package's."""

    def __init__(self, dist: Any) -> None:
        inner = dist.distribution
        if isinstance(inner, list):
            self.distribution = [Categorical(logits=d.logits.double()) for d in inner]
        elif isinstance(inner, Categorical):
            self.distribution = Categorical(logits=inner.logits.double())
        elif isinstance(inner, Bernoulli):
            self.distribution = Bernoulli(logits=inner.logits.double())
        else:
            self.distribution = Normal(inner.loc.double(), inner.scale.double())


def _double(dist: Any) -> _Double:
    return _Double(dist)


def check_model_after_learn(model, snapshots: RolloutSnapshots, logger: RecordingLogger, n_updates: int, settings) -> None:
    """The assertions shared by the tests below."""
    assert len(model.policy._forward_hooks) == 0, "the collection hook must not outlive collect_rollouts"
    assert len(snapshots.snapshots) == n_updates
    kls = logger.history["train/kl"]
    assert len(kls) == n_updates
    final_state = {k: v.detach().clone() for k, v in model.policy.state_dict().items()}
    for i, snapshot in enumerate(snapshots.snapshots):
        rows = stored_rows_consistent(model, snapshot)
        assert rows.all(), f"rollout {i}: {np.flatnonzero(~rows).tolist()} stored rows do not match the collecting policy"
        assert math.isfinite(kls[i]) and kls[i] > 0.0, kls
        new_state = snapshots.snapshots[i + 1]["policy_state"] if i + 1 < n_updates else final_state
        # the logged float32 KL (O(1) log-probabilities, KLs near 1e-3) vs the float64 reference: measured at most
        # 1.1e-7 absolute, 1.6e-4 relative
        assert kls[i] == pytest.approx(exact_rollout_kl(model, snapshot, new_state), rel=1e-3, abs=1e-9)
    assert ("train/kl_penalty" in logger.history) == settings["kl_penalty_logged"]
    for value in logger.history.get("train/kl_penalty", []):
        assert math.isfinite(value)


# ---- every action space x Box / Dict observations ----------------------------------------------------------------


@pytest.mark.parametrize("variant", PLAIN_VARIANTS)
@pytest.mark.parametrize("obs_case", list(OBSERVATION_CASES))
@pytest.mark.parametrize("action_case", list(ACTION_CASES))
def test_every_action_space(variant, obs_case, action_case):
    settings = VARIANT_SETTINGS[variant]
    policy, obs_space = OBSERVATION_CASES[obs_case]
    action_space, action_kwargs = ACTION_CASES[action_case]
    n_envs, n_steps, n_updates = 2, 32, 3
    env = make_vec_env(obs_space, action_space, n_envs)
    model = VARIANTS[variant](
        policy,
        env,
        n_steps=n_steps,
        batch_size=32,
        n_epochs=3,
        seed=0,
        learning_rate=LEARNING_RATE,
        policy_kwargs=dict(net_arch=[16]),
        **action_kwargs,
        **settings["kwargs"],
    )
    logger = RecordingLogger()
    model.set_logger(logger)
    snapshots = RolloutSnapshots()
    model.learn(n_updates * n_steps * n_envs, callback=snapshots)

    assert model.num_timesteps == n_updates * n_steps * n_envs
    check_model_after_learn(model, snapshots, logger, n_updates, settings)
    obs = env.reset()
    actions, _ = model.predict(obs, deterministic=True)
    assert all(action_space.contains(np.asarray(a, dtype=action_space.dtype)) for a in actions)


# ---- VecNormalize, with an EvalCallback on a synchronised evaluation env ----------------------------------------


@pytest.mark.parametrize("variant", PLAIN_VARIANTS)
@pytest.mark.parametrize("obs_case", list(OBSERVATION_CASES))
def test_vec_normalize(variant, obs_case, tmp_path):
    settings = VARIANT_SETTINGS[variant]
    policy, obs_space = OBSERVATION_CASES[obs_case]
    norm_kwargs = dict(norm_obs_keys=["vec"]) if isinstance(obs_space, spaces.Dict) else {}
    n_envs, n_steps, n_updates = 2, 32, 3
    env = VecNormalize(make_vec_env(obs_space, BOX_ACTIONS, n_envs), clip_obs=5.0, **norm_kwargs)
    eval_env = VecNormalize(
        make_vec_env(obs_space, BOX_ACTIONS, 1, ep_length=4), training=False, norm_reward=False, **norm_kwargs
    )
    model = VARIANTS[variant](
        policy,
        env,
        n_steps=n_steps,
        batch_size=32,
        n_epochs=3,
        seed=0,
        learning_rate=LEARNING_RATE,
        policy_kwargs=dict(net_arch=[16]),
        **settings["kwargs"],
    )
    assert model.get_vec_normalize_env() is env
    logger = RecordingLogger()
    model.set_logger(logger)
    snapshots = RolloutSnapshots()
    eval_callback = EvalCallback(eval_env, eval_freq=16, n_eval_episodes=1, log_path=str(tmp_path), warn=False)
    model.learn(n_updates * n_steps * n_envs, callback=[snapshots, eval_callback])

    check_model_after_learn(model, snapshots, logger, n_updates, settings)
    # The buffer holds what the policy saw: normalised observations (clipped at clip_obs), not the raw ones
    for snapshot in snapshots.snapshots:
        stored = snapshot["observations"]["vec"] if isinstance(stored_obs := snapshot["observations"], dict) else stored_obs
        assert np.abs(stored).max() <= 5.0
        assert np.abs(stored).max() > 1.0  # raw observations live in [-1, 1]; normalised ones spread wider
    # EvalCallback synchronised the statistics into the evaluation env (SB3 copies obs_rms at every evaluation)
    n_evaluations = n_updates * n_steps // 16
    assert len(eval_callback.evaluations_timesteps) == n_evaluations
    train_rms = env.obs_rms["vec"] if isinstance(env.obs_rms, dict) else env.obs_rms
    eval_rms = eval_env.obs_rms["vec"] if isinstance(eval_env.obs_rms, dict) else eval_env.obs_rms
    assert eval_rms.count > 1.0
    assert eval_rms.count <= train_rms.count


# ---- EvalCallback, CheckpointCallback, progress bar ---------------------------------------------------------------


class BetaRecorder(BaseCallback):
    """The KL coefficient in force at every timestep (None for variants without a KL penalty)."""

    def __init__(self) -> None:
        super().__init__()
        self.beta: dict[int, float | None] = {}

    def _on_step(self) -> bool:
        controller = self.model.kl_controller
        self.beta[self.num_timesteps] = None if controller is None else controller.value
        return True


@pytest.mark.parametrize("variant", PLAIN_VARIANTS)
def test_eval_and_checkpoint_callbacks_with_progress_bar(variant, tmp_path):
    settings = VARIANT_SETTINGS[variant]
    model_class = VARIANTS[variant]
    obs_space, action_space = OBSERVATION_CASES["box"][1], spaces.Discrete(3)
    n_envs, n_steps, n_updates, eval_freq, save_freq, eval_episode_length = 2, 16, 4, 8, 16, 5
    total = n_updates * n_steps * n_envs
    env = make_vec_env(obs_space, action_space, n_envs)
    eval_env = make_vec_env(obs_space, action_space, 1, ep_length=eval_episode_length)
    model = model_class("MlpPolicy", env, n_steps=n_steps, batch_size=32, n_epochs=2, seed=0, **settings["kwargs"])

    eval_callback = EvalCallback(
        eval_env,
        eval_freq=eval_freq,
        n_eval_episodes=2,
        log_path=str(tmp_path / "eval"),
        best_model_save_path=str(tmp_path / "best"),
        warn=False,
    )
    checkpoints = CheckpointCallback(save_freq=save_freq, save_path=str(tmp_path / "checkpoints"))
    recorder = BetaRecorder()
    snapshots = RolloutSnapshots()
    model.learn(total, callback=[recorder, snapshots, eval_callback, checkpoints], progress_bar=True)
    assert model.num_timesteps == total

    # evaluations.npz: one evaluation every eval_freq calls, i.e. every eval_freq * n_envs timesteps
    data = np.load(tmp_path / "eval" / "evaluations.npz")
    expected_timesteps = list(range(eval_freq * n_envs, total + 1, eval_freq * n_envs))
    assert data["timesteps"].tolist() == expected_timesteps
    assert data["results"].shape == (len(expected_timesteps), 2)
    assert (data["ep_lengths"] == eval_episode_length).all()
    assert np.isfinite(data["results"]).all()

    best = model_class.load(tmp_path / "best" / "best_model.zip")
    assert type(best) is model_class

    # Checkpoints: exactly the expected files, each loads as the same variant with the state it had then
    expected_steps = list(range(save_freq * n_envs, total + 1, save_freq * n_envs))
    files = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert files == sorted(f"rl_model_{steps}_steps.zip" for steps in expected_steps)
    # save_freq * n_envs == n_steps * n_envs: the k-th checkpoint is written at the last step of the k-th rollout,
    # before its update, so it holds the weights that collected that rollout
    assert save_freq == n_steps
    obs = env.reset()
    for steps, snapshot in zip(expected_steps, snapshots.snapshots, strict=True):
        loaded = model_class.load(tmp_path / "checkpoints" / f"rl_model_{steps}_steps.zip", env=env)
        assert type(loaded) is model_class
        assert loaded.num_timesteps == steps
        loaded_beta = None if loaded.kl_controller is None else loaded.kl_controller.value
        assert loaded_beta == recorder.beta[steps]
        for key, value in snapshot["policy_state"].items():
            assert th.equal(value, loaded.policy.state_dict()[key]), key
        actions, _ = loaded.predict(obs, deterministic=True)
        assert actions.shape == (n_envs,)


# ---- predict() during collection must not touch the stored old distributions ------------------------------------


def _predict_through_forward(policy):
    """What ``policy._predict`` would be if ``predict`` went through ``policy.forward`` (and so through the hook)."""

    def _predict(observation, deterministic=False):
        actions, _, _ = policy(observation, deterministic)
        return actions

    return _predict


@pytest.mark.parametrize("variant", PLAIN_VARIANTS)
@pytest.mark.parametrize("predict_route", ["sb3_predict", "predict_through_forward"])
def test_eval_callback_predict_does_not_corrupt_old_distribution(variant, predict_route, tmp_path):
    """EvalCallback runs in ``on_step``, after the hook stored this step's distribution and before ``add``: its
    ``predict`` calls must leave that row alone. The ``predict_through_forward`` case routes ``predict`` through
    ``policy.forward`` and shows that the very same check catches the corruption."""
    settings = VARIANT_SETTINGS[variant]
    obs_space = OBSERVATION_CASES["box"][1]
    n_steps, n_updates = 32, 2
    # One training env and one eval env: a hook fired by predict would overwrite the row silently (same shape)
    env = make_vec_env(obs_space, BOX_ACTIONS, 1)
    eval_env = make_vec_env(obs_space, BOX_ACTIONS, 1, ep_length=3)
    model = VARIANTS[variant](
        "MlpPolicy", env, n_steps=n_steps, batch_size=32, n_epochs=2, seed=0, learning_rate=LEARNING_RATE, **settings["kwargs"]
    )
    if predict_route == "predict_through_forward":
        model.policy._predict = _predict_through_forward(model.policy)
    logger = RecordingLogger()
    model.set_logger(logger)
    snapshots = RolloutSnapshots()
    # evaluate at every step of the collection
    eval_callback = EvalCallback(eval_env, eval_freq=1, n_eval_episodes=1, log_path=str(tmp_path), warn=False)
    model.learn(n_updates * n_steps, callback=[snapshots, eval_callback])

    assert len(eval_callback.evaluations_timesteps) == n_updates * n_steps  # predict really ran during collection
    assert len(model.policy._forward_hooks) == 0
    assert len(snapshots.snapshots) == n_updates
    consistent = np.concatenate([stored_rows_consistent(model, s) for s in snapshots.snapshots])
    if predict_route == "sb3_predict":
        assert consistent.all(), f"{np.count_nonzero(~consistent)} rows corrupted by predict during collection"
        check_model_after_learn(model, snapshots, logger, n_updates, settings)
    else:
        # every row was overwritten with the distribution of an evaluation env's observation
        assert not consistent.any()


class CopyPolicyDuringCollection(BaseCallback):
    """A callback that takes a frozen copy of the policy mid-collection (an opponent for self-play, a snapshot for
    an EMA or a league) and queries it at every later step with observations of its own."""

    def __init__(self, observation_space: spaces.Space, copy_at: int) -> None:
        super().__init__()
        self.observation_space = observation_space
        self.copy_at = copy_at
        self.frozen = None

    def _on_step(self) -> bool:
        if self.n_calls == self.copy_at:
            self.frozen = copy.deepcopy(self.model.policy)
            self.frozen.set_training_mode(False)
        if self.frozen is not None:
            obs = np.stack([self.observation_space.sample()])
            with th.no_grad():
                self.frozen(obs_as_tensor(obs, self.frozen.device))
        return True


@pytest.mark.parametrize("variant", PLAIN_VARIANTS)
def test_policy_copied_during_collection_does_not_write_to_buffer(variant):
    settings = VARIANT_SETTINGS[variant]
    obs_space = OBSERVATION_CASES["box"][1]
    n_steps = 32
    env = make_vec_env(obs_space, spaces.Discrete(3), 1)
    model = VARIANTS[variant](
        "MlpPolicy", env, n_steps=n_steps, batch_size=32, n_epochs=2, seed=0, learning_rate=LEARNING_RATE, **settings["kwargs"]
    )
    snapshots = RolloutSnapshots()
    model.learn(n_steps, callback=[snapshots, CopyPolicyDuringCollection(obs_space, copy_at=5)])
    consistent = stored_rows_consistent(model, snapshots.snapshots[0])
    assert consistent.all(), f"{np.count_nonzero(~consistent)} of {consistent.size} rows overwritten by the copy's hook"
