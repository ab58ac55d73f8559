"""Population training: a member's update, collection and GAE are a solo run's; members are independent; members
leave as ordinary SB3 models; bad input fails before training; the population resumes where it stopped."""

from __future__ import annotations

import copy
import inspect
import subprocess
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from helpers import PLAIN_VARIANTS
from helpers import params as _params
from helpers import recorded as _recorded
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecNormalize

from sb3_ppo_variants import VARIANTS, Population, PopulationEvalCallback, VariantPPO, losses
from sb3_ppo_variants.evaluation import EVAL_SEED_OFFSET
from sb3_ppo_variants.hyperparams import load_hyperparams, make_env
from sb3_ppo_variants.population.distributions import stacked_distribution
from sb3_ppo_variants.population.policy import StackedActorCritic, StackedAdam
from sb3_ppo_variants.population.trainer import MemberCoefficients, RolloutData, compute_gae, update
from sb3_ppo_variants.population.vec_env import CartPoleEnvs

ZOO = Path(__file__).resolve().parent.parent / "sb3_ppo_variants" / "data" / "zoo_ppo.yml"
CARTPOLE = load_hyperparams(ZOO, "CartPole-v1")

#: every setting of the update's switches: VariantPPO keyword arguments
UPDATE_SETTINGS: dict[str, dict[str, Any]] = {
    "clipped": dict(surrogate="clipped"),
    "unclipped": dict(surrogate="unclipped", ent_coef=0.01),
    "dual_clip": dict(surrogate="dual_clip", dual_clip=2.0),
    "fixed_exact": dict(surrogate="unclipped", kl_penalty="fixed", kl_coef=0.5),
    "fixed_k1": dict(surrogate="clipped", kl_penalty="fixed", kl_coef=0.3, kl_estimator="k1"),
    "fixed_k2": dict(surrogate="unclipped", kl_penalty="fixed", kl_coef="lin_1.0", kl_estimator="k2"),
    "adaptive_k3": dict(surrogate="clipped", kl_penalty="adaptive", kl_coef=2.0, kl_target=0.001, kl_estimator="k3"),
    "value_clip_target_kl": dict(clip_range_vf=0.05, target_kl=0.02, learning_rate=3e-3, vf_coef=0.7, max_grad_norm=0.3),
    "target_kl_stops": dict(target_kl=0.002, learning_rate=3e-3),  # stops at the first minibatch, before any step
    "schedules": dict(clip_range="lin_0.3", ent_coef="lin_0.02", learning_rate="lin_1e-3", gamma=0.9),
    "proportional": dict(surrogate="dual_clip", kl_penalty="proportional", kl_coef=0.5, kl_target=1e-4, kl_horizon=500),
}
# The drop-in issue opens VariantPPO to registered surrogates and adds kl_direction: compared here once it has.
if "spo" in losses.SURROGATES:
    try:
        VariantPPO("MlpPolicy", None, surrogate="spo", _init_setup_model=False)  # type: ignore[arg-type]
        UPDATE_SETTINGS["spo"] = dict(surrogate="spo", kl_penalty="fixed", kl_coef=0.2, kl_estimator="k1")
    except ValueError:
        pass
if "kl_direction" in inspect.signature(VariantPPO.__init__).parameters:
    UPDATE_SETTINGS["reverse_exact"] = dict(kl_penalty="adaptive", kl_coef=0.5, kl_target=0.001, kl_direction="reverse")
    UPDATE_SETTINGS["reverse_k3"] = dict(surrogate="unclipped", kl_penalty="fixed", kl_estimator="k3", kl_direction="reverse")


