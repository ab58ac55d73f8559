"""Stable-Baselines3's tests of callbacks, logging, tensorboard, rollout buffers and VecNormalize, run against
every PPO variant in ``sb3_ppo_variants.VARIANTS``.

Ported from Stable-Baselines3's test suite (https://github.com/DLR-RM/stable-baselines3, ``tests/``):
test_callbacks.py, test_logger.py, test_tensorboard.py, test_buffers.py, test_vec_normalize.py. Every test
that exercises ``PPO`` there (and the on-policy A2C tests whose code path PPO shares: cancelling a run from a
callback, EvalCallback with VecNormalize, checkpoints with VecNormalize statistics, FPS and episode buffers) is
parametrised over the four variant classes through the ``model_class`` fixture. SB3's assertions are kept;
what changed is the class under test and, where a comment says so, ``n_steps``/timesteps (SB3 runs PPO with
its default ``n_steps=2048`` in some of these; the four-fold parametrisation needs a smaller budget).

Stable-Baselines3 is Copyright (c) 2019 Antonin Raffin, MIT License: see tests/LICENSE-stable-baselines3.txt.
"""

from __future__ import annotations

import os
import shutil
from unittest import mock

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.callbacks import (
    BaseCallback,
    CallbackList,
    CheckpointCallback,
    EvalCallback,
    EveryNTimesteps,
    StopTrainingOnMaxEpisodes,
    StopTrainingOnNoModelImprovement,
    StopTrainingOnRewardThreshold,
)
from stable_baselines3.common.env_checker import check_env
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import IdentityEnv
from stable_baselines3.common.logger import HParam, Logger
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.utils import get_device
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from sb3_ppo_variants.buffers import (
    OldDistributionBufferMixin,
    OldDistributionDictRolloutBuffer,
    OldDistributionRolloutBuffer,
)

# --------------------------------------------------------------------------------------------------------------
# test_callbacks.py
# --------------------------------------------------------------------------------------------------------------


def select_env(model_class) -> str:
    # SB3: "CartPole-v1" for DQN, "Pendulum-v1" for everything else
    return "Pendulum-v1"


def test_callbacks(tmp_path, model_class):
    log_folder = tmp_path / "logs/callbacks/"

    env_id = select_env(model_class)
    # Create RL model
    # Small network for fast test
    model = model_class("MlpPolicy", env_id, policy_kwargs=dict(net_arch=[32]))

    checkpoint_callback = CheckpointCallback(save_freq=1000, save_path=log_folder)

    eval_env = gym.make(env_id)
    # Stop training if the performance is good enough
    callback_on_best = StopTrainingOnRewardThreshold(reward_threshold=-1200, verbose=1)

    # Stop training if there is no model improvement after 2 evaluations
    callback_no_model_improvement = StopTrainingOnNoModelImprovement(max_no_improvement_evals=2, min_evals=1, verbose=1)

    eval_callback = EvalCallback(
        eval_env,
        callback_on_new_best=callback_on_best,
        callback_after_eval=callback_no_model_improvement,
        best_model_save_path=log_folder,
        log_path=log_folder,
        eval_freq=100,
        warn=False,
    )
    # Equivalent to the `checkpoint_callback`
    # but here in an event-driven manner
    checkpoint_on_event = CheckpointCallback(save_freq=1, save_path=log_folder, name_prefix="event")

    event_callback = EveryNTimesteps(n_steps=500, callback=checkpoint_on_event)

    # Stop training if max number of episodes is reached
    callback_max_episodes = StopTrainingOnMaxEpisodes(max_episodes=100, verbose=1)

    callback = CallbackList([checkpoint_callback, eval_callback, event_callback, callback_max_episodes])
    model.learn(500, callback=callback)

    # Check access to local variables
    assert model.env.observation_space.contains(callback.locals["new_obs"][0])
    # Check that the child callback was called
    assert checkpoint_callback.locals["new_obs"] is callback.locals["new_obs"]
    assert event_callback.locals["new_obs"] is callback.locals["new_obs"]
    assert checkpoint_on_event.locals["new_obs"] is callback.locals["new_obs"]
    # Check that internal callback counters match models' counters
    assert event_callback.num_timesteps == model.num_timesteps
    assert event_callback.n_calls == model.num_timesteps

    model.learn(500, callback=None)
    # Transform callback into a callback list automatically and use progress bar
    model.learn(500, callback=[checkpoint_callback, eval_callback], progress_bar=True)
    # Automatic wrapping, old way of doing callbacks
    model.learn(500, callback=lambda _locals, _globals: True)

    # Testing models that support multiple envs
    max_episodes = 1
    n_envs = 2
    # Pendulum-v1 has a timelimit of 200 timesteps
    max_episode_length = 200
    envs = make_vec_env(env_id, n_envs=n_envs, seed=0)

    model = model_class("MlpPolicy", envs, policy_kwargs=dict(net_arch=[32]))

    callback_max_episodes = StopTrainingOnMaxEpisodes(max_episodes=max_episodes, verbose=1)
    callback = CallbackList([callback_max_episodes])
    model.learn(1000, callback=callback)

    # Check that the actual number of episodes and timesteps per env matches the expected one
    episodes_per_env = callback_max_episodes.n_episodes // n_envs
    assert episodes_per_env == max_episodes
    timesteps_per_env = model.num_timesteps // n_envs
    assert timesteps_per_env == max_episode_length

    if os.path.exists(log_folder):
        shutil.rmtree(log_folder)


def test_eval_callback_vec_env(model_class):
    # tests that eval callback does not crash when given a vector
    n_eval_envs = 3
    train_env = IdentityEnv()
    eval_env = DummyVecEnv([lambda: IdentityEnv()] * n_eval_envs)
    model = model_class("MlpPolicy", train_env, seed=0)

    eval_callback = EvalCallback(
        eval_env,
        eval_freq=100,
        warn=False,
    )
    model.learn(300, callback=eval_callback)
    assert eval_callback.last_mean_reward == 100.0


class AlwaysFailCallback(BaseCallback):
    def __init__(self, *args, callback_false_value, **kwargs):
        super().__init__(*args, **kwargs)
        self.callback_false_value = callback_false_value

    def _on_step(self) -> bool:
        return self.callback_false_value


@pytest.mark.parametrize("callback_false_value", [False, np.bool_(0), th.tensor(0, dtype=th.bool)])
def test_callbacks_can_cancel_runs(model_class, callback_false_value):
    assert not callback_false_value  # Sanity check to ensure parametrized values are valid
    env_id = select_env(model_class)
    # SB3 (A2C): n_steps=1; PPO needs normalize_advantage=False (or n_steps > 1) for that
    model_kwargs = dict(n_steps=1, batch_size=1, normalize_advantage=False, stats_window_size=1)
    model = model_class("MlpPolicy", env_id, **model_kwargs, policy_kwargs=dict(net_arch=[2]))
    alwaysfailcallback = AlwaysFailCallback(callback_false_value=callback_false_value)
    model.learn(10, callback=alwaysfailcallback)

    assert alwaysfailcallback.n_calls == 1
    # Ours: collect_rollouts returned early from inside its forward-hook block; the hook must be gone
    assert len(model.policy._forward_hooks) == 0


def test_eval_callback_logs_are_written_with_the_correct_timestep(tmp_path, model_class):
    # Skip if no tensorboard installed
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # SB3 runs this one with DQN on CartPole-v1
    env_id = "CartPole-v1"
    model = model_class(
        "MlpPolicy",
        env_id,
        policy_kwargs=dict(net_arch=[32]),
        tensorboard_log=tmp_path,
        verbose=1,
        seed=1,
        n_steps=256,
    )

    eval_env = gym.make(env_id)
    eval_freq = 101
    eval_callback = EvalCallback(eval_env, eval_freq=eval_freq, warn=False)
    model.learn(500, callback=eval_callback)

    acc = EventAccumulator(str(tmp_path / f"{model_class.__name__}_1"))
    acc.Reload()
    events = acc.scalars.Items("eval/mean_reward")
    assert len(events) > 0  # ours: the loop below must not be vacuous
    for event in events:
        assert event.step % eval_freq == 0