def _solo_update(env_id: str, seed: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    """A solo VariantPPO after one update (so Adam and the controllers have state), then a second update
    with known minibatch orders; returns what goes in and what comes out of that second update."""
    model = VariantPPO("MlpPolicy", env_id, n_steps=64, batch_size=32, n_epochs=3, seed=seed, device="cpu", **kwargs)
    model.learn(64)  # one rollout and one update; the flattened rollout stays in the buffer
    model._current_progress_remaining = 0.6
    before = {
        "policy": copy.deepcopy(model.policy),
        "adam": copy.deepcopy(model.policy.optimizer.state_dict()),
        "model": copy.deepcopy(model),
        "n_updates": model._n_updates,
    }
    np.random.seed(1000 + seed)
    orders = [np.random.permutation(64) for _ in range(3)]  # RolloutBuffer.get draws one permutation per epoch
    np.random.seed(1000 + seed)
    logger = _recorded(model)
    model.train()
    buffer: Any = model.rollout_buffer
    data = {
        name: th.as_tensor(getattr(buffer, field)).reshape(64, -1).squeeze(-1)
        for name, field in [
            ("observations", "observations"),
            ("actions", "actions"),
            ("old_values", "values"),
            ("old_log_prob", "log_probs"),
            ("advantages", "advantages"),
            ("returns", "returns"),
            ("old_dist_params", "old_dist_params"),
        ]
    }
    return {**before, "orders": orders, "data": data, "after": _params(model), "logs": dict(logger.name_to_value)}


def _stack_rollouts(runs: list[dict[str, Any]]) -> RolloutData:
    def field(name: str) -> th.Tensor:
        return th.stack([run["data"][name] for run in runs]).float()

    actions = field("actions")
    return RolloutData(
        observations=field("observations"),
        actions=actions if actions.dim() == 3 else actions.unsqueeze(-1),
        old_values=field("old_values"),
        old_log_prob=field("old_log_prob"),
        advantages=field("advantages"),
        returns=field("returns"),
        old_dist_params=field("old_dist_params"),
    )


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_one_population_update_gives_each_member_the_parameters_of_variant_ppo_train(env_id: str) -> None:
    names = list(UPDATE_SETTINGS)
    runs = [_solo_update(env_id, seed, UPDATE_SETTINGS[name]) for seed, name in enumerate(names)]
    space = runs[0]["policy"].action_space
    policy = StackedActorCritic([run["policy"] for run in runs], stacked_distribution(space), th.device("cpu"))
    optimizer = StackedAdam(policy.parameters())
    for k, run in enumerate(runs):
        state = run["adam"]["state"]
        optimizer.load_member_state(
            k,
            {
                "step": float(state[0]["step"]),
                "exp_avg": [policy.from_member_layout([state[i]["exp_avg"] for i in range(len(state))])],
                "exp_avg_sq": [policy.from_member_layout([state[i]["exp_avg_sq"] for i in range(len(state))])],
            },
        )
    models = [run["model"] for run in runs]
    coefficients = MemberCoefficients.at(models, 0.6, th.device("cpu"))
    orders = [np.stack([run["orders"][epoch] for run in runs]) for epoch in range(3)]
    result = update(policy, optimizer, _stack_rollouts(runs), coefficients, orders, batch_size=32, normalize_advantage=True)
    stats = result.stats

    for k, (name, run) in enumerate(zip(names, runs)):
        ours = th.nn.utils.parameters_to_vector(policy.member_state_dict(k).values())
        moved = (run["after"] - _params(run["model"])).abs().max()
        assert (moved > 1e-4) == (name != "target_kl_stops"), name  # the update did move the parameters (or stopped)
        # batched matmuls and SB3's Linear layers sum in other orders: float32 rounding, grown over 6 Adam steps
        assert th.allclose(ours, run["after"], rtol=1e-4, atol=1e-6), (name, (ours - run["after"]).abs().max(), moved)
        for key in ("kl", "clip_fraction", "approx_kl", "value_loss", "policy_gradient_loss", "entropy_loss", "loss"):
            # statistics of those same diverging float32 parameters: measured at most 2.3e-4 relative
            assert stats[key][k] == pytest.approx(run["logs"][f"train/{key}"], rel=1e-3, abs=1e-6), (name, key)
        assert result.n_epochs_run[k] == run["logs"]["train/n_updates"] - run["n_updates"], name
    assert not result.failed.any()
    stopped = names.index("target_kl_stops")
    assert result.n_epochs_run[stopped] == 1
    assert optimizer.step_count[stopped] == float(runs[stopped]["adam"]["state"][0]["step"])  # no Adam step taken
    assert optimizer.step_count[0] == float(runs[0]["adam"]["state"][0]["step"]) + 6


def test_gae_equals_sb3_rollout_buffer_per_member() -> None:
    rng = np.random.default_rng(0)
    k, n_steps, n_envs = 3, 40, 2
    rewards = rng.normal(size=(k, n_steps, n_envs)).astype(np.float32)
    values = rng.normal(size=(k, n_steps, n_envs)).astype(np.float32)
    starts = (rng.random((k, n_steps, n_envs)) < 0.15).astype(np.float32)
    last_values = rng.normal(size=(k, n_envs)).astype(np.float32)
    dones = np.array([[True, False], [False, False], [False, True]])
    gammas, lambdas = [0.99, 0.9, 0.5], [0.95, 0.8, 1.0]
    advantages, returns = compute_gae(
        *(th.as_tensor(a) for a in (rewards, values, starts, last_values, dones)), th.tensor(gammas), th.tensor(lambdas)
    )
    for member in range(k):
        space = gym.spaces.Box(-1, 1, (1,))
        buffer = RolloutBuffer(n_steps, space, space, n_envs=n_envs, gamma=gammas[member], gae_lambda=lambdas[member])
        buffer.rewards, buffer.values, buffer.episode_starts = rewards[member], values[member], starts[member]
        buffer.compute_returns_and_advantage(th.as_tensor(last_values[member]), dones[member])
        # our torch recursion over all members (gamma, lambda as float32 tensors) vs SB3's numpy one per member
        # (float64 gamma and lambda): measured 3.6e-7 absolute
        assert np.allclose(advantages[member].numpy(), buffer.advantages, rtol=1e-5, atol=1e-6)
        assert np.allclose(returns[member].numpy(), buffer.returns, rtol=1e-5, atol=1e-6)


def test_collection_matches_sb3_policy_envs_and_time_limit_bootstrap() -> None:
    """Pendulum episodes are truncated at 200 steps: a 256-step rollout bootstraps each env once."""
    members = [dict(seed=3, gamma=0.95), dict(variant="kl", seed=5, gamma=0.9, gae_lambda=0.8)]
    pop = Population("Pendulum-v1", members, hyperparams=dict(n_steps=256, n_envs=2, batch_size=64), device="cpu")
    pop._reset()
    data = pop._collect()
    models = pop.models()
    n_steps, n_envs = 256, 2
    for k, (member, model) in enumerate(zip(members, models)):
        policy = model.policy
        with th.no_grad():
            dist = policy.get_distribution(data.observations[k])
            # the population's stacked forward (batched matmuls) vs SB3's policy: measured 2.8e-9 absolute
            assert th.allclose(data.old_dist_params[k], th.cat([dist.distribution.loc, dist.distribution.scale], 1), atol=1e-6)
            # the same source: measured 1.2e-7 (log-probabilities), 3.6e-7 (values) absolute
            assert th.allclose(data.old_log_prob[k], dist.log_prob(data.actions[k]), atol=1e-5)
            assert th.allclose(data.old_values[k], policy.predict_values(data.observations[k]).flatten(), atol=1e-6)
        # replay member k's actions on environments seeded as make_vec_env seeds a solo run
        obs = data.observations[k].reshape(n_envs, n_steps, -1).numpy()
        actions = data.actions[k].reshape(n_envs, n_steps, -1).numpy()
        rewards = np.zeros((n_steps, n_envs), dtype=np.float32)
        starts = np.zeros((n_steps, n_envs), dtype=np.float32)
        last_obs, dones = [], np.zeros(n_envs, dtype=bool)
        truncations = 0
        for i in range(n_envs):
            env = gym.make("Pendulum-v1")
            observation, _ = env.reset(seed=member["seed"] + i)
            start = True
            for t in range(n_steps):
                # our numpy Pendulum (np.sin/np.cos over arrays) vs gymnasium's, which may differ in the last bit:
                # equal here (measured 0)
                assert np.allclose(observation, obs[i, t], atol=1e-6), (k, i, t)
                starts[t, i] = start
                observation, reward, terminated, truncated, _ = env.step(np.clip(actions[i, t], -2, 2))
                rewards[t, i] = reward
                start = terminated or truncated
                if truncated and not terminated:
                    truncations += 1
                    with th.no_grad():
                        rewards[t, i] += member["gamma"] * policy.predict_values(th.as_tensor(observation)[None]).item()
                if start:
                    observation, _ = env.reset()
            last_obs.append(observation)
            dones[i] = start
        assert truncations == n_envs
        buffer = RolloutBuffer(n_steps, model.observation_space, model.action_space, n_envs=n_envs, gamma=member["gamma"])
        buffer.gae_lambda = member.get("gae_lambda", 0.95)
        buffer.rewards, buffer.episode_starts = rewards, starts
        buffer.values = data.old_values[k].reshape(n_envs, n_steps).T.numpy()
        with th.no_grad():
            last_values = policy.predict_values(th.as_tensor(np.array(last_obs))).flatten()
        buffer.compute_returns_and_advantage(last_values, dones)
        ours = data.advantages[k].reshape(n_envs, n_steps).T.numpy()
        # stacked vs SB3 values (above), float32 vs float64 GAE and a bootstrap value computed one observation at
        # a time here: measured 7.6e-6 absolute, 2.1e-6 relative
        assert np.allclose(ours, buffer.advantages, rtol=1e-4, atol=1e-4)
        assert np.allclose(data.returns[k].reshape(n_envs, n_steps).T.numpy(), buffer.returns, rtol=1e-4, atol=1e-4)


def test_numpy_cartpole_steps_as_gymnasium_cartpole() -> None:
    envs = CartPoleEnvs("CartPole-v1", seeds=[11], n_envs=2)
    singles = [gym.make("CartPole-v1") for _ in range(2)]
    obs = envs.reset()
    expected = np.stack([env.reset(seed=11 + i)[0] for i, env in enumerate(singles)])
    rng = np.random.default_rng(0)
    episodes = 0
    for _ in range(1500):
        # np.cos/np.sin over arrays vs gymnasium's per-env calls may differ in the last float64 bit: equal here
        # over 1500 steps (measured 0)
        assert np.allclose(obs, expected, atol=1e-5)
        actions = rng.integers(0, 2, size=2)
        obs, rewards, terminated, truncated, terminal = envs.step(actions)
        expected_list = []
        for i, env in enumerate(singles):
            observation, reward, term, trunc, _ = env.step(int(actions[i]))
            assert (term, trunc, reward) == (terminated[i], truncated[i], rewards[i])
            if term or trunc:
                # as above: equal here (measured 0)
                assert np.allclose(terminal[i], observation, atol=1e-5)
                observation, _ = env.reset()
                episodes += 1
            expected_list.append(observation)
        expected = np.stack(expected_list)
    assert episodes > 50


class _MatchEnv(gym.Env):
    """Box observations; reward 1 for each action component that matches a target derived from the observation."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, action_space: gym.spaces.Space):
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (4,), dtype=np.float32)
        self.action_space = action_space
        self._obs = np.zeros(4, dtype=np.float32)
        self._t = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._t = 0
        self._obs = self.np_random.uniform(-1, 1, 4).astype(np.float32)
        return self._obs, {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        flat = np.asarray(action, dtype=np.float32).reshape(-1)
        target = (self._obs[: len(flat)] > 0).astype(np.float32)
        reward = float(-np.abs(flat - target).sum())
        self._t += 1
        self._obs = self.np_random.uniform(-1, 1, 4).astype(np.float32)
        return self._obs, reward, self._t >= 20, False, {}


SPACES = {
    "MultiDiscrete": gym.spaces.MultiDiscrete([3, 2]),
    "MultiBinary": gym.spaces.MultiBinary(3),
    "Box": gym.spaces.Box(-1.0, 2.0, (2,), dtype=np.float32),
    "Discrete": gym.spaces.Discrete(3),
}
for _name, _space in SPACES.items():
    gym.register(f"PopulationMatch{_name}-v0", entry_point=_MatchEnv, kwargs={"action_space": _space})


@pytest.mark.parametrize("space", list(SPACES))
def test_distributions_equal_sb3_policy_on_every_action_space(space: str) -> None:
    members = [dict(seed=0), dict(variant="clip_kl", seed=1, kl_coef=0.5)]
    pop = Population(
        f"PopulationMatch{space}-v0", members, hyperparams=dict(n_steps=32, n_envs=2, batch_size=16), device="cpu"
    )
    pop.learn(128)  # two updates: the weights are no longer the initial ones
    pop._reset()
    data = pop._collect()
    with th.no_grad():
        all_params, _ = pop.policy.forward(data.observations)
    for k, model in enumerate(pop.models()):
        with th.no_grad():
            dist = model.policy.get_distribution(data.observations[k])
            actions = data.actions[k].squeeze(-1) if space == "Discrete" else data.actions[k]
            # the population's stacked forward and distribution code vs SB3's policy and distributions: measured
            # 2.4e-7 (log-prob), 4.8e-7 (entropy), 6.0e-8 (deterministic actions) absolute
            assert th.allclose(data.old_log_prob[k], dist.log_prob(actions), atol=1e-5)
            params = all_params[k : k + 1]
            entropy = pop.distribution.entropy(params)[0]
            # see above
            assert th.allclose(entropy, dist.entropy(), atol=1e-5)
            kl = pop.distribution.kl(data.old_dist_params[k : k + 1], params)[0]
            assert kl.abs().max() < 1e-5  # the same policy as at collection: no KL
            deterministic = model.predict(data.observations[k].numpy(), deterministic=True)[0]
            ours = pop.distribution.env_actions(pop.distribution.mode(params))
            # see above
            assert np.allclose(np.asarray(deterministic).reshape(ours.shape), ours, atol=1e-5)
        low = data.actions[k].min().item()
        assert low >= 0 or space == "Box"
    assert len(pop.episode_returns[0]) > 0


def test_models_are_ordinary_sb3_models_that_evaluate_save_load_and_learn_on(tmp_path: Path) -> None:
    members = [dict(seed=4), dict(variant="adaptive_kl", seed=5, kl_target=0.005)]
    hyperparams = dict(n_steps=128, n_envs=2, batch_size=64, n_epochs=2, normalize=True, gamma=0.9)
    pop = Population("Pendulum-v1", members, hyperparams=hyperparams, device="cpu").learn(512)
    scores = pop.evaluate(n_eval_episodes=2)
    models = pop.models()
    for k, (member, model) in enumerate(zip(members, models)):
        assert type(model) is VARIANTS[member.get("variant", "clip")]
        assert model.num_timesteps == pop.num_timesteps == 512
        assert th.equal(_params(model), th.nn.utils.parameters_to_vector(pop.policy.member_state_dict(k).values()))
        env = model.get_env()
        assert isinstance(env, VecNormalize)
        assert np.array_equal(env.obs_rms.mean, pop.normalizer.obs_mean[k])
        assert env.obs_rms.count == pop.normalizer.obs_count[k]
        # the member's evaluation is evaluate_policy's on an env seeded seed + EVAL_SEED_OFFSET with its statistics
        eval_env = make_env("Pendulum-v1", {"normalize": True}, seed=member["seed"] + EVAL_SEED_OFFSET, n_envs=1)
        eval_env.training, eval_env.norm_reward = False, False
        eval_env.obs_rms = env.obs_rms.copy()
        mean, _ = evaluate_policy(model, eval_env, n_eval_episodes=2, deterministic=True)
        # actions from the stacked forward vs SB3's, float32 rounding carried through the episodes: measured 2.7e-9
        # relative
        assert scores[k] == pytest.approx(mean, rel=1e-4)
    assert models[1].kl_controller.value == pop.kl_controllers[1].value != 1.0
    assert models[1].kl_controller is not pop.kl_controllers[1]
    assert models[0]._n_updates == pop.n_updates[0] == 4  # 2 rollouts x 2 epochs
    models[1].save(tmp_path / "member")
    loaded = VARIANTS["adaptive_kl"].load(tmp_path / "member", device="cpu")
    assert th.equal(_params(loaded), _params(models[1]))
    assert loaded.kl_controller.value == models[1].kl_controller.value
    models[0].learn(256)  # and it trains on, from the member's Adam state
    assert not th.equal(_params(models[0]), th.nn.utils.parameters_to_vector(pop.policy.member_state_dict(0).values()))


def test_save_and_load_resume_where_the_population_stopped(tmp_path: Path) -> None:
    members = [dict(seed=0), dict(variant="clip_kl", seed=1, kl_target=0.01)]
    hyperparams = {**CARTPOLE, "normalize": True}

    def build() -> Population:
        return Population("CartPole-v1", members, hyperparams=hyperparams, device="cpu")

    straight = build().learn(512)
    straight.learn(512, reset_num_timesteps=False)
    interrupted = build().learn(512)
    interrupted.save(tmp_path / "population.pt")
    del interrupted
    resumed = Population.load(tmp_path / "population.pt", device="cpu").learn(512, reset_num_timesteps=False)
    for k in range(2):
        ours = th.nn.utils.parameters_to_vector(resumed.policy.member_state_dict(k).values())
        reference = th.nn.utils.parameters_to_vector(straight.policy.member_state_dict(k).values())
        assert th.equal(ours, reference)
        assert resumed.episode_returns[k] == straight.episode_returns[k]
        assert np.array_equal(resumed.normalizer.obs_mean[k], straight.normalizer.obs_mean[k])
    assert resumed.kl_controllers[1].value == straight.kl_controllers[1].value
    assert resumed.num_timesteps == 1024


def test_a_population_on_box2d_envs_saves_loads_and_trains_on(tmp_path: Path) -> None:
    pytest.importorskip("Box2D", reason="gymnasium[box2d] is in the dev extras; without it LunarLander cannot run")
    pop = Population("LunarLander-v3", [dict(seed=0)], hyperparams=dict(n_steps=64, batch_size=32, n_epochs=1), device="cpu")
    pop.learn(64).evaluate(1)
    pop.save(tmp_path / "population.pt")
    loaded = Population.load(tmp_path / "population.pt", device="cpu")
    assert th.equal(loaded.policy.flat, pop.policy.flat)
    loaded.learn(64, reset_num_timesteps=False)  # Box2D envs pickle fresh: new episodes on new envs
    assert loaded.num_timesteps == 128 and np.isfinite(loaded.evaluate(1)).all()


def test_evaluation_callback_records_scores_and_can_stop_training() -> None:
    seen: list[int] = []

    def prune(timestep: int, scores: np.ndarray) -> bool:
        seen.append(timestep)
        return timestep < 500

    callback = PopulationEvalCallback([0, 256, 500, 768], n_eval_episodes=2, on_evaluation=prune)
    pop = Population("CartPole-v1", [dict(seed=0), dict(seed=1)], hyperparams=CARTPOLE, device="cpu")
    pop.learn(1024, callback=callback)
    assert callback.timesteps == seen == [0, 256, 500]
    assert callback.reached == [0, 256, 512]  # whole rollouts of 256 steps
    assert callback.scores.shape == (3, 2)
    assert pop.num_timesteps == 512  # stopped after the second evaluation
    assert (callback.scores >= 8).all()  # CartPole episodes last at least 8 steps


@pytest.mark.parametrize(
    ("members", "hyperparams", "error", "match"),
    [
        ([], None, ValueError, "members must be a non-empty list"),
        ([dict(seed=0), "clip"], None, TypeError, "member 1 must be a dict"),
        ([dict(variant="ppo2", seed=0)], None, ValueError, r"member 0: variant must be one of \['clip'"),
        ([dict(variant="kl")], None, ValueError, r"member 0 \(kl\): seed is required"),
        ([dict(seed=0), dict(seed=1.5)], None, TypeError, "member 1 .*seed must be an int, got 1.5"),
        ([dict(seed=0), dict(seed=1, clip_range=-0.1)], None, ValueError, r"member 1 \(clip, seed 1\): clip_range must be >"),
        ([dict(seed=0, clip_rnage=0.1)], None, TypeError, r"member 0 \(clip, seed 0\): .*clip_rnage"),
        (
            [dict(seed=0), dict(variant="kl", seed=1, kl_estimator="k9")],
            None,
            ValueError,
            "member 1 .*kl_estimator must be one of",
        ),
        (
            [dict(seed=0), dict(seed=1, n_steps=64), dict(seed=2, n_steps=64)],
            {"n_steps": 32},
            ValueError,
            r"n_steps must be equal across a population's members .*32 for members \[0\]; 64 for members \[1, 2\]",
        ),
        ([dict(seed=0), dict(seed=1, n_envs=2)], None, ValueError, r"n_envs must be equal .*\[1\]"),
        (
            [dict(seed=0), dict(seed=1, policy_kwargs="dict(net_arch=[32])")],
            None,
            ValueError,
            "policy_kwargs must be equal",
        ),
        (
            [dict(seed=0, use_sde=True)],
            None,
            ValueError,
            "member 0 .*use_sde=True is not supported in a population; train it as a solo",
        ),
        ([dict(seed=0)], {"policy": "CnnPolicy"}, ValueError, "member 0 .*policy must be 'MlpPolicy' in a population"),
        ([dict(seed=0, device="cpu")], None, ValueError, "'device' is a setting of the Population"),
    ],
)
def test_bad_input_fails_before_training_naming_the_member_and_argument(
    members: list[Any], hyperparams: dict[str, Any] | None, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        Population("CartPole-v1", members, hyperparams=hyperparams, device="cpu")


def test_unsupported_environments_and_budgets_fail_clearly() -> None:
    with pytest.raises(ValueError, match="not a registered gymnasium environment"):
        Population("NoSuchEnv-v0", [dict(seed=0)])
    with pytest.raises(ValueError, match=r"observation space .* is not supported in a population"):
        Population("Blackjack-v1", [dict(seed=0)])  # Tuple observations
    pop = Population("CartPole-v1", [dict(seed=0)], device="cpu")
    with pytest.raises(ValueError, match="total_timesteps must be an int >= 1, got 0"):
        pop.learn(0)
    with pytest.raises(ValueError, match="n_eval_episodes must be an int >= 1"):
        pop.evaluate(0)
    with pytest.raises(ValueError, match="eval_points must be a non-empty list"):
        PopulationEvalCallback([])


@pytest.mark.skipif(not th.cuda.is_available(), reason="no CUDA device")
def test_a_population_trains_on_cuda_as_on_the_cpu() -> None:
    members = [dict(seed=0), dict(variant="clip_kl", seed=1)]
    on_gpu = Population("CartPole-v1", members, hyperparams=CARTPOLE, device="cuda").learn(512)
    assert on_gpu.policy.flat.device.type == "cuda"
    on_cpu = Population("CartPole-v1", members, hyperparams=CARTPOLE, device="cpu").learn(512)
    assert len(on_gpu.episode_returns[0]) > 0 and len(on_cpu.episode_returns[0]) > 0
    assert all(m.device.type == "cuda" for m in (on_gpu.models()[0],))


@pytest.mark.slow
def test_every_named_variant_learns_cartpole_in_one_population() -> None:
    """rl-zoo3's CartPole-v1 entry (its linear schedules over a 50k budget), the four plain variants x seeds 0-3 in one
    population (~1 CPU minute unloaded). Judged per variant over its seeds, as RL results must be: seeds of a sound
    variant miss now and then (at 50k steps, seed 0 of clip ended at 208.8 and seed 1 of kl at 189.0 here, the others
    at 500), so each variant's median must reach 400 and every member 100 (a random policy scores ~22). Members are
    independent of their companions, so these numbers are each seed's own."""
    members = [dict(variant=variant, seed=seed) for variant in PLAIN_VARIANTS for seed in range(4)]
    pop = Population("CartPole-v1", members, hyperparams=CARTPOLE, device="cpu").learn(50_000)
    scores = pop.evaluate(n_eval_episodes=10)
    assert pop.num_timesteps == 50_176  # whole rollouts of 256 steps
    assert all(failure is None for failure in pop.failures)
    by_variant = {
        variant: [float(s) for m, s in zip(members, scores) if m["variant"] == variant] for variant in PLAIN_VARIANTS
    }
    assert all(np.median(values) >= 400 for values in by_variant.values()), by_variant
    assert min(scores) >= 100, by_variant


def test_evaluations_of_a_member_do_not_depend_on_its_companions() -> None:
    """A member whose evaluation episodes end early keeps stepping until its companions have theirs; its next
    evaluation must still start where it would alone (what the extra steps drew is rolled back)."""
    tiny = {"n_envs": 1, "n_steps": 32, "batch_size": 32, "n_epochs": 2, "policy_kwargs": "dict(net_arch=[16])"}
    alone = Population("CartPole-v1", [dict(variant="clip_kl", seed=1, **tiny)]).learn(64)
    pair = Population("CartPole-v1", [dict(variant="clip", seed=0, **tiny), dict(variant="clip_kl", seed=1, **tiny)])
    pair.learn(64)
    first, second = [pair.evaluate(2) for _ in range(3)], [alone.evaluate(2) for _ in range(3)]
    assert [scores[1] for scores in first] == [scores[0] for scores in second]
    assert len({scores[1] for scores in first}) > 1 or len({scores[0] for scores in first}) > 1  # the streams move on


_FAULTS_SCRIPT = """
import resource, sys
import torch as th
if sys.argv[1] == "retain":
    from sb3_ppo_variants.population.allocator import retain_freed_memory
    assert retain_freed_memory()
if sys.argv[1] == "population":  # a population on the CPU sets it itself
    from sb3_ppo_variants import Population
    Population("CartPole-v1", [dict(seed=0)], device="cpu")
def round_of_temporaries():  # eight 4 MB tensors alive at once, then freed: 32 MB free at the heap's top
    tensors = [th.ones(64, 256, 64) for _ in range(8)]
    return sum(float(t[0, 0, 0]) for t in tensors)
round_of_temporaries()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    round_of_temporaries()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_retained_freed_memory_stops_each_round_of_large_temporaries_faulting_in_fresh_pages() -> None:
    """glibc hands the freed top of its heap back to the kernel, so each round of 4 MB temporaries faults fresh pages in
    again; with :func:`retain_freed_memory` (which a population on the CPU calls) the rounds reuse the first's pages."""
    faults = {
        mode: int(
            subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT, mode], capture_output=True, text=True, check=True).stdout
        )
        for mode in ("default", "retain", "population")
    }
    assert faults["default"] > 6_000  # measured 9,212 to 24,541 over the 20 rounds (16 runs; the heap's layout varies)
    assert faults["retain"] < 2_048  # measured 1,024 in each run: one tensor's pages, once
    assert faults["population"] < 2_048