def test_eval_friendly_error(model_class):
    # tests that eval callback does not crash when given a vector
    train_env = VecNormalize(DummyVecEnv([lambda: gym.make("CartPole-v1")]))
    eval_env = DummyVecEnv([lambda: gym.make("CartPole-v1")])
    eval_env = VecNormalize(eval_env, training=False, norm_reward=False)
    _ = train_env.reset()
    original_obs = train_env.get_original_obs()
    model = model_class("MlpPolicy", train_env, n_steps=50, batch_size=50, seed=0)

    eval_callback = EvalCallback(
        eval_env,
        eval_freq=100,
        warn=False,
    )
    model.learn(100, callback=eval_callback)

    # Check synchronization
    assert np.allclose(train_env.normalize_obs(original_obs), eval_env.normalize_obs(original_obs))

    wrong_eval_env = gym.make("CartPole-v1")
    eval_callback = EvalCallback(
        wrong_eval_env,
        eval_freq=100,
        warn=False,
    )

    with pytest.warns(Warning):
        with pytest.raises(AssertionError):
            model.learn(100, callback=eval_callback)


def test_checkpoint_additional_info(tmp_path, model_class):
    # tests if the replay buffer and the VecNormalize stats are saved with every checkpoint
    # (SB3 runs this with DQN; on-policy models have no replay buffer, so none may be written)
    dummy_vec_env = DummyVecEnv([lambda: gym.make("CartPole-v1")])
    env = VecNormalize(dummy_vec_env)

    checkpoint_dir = tmp_path / "checkpoints"
    checkpoint_callback = CheckpointCallback(
        save_freq=200,
        save_path=checkpoint_dir,
        save_replay_buffer=True,
        save_vecnormalize=True,
        verbose=2,
    )

    model = model_class("MlpPolicy", env, n_steps=64, seed=0)
    model.learn(200, callback=checkpoint_callback)

    assert os.path.exists(checkpoint_dir / "rl_model_200_steps.zip")
    assert not os.path.exists(checkpoint_dir / "rl_model_replay_buffer_200_steps.pkl")
    assert os.path.exists(checkpoint_dir / "rl_model_vecnormalize_200_steps.pkl")
    # Check that checkpoints can be properly loaded
    model = model_class.load(checkpoint_dir / "rl_model_200_steps.zip")
    assert type(model) is model_class
    VecNormalize.load(checkpoint_dir / "rl_model_vecnormalize_200_steps.pkl", dummy_vec_env)


def test_eval_callback_chaining(tmp_path, model_class):
    class DummyCallback(BaseCallback):
        def _on_step(self):
            # Check that the parent callback is an EvalCallback
            assert isinstance(self.parent, EvalCallback)
            assert hasattr(self.parent, "best_mean_reward")
            return True

    stop_on_threshold_callback = StopTrainingOnRewardThreshold(reward_threshold=-200, verbose=1)

    eval_callback = EvalCallback(
        gym.make("Pendulum-v1"),
        best_model_save_path=tmp_path,
        log_path=tmp_path,
        eval_freq=32,
        deterministic=True,
        render=False,
        callback_on_new_best=CallbackList([DummyCallback(), stop_on_threshold_callback]),
        callback_after_eval=CallbackList([DummyCallback()]),
        warn=False,
    )

    model = model_class("MlpPolicy", "Pendulum-v1", n_steps=64, n_epochs=1)
    model.learn(64, callback=eval_callback)


# --------------------------------------------------------------------------------------------------------------
# test_logger.py
# --------------------------------------------------------------------------------------------------------------


class InMemoryLogger(Logger):
    """
    Logger that keeps key/value pairs in memory without any writers.
    """

    def __init__(self):
        super().__init__("", [])

    def dump(self, step: int = 0) -> None:
        pass


class TimeDelayEnv(gym.Env):
    """
    Gym env for testing FPS logging.
    """

    def __init__(self, delay: float = 0.01):
        super().__init__()
        self.delay = delay
        self.observation_space = spaces.Box(low=-20.0, high=20.0, shape=(4,), dtype=np.float32)
        self.action_space = spaces.Discrete(2)

    def reset(self, seed=None, options=None):
        return self.observation_space.sample(), {}

    def step(self, action):
        import time

        time.sleep(self.delay)
        obs = self.observation_space.sample()
        return obs, 0.0, True, False, {}


def test_fps_logger(model_class):
    # SB3 runs this with A2C (n_steps=5): the FPS is measured over collection and training;
    # n_steps=20, n_epochs=1 keeps PPO's update as small a share of the wall time as A2C's
    logger = InMemoryLogger()
    max_fps = 1000
    env = TimeDelayEnv(1 / max_fps)
    model = model_class("MlpPolicy", env, verbose=1, n_steps=20, batch_size=20, n_epochs=1)
    model.set_logger(logger)

    # fps should be at most max_fps
    model.learn(100, log_interval=1)
    assert max_fps / 10 <= logger.name_to_value["time/fps"] <= max_fps

    # second time, FPS should be the same
    model.learn(100, log_interval=1)
    assert max_fps / 10 <= logger.name_to_value["time/fps"] <= max_fps

    # Artificially increase num_timesteps to check
    # that fps computation is reset at each call to learn()
    model.num_timesteps = 20_000

    # third time, FPS should be the same
    model.learn(100, log_interval=1, reset_num_timesteps=False)
    assert max_fps / 10 <= logger.name_to_value["time/fps"] <= max_fps


def test_fps_no_div_zero(model_class):
    """Set time to constant and train algorithm to check no division by zero error.

    Time can appear to be constant during short runs on platforms with low-precision
    timers. We should avoid division by zero errors e.g. when computing FPS in
    this situation."""
    with mock.patch("time.time", lambda: 42.0):
        with mock.patch("time.time_ns", lambda: 42.0):
            model = model_class("MlpPolicy", "CartPole-v1", n_steps=64)
            model.learn(total_timesteps=100)


@pytest.mark.parametrize("stats_window_size", [1, 42])
def test_ep_buffers_stats_window_size(model_class, stats_window_size):
    """Set stats_window_size for logging to non-default value and check if
    ep_info_buffer and ep_success_buffer are initialized to the correct length"""
    model = model_class("MlpPolicy", "CartPole-v1", stats_window_size=stats_window_size, n_steps=64)
    model.learn(total_timesteps=10)
    assert model.ep_info_buffer.maxlen == stats_window_size
    assert model.ep_success_buffer.maxlen == stats_window_size


class DummySuccessEnv(gym.Env):
    """
    Create a dummy success environment that returns whether True or False for info['is_success']
    at the end of an episode according to its dummy successes list
    """

    def __init__(self, dummy_successes, ep_steps):
        """Init the dummy success env

        :param dummy_successes: list of size (n_logs_iterations, n_episodes_per_log) that specifies
            the success value of log iteration i at episode j
        :param ep_steps: number of steps per episode (to activate truncated)
        """
        self.n_steps = 0
        self.log_id = 0
        self.ep_id = 0

        self.ep_steps = ep_steps

        self.dummy_success = dummy_successes
        self.num_logs = len(dummy_successes)
        self.ep_per_log = len(dummy_successes[0])
        self.steps_per_log = self.ep_per_log * self.ep_steps

        self.action_space = spaces.Discrete(2)
        self.observation_space = spaces.Discrete(2)

    def reset(self, seed=None, options=None):
        """
        Reset the env and advance to the next episode_id to get the next dummy success
        """
        self.n_steps = 0

        if self.ep_id == self.ep_per_log:
            self.ep_id = 0
            self.log_id = (self.log_id + 1) % self.num_logs

        return self.observation_space.sample(), {}

    def step(self, action):
        """
        Step and return a dummy success when an episode is truncated
        """
        self.n_steps += 1
        truncated = self.n_steps >= self.ep_steps

        info = {}
        if truncated:
            maybe_success = self.dummy_success[self.log_id][self.ep_id]
            info["is_success"] = maybe_success
            self.ep_id += 1
        return self.observation_space.sample(), 0.0, False, truncated, info


@pytest.mark.parametrize("env_cls", [TimeDelayEnv])
def test_env(env_cls):
    # Check the env used for testing
    check_env(env_cls(), skip_render_check=True)


def test_rollout_success_rate_onpolicy_algo(tmp_path, model_class):
    """
    Test if the rollout/success_rate information is correctly logged with on policy algorithms

    To do so, create a dummy environment that takes as argument dummy successes (i.e when an episode)
    is going to be successful or not.
    """

    STATS_WINDOW_SIZE = 10

    # Add dummy successes with 0.3, 0.5 and 0.8 success_rate of length STATS_WINDOW_SIZE
    dummy_successes = [
        [True] * 3 + [False] * 7,
        [True] * 5 + [False] * 5,
        [True] * 8 + [False] * 2,
    ]
    # SB3: ep_steps = 64, i.e. 3 x 40960 timesteps. Each learn() below runs ep_steps rollouts of one "log" (10
    # episodes) each, so the success rate seen at its end is that of log (k * ep_steps - 1) % 3; any ep_steps
    # = 1 (mod 3) gives SB3's sequence 0.3, 0.5, 0.8. 4 keeps it to 3 x 160 timesteps.
    ep_steps = 4

    # Monitor the env to track the success info
    monitor_file = str(tmp_path / "monitor.csv")
    env = Monitor(DummySuccessEnv(dummy_successes, ep_steps), filename=monitor_file, info_keywords=("is_success",))
    steps_per_log = env.unwrapped.steps_per_log

    # Equip the model of a custom logger to check the success_rate info
    model = model_class(
        "MlpPolicy", env=env, stats_window_size=STATS_WINDOW_SIZE, n_steps=steps_per_log, batch_size=steps_per_log, verbose=1
    )
    logger = InMemoryLogger()
    model.set_logger(logger)

    # Make the model learn and check that the success rate corresponds to the ratio of dummy successes
    model.learn(total_timesteps=steps_per_log * ep_steps, log_interval=1)
    assert logger.name_to_value["rollout/success_rate"] == 0.3
    model.learn(total_timesteps=steps_per_log * ep_steps, log_interval=1)
    assert logger.name_to_value["rollout/success_rate"] == 0.5
    model.learn(total_timesteps=steps_per_log * ep_steps, log_interval=1)
    assert logger.name_to_value["rollout/success_rate"] == 0.8


# --------------------------------------------------------------------------------------------------------------
# test_tensorboard.py
# --------------------------------------------------------------------------------------------------------------

N_STEPS = 100


class HParamCallback(BaseCallback):
    """
    Saves the hyperparameters and metrics at the start of the training, and logs them to TensorBoard.
    """

    def _on_training_start(self) -> None:
        hparam_dict: dict[str, str | float] = {
            "algorithm": self.model.__class__.__name__,
            "gamma": self.model.gamma,  # type: ignore[attr-defined]
        }
        if isinstance(self.model.learning_rate, float):  # Can also be Schedule, in that case, we don't report
            hparam_dict["learning rate"] = self.model.learning_rate
        # define the metrics that will appear in the `HPARAMS` Tensorboard tab by referencing their tag
        # Tensorbaord will find & display metrics from the `SCALARS` tab
        metric_dict: dict[str, float] = {
            "rollout/ep_len_mean": 0,
        }
        self.logger.record(
            "hparams",
            HParam(hparam_dict, metric_dict),
            exclude=("stdout", "log", "json", "csv"),
        )

    def _on_step(self) -> bool:
        return True


def test_tensorboard(tmp_path, model_class):
    # Skip if no tensorboard installed
    pytest.importorskip("tensorboard")

    logname = model_class.__name__  # SB3 names a run after its algorithm; ours after the variant
    env_id = "CartPole-v1"
    kwargs = {"n_steps": 64}
    model = model_class("MlpPolicy", env_id, verbose=1, tensorboard_log=tmp_path, **kwargs)
    model.learn(N_STEPS, callback=HParamCallback())
    model.learn(N_STEPS, reset_num_timesteps=False)

    assert os.path.isdir(tmp_path / str(logname + "_1"))
    assert not os.path.isdir(tmp_path / str(logname + "_2"))

    logname = "tb_multiple_runs_" + model_class.__name__.lower()
    model.learn(N_STEPS, tb_log_name=logname)
    model.learn(N_STEPS, tb_log_name=logname)

    assert os.path.isdir(tmp_path / str(logname + "_1"))
    # Check that the log dir name increments correctly
    assert os.path.isdir(tmp_path / str(logname + "_2"))


# --------------------------------------------------------------------------------------------------------------
# test_buffers.py (rollout buffers: SB3's, and ours that add the old distribution's parameters)
# --------------------------------------------------------------------------------------------------------------


class DummyEnv(gym.Env):
    """
    Custom gym environment for testing purposes
    """

    def __init__(self):
        self.action_space = spaces.Box(1, 5, (1,))
        self.observation_space = spaces.Box(1, 5, (1,))
        self._observations = np.array([[1.0], [2.0], [3.0], [4.0], [5.0]], dtype=np.float32)
        self._rewards = [1, 2, 3, 4, 5]
        self._t = 0
        self._ep_length = 100

    def reset(self, *, seed=None, options=None):
        self._t = 0
        obs = self._observations[0]
        return obs, {}

    def step(self, action):
        self._t += 1
        index = self._t % len(self._observations)
        obs = self._observations[index]
        terminated = False
        truncated = self._t >= self._ep_length
        reward = self._rewards[index]
        return obs, reward, terminated, truncated, {}


class DummyDictEnv(gym.Env):
    """
    Custom gym environment for testing purposes
    """

    def __init__(self):
        # Test for multi-dim action space
        self.action_space = spaces.Box(1, 5, shape=(10, 7))
        space = spaces.Box(1, 5, (1,))
        self.observation_space = spaces.Dict({"observation": space, "achieved_goal": space, "desired_goal": space})
        self._observations = np.array([[1.0], [2.0], [3.0], [4.0], [5.0]], dtype=np.float32)
        self._rewards = [1, 2, 3, 4, 5]
        self._t = 0
        self._ep_length = 100

    def reset(self, seed=None, options=None):
        self._t = 0
        obs = {key: self._observations[0] for key in self.observation_space.spaces.keys()}
        return obs, {}

    def step(self, action):
        self._t += 1
        index = self._t % len(self._observations)
        obs = {key: self._observations[index] for key in self.observation_space.spaces.keys()}
        terminated = False
        truncated = self._t >= self._ep_length
        reward = self._rewards[index]
        return obs, reward, terminated, truncated, {}


@pytest.mark.parametrize("env_cls", [DummyEnv, DummyDictEnv])
def test_buffer_env(env_cls):
    # Check the env used for testing
    # Do not warn for asymmetric space
    check_env(env_cls(), warn=False, skip_render_check=True)


@pytest.mark.parametrize(
    "replay_buffer_cls", [DictRolloutBuffer, RolloutBuffer, OldDistributionDictRolloutBuffer, OldDistributionRolloutBuffer]
)
@pytest.mark.parametrize("device", ["cpu", "cuda", "auto"])
def test_device_buffer(replay_buffer_cls, device):
    if device == "cuda" and not th.cuda.is_available():
        pytest.skip("CUDA not available")

    env = {
        RolloutBuffer: DummyEnv,
        DictRolloutBuffer: DummyDictEnv,
        OldDistributionRolloutBuffer: DummyEnv,
        OldDistributionDictRolloutBuffer: DummyDictEnv,
    }[replay_buffer_cls]
    env = make_vec_env(env)

    buffer = replay_buffer_cls(100, env.observation_space, env.action_space, device=device)

    # Interact and store transitions
    obs = env.reset()
    for _ in range(100):
        action = env.action_space.sample()
        next_obs, reward, _done, _info = env.step(action)
        episode_start, values, log_prob = np.zeros(1), th.zeros(1), th.ones(1)
        buffer.add(obs, action, reward, episode_start, values, log_prob)
        obs = next_obs

    # Get data from the buffer
    # get returns an iterator over minibatches
    data = buffer.get(50)

    # Check that all data are on the desired device
    desired_device = get_device(device).type
    n_minibatches = 0  # ours: the loop must not be vacuous
    for minibatch in list(data):
        n_minibatches += 1
        for value in minibatch:
            if isinstance(value, dict):
                for key in value.keys():
                    assert value[key].device.type == desired_device
            elif isinstance(value, th.Tensor):
                assert value.device.type == desired_device
            elif isinstance(value, np.ndarray):
                # For prioritized replay weights/indices
                pass
            elif value is None:
                # SB3's newer test_buffers.py allows None (n-step discounts); ours: ref_dist_params without a reference
                pass
            else:
                raise TypeError(f"Unknown value type: {type(value)}")
    assert n_minibatches == 2


def test_custom_rollout_buffer(model_class):
    # SB3 runs this one with A2C
    model_class("MlpPolicy", "Pendulum-v1", rollout_buffer_class=RolloutBuffer, rollout_buffer_kwargs=dict())

    with pytest.raises(TypeError, match="unexpected keyword argument 'wrong_keyword'"):
        model_class(
            "MlpPolicy", "Pendulum-v1", rollout_buffer_class=RolloutBuffer, rollout_buffer_kwargs=dict(wrong_keyword=1)
        )

    with pytest.raises(TypeError, match="got multiple values for keyword argument 'gamma'"):
        model_class("MlpPolicy", "Pendulum-v1", rollout_buffer_class=RolloutBuffer, rollout_buffer_kwargs=dict(gamma=1))

    with pytest.raises(AssertionError, match="DictRolloutBuffer must be used with Dict obs space only"):
        model_class("MlpPolicy", "Pendulum-v1", rollout_buffer_class=DictRolloutBuffer)


class UserRolloutBuffer(RolloutBuffer):
    """A user's own rollout buffer, as SB3 allows with ``rollout_buffer_class``."""

    n_resets = 0

    def reset(self) -> None:
        UserRolloutBuffer.n_resets += 1
        super().reset()


def test_user_rollout_buffer_class_gets_old_distribution(model_class):
    """Ours: a user's RolloutBuffer subclass keeps its behaviour and also stores the old distribution."""
    UserRolloutBuffer.n_resets = 0
    model = model_class(
        "MlpPolicy", "CartPole-v1", n_steps=32, batch_size=32, n_epochs=1, rollout_buffer_class=UserRolloutBuffer
    )
    model.learn(64)
    assert isinstance(model.rollout_buffer, UserRolloutBuffer)
    assert isinstance(model.rollout_buffer, OldDistributionBufferMixin)
    assert UserRolloutBuffer.n_resets >= 2  # construction + one per rollout
    assert model.rollout_buffer.old_dist_params.shape == (32, 2)
    assert np.abs(model.rollout_buffer.old_dist_params).sum() > 0


# --------------------------------------------------------------------------------------------------------------
# test_vec_normalize.py (SB3 tests the model side with SAC/TD3 only: test_offpolicy_normalization)
# --------------------------------------------------------------------------------------------------------------

ENV_ID = "Pendulum-v1"


def make_env():
    return Monitor(gym.make(ENV_ID))


def test_onpolicy_normalization(model_class):
    """SB3's test_offpolicy_normalization, for the on-policy variants (learning_starts=100 -> n_steps=64)."""
    env = DummyVecEnv([make_env])
    env = VecNormalize(env, norm_obs=True, norm_reward=True, clip_obs=10.0, clip_reward=10.0)

    eval_env = DummyVecEnv([make_env])
    eval_env = VecNormalize(eval_env, training=False, norm_obs=True, norm_reward=False, clip_obs=10.0, clip_reward=10.0)

    model = model_class("MlpPolicy", env, verbose=1, n_steps=64, policy_kwargs=dict(net_arch=[64]))

    # Check that VecNormalize object is correctly updated
    assert model.get_vec_normalize_env() is env
    model.set_env(eval_env)
    assert model.get_vec_normalize_env() is eval_env
    model.learn(total_timesteps=10)
    model.set_env(env)
    model.learn(total_timesteps=150)
    # Check getter
    assert isinstance(model.get_vec_normalize_env(), VecNormalize)
