"""Saving and loading every variant: Stable-Baselines3's save/load tests of ``PPO``, and our round trips.

The first part ports Stable-Baselines3's tests/test_save_load.py (https://github.com/DLR-RM/stable-baselines3):
every test there that exercises ``PPO`` (or the on-policy code ``PPO`` shares with ``A2C``) is parametrised over
the four classes of ``sb3_ppo_variants.VARIANTS`` through the ``model_class`` fixture, with SB3's assertions.
Only the class changes, and ``n_steps`` where a comment says so. Not ported: the replay-buffer, DQN/SAC-only and
``expensive`` (2 GB model) tests.

The second part is ours: a save/load round trip of every variant keeps the parameters, the predictions and the
KL controller (an adapted beta included), and the loaded model keeps learning and adapting.

Stable-Baselines3 is Copyright (c) 2019 Antonin Raffin, MIT License: see tests/LICENSE-stable-baselines3.txt.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from copy import deepcopy
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from helpers import PLAIN_VARIANTS
from stable_baselines3.common.envs import FakeImageEnv, IdentityEnvBox
from stable_baselines3.common.utils import get_device
from stable_baselines3.common.vec_env import DummyVecEnv

from sb3_ppo_variants import VARIANTS, AdaptiveKLController, FixedKLController
from sb3_ppo_variants.schedules import LinearSchedule

# --------------------------------------------------------------------------------------------------------------
# Ported from SB3's tests/test_save_load.py
# --------------------------------------------------------------------------------------------------------------


def select_env(model_class) -> gym.Env:
    """
    Selects an environment with the correct action space as DQN only supports discrete action space
    """
    return IdentityEnvBox(-10, 10)


def test_save_load(tmp_path, model_class):
    """
    Test if 'save' and 'load' saves and loads model correctly
    and if 'get_parameters' and 'set_parameters' and work correctly.

    ''warning does not test function of optimizer parameter load

    :param model_class: (BaseAlgorithm) A RL model
    """

    env = DummyVecEnv([lambda: select_env(model_class)])

    # create model
    model = model_class("MlpPolicy", env, policy_kwargs=dict(net_arch=[16]), verbose=1)
    model.learn(total_timesteps=500)

    env.reset()
    observations = np.concatenate([env.step([env.action_space.sample()])[0] for _ in range(10)], axis=0)

    # Get parameters of different objects
    # deepcopy to avoid referencing to tensors we are about to modify
    original_params = deepcopy(model.get_parameters())

    # Test different error cases of set_parameters.
    # Test that invalid object names throw errors
    invalid_object_params = deepcopy(original_params)
    invalid_object_params["I_should_not_be_a_valid_object"] = "and_I_am_an_invalid_tensor"
    with pytest.raises(ValueError):
        model.set_parameters(invalid_object_params, exact_match=True)
    with pytest.raises(ValueError):
        model.set_parameters(invalid_object_params, exact_match=False)

    # Test that exact_match catches when something was missed.
    missing_object_params = {k: v for k, v in list(original_params.items())[:-1]}
    with pytest.raises(ValueError):
        model.set_parameters(missing_object_params, exact_match=True)

    # Test that exact_match catches when something inside state-dict
    # is missing but we have exact_match.
    missing_state_dict_tensor_params = {}
    for object_name in original_params:
        object_params = {}
        missing_state_dict_tensor_params[object_name] = object_params
        # Skip last item in state-dict
        for k, v in list(original_params[object_name].items())[:-1]:
            object_params[k] = v
    with pytest.raises(RuntimeError):
        # PyTorch load_state_dict throws RuntimeError if strict but
        # invalid state-dict.
        model.set_parameters(missing_state_dict_tensor_params, exact_match=True)

    # Test that parameters do indeed change.
    random_params = {}
    for object_name, params in original_params.items():
        # Do not randomize optimizer parameters (custom layout)
        if "optim" in object_name:
            random_params[object_name] = params
        else:
            # Again, skip the last item in state-dict
            random_params[object_name] = OrderedDict(
                (param_name, th.rand_like(param)) for param_name, param in list(params.items())[:-1]
            )

    # Update model parameters with the new random values
    model.set_parameters(random_params, exact_match=False)

    new_params = model.get_parameters()
    # Check that all params except the final item in each state-dict are different.
    for object_name in original_params:
        # Skip optimizers (no valid comparison with just th.allclose)
        if "optim" in object_name:
            continue
        # state-dicts use ordered dictionaries, so key order
        # is guaranteed.
        last_key = list(original_params[object_name].keys())[-1]
        for k in original_params[object_name]:
            if k == last_key:
                # Should be same as before
                assert th.allclose(original_params[object_name][k], new_params[object_name][k]), (
                    "Parameter changed despite not included in the loaded parameters."
                )
            else:
                # Should be different
                assert not th.allclose(original_params[object_name][k], new_params[object_name][k]), (
                    "Parameters did not change as expected."
                )

    params = new_params

    # get selected actions
    selected_actions, _ = model.predict(observations, deterministic=True)

    # Check
    model.save(tmp_path / "test_save.zip")
    del model

    # Check if the model loads as expected for every possible choice of device:
    for device in ["auto", "cpu", "cuda"]:
        model = model_class.load(str(tmp_path / "test_save.zip"), env=env, device=device)

        # check if the model was loaded to the correct device
        assert model.device.type == get_device(device).type
        assert model.policy.device.type == get_device(device).type

        # check if params are still the same after load
        new_params = model.get_parameters()

        # Check that all params are the same as before save load procedure now
        for object_name in new_params:
            # Skip optimizers (no valid comparison with just th.allclose)
            if "optim" in object_name:
                continue
            for key in params[object_name]:
                assert new_params[object_name][key].device.type == get_device(device).type
                assert th.equal(params[object_name][key].to("cpu"), new_params[object_name][key].to("cpu")), (
                    "Model parameters not the same after save and load."
                )

        # check if model still selects the same actions
        new_selected_actions, _ = model.predict(observations, deterministic=True)
        assert np.array_equal(selected_actions, new_selected_actions)  # the same parameters, the same arithmetic

        # check if learn still works
        model.learn(total_timesteps=500)

        del model

    # clear file from os
    os.remove(tmp_path / "test_save.zip")


def test_set_env(tmp_path, model_class):
    """
    Test if set_env function does work correct

    :param model_class: (BaseAlgorithm) A RL model
    """

    # use discrete for DQN
    env = DummyVecEnv([lambda: select_env(model_class)])
    env2 = DummyVecEnv([lambda: select_env(model_class)])
    env3 = select_env(model_class)
    env4 = DummyVecEnv([lambda: select_env(model_class) for _ in range(2)])

    kwargs = dict(n_steps=64)

    # create model
    model = model_class("MlpPolicy", env, policy_kwargs=dict(net_arch=[16]), **kwargs)
    # learn
    model.learn(total_timesteps=64)

    # change env
    model.set_env(env2, force_reset=True)
    # Check that last obs was discarded
    assert model._last_obs is None
    # learn again
    model.learn(total_timesteps=64, reset_num_timesteps=True)
    assert model.num_timesteps == 64

    # change env test wrapping
    model.set_env(env3)
    # learn again
    model.learn(total_timesteps=64)

    # num_env must be the same
    with pytest.raises(AssertionError):
        model.set_env(env4)

    # Keep the same env, disable reset
    model.set_env(model.get_env(), force_reset=False)
    assert model._last_obs is not None
    # learn again
    model.learn(total_timesteps=64, reset_num_timesteps=False)
    assert model.num_timesteps == 2 * 64

    current_env = model.get_env()
    model.save(tmp_path / "test_save.zip")
    del model
    # Check that we can keep the number of timesteps after loading
    # Here the env kept its state so we don't have to reset
    model = model_class.load(tmp_path / "test_save.zip", env=current_env, force_reset=False)
    assert model._last_obs is not None
    model.learn(total_timesteps=64, reset_num_timesteps=False)
    assert model.num_timesteps == 3 * 64

    del model
    # We are changing the env, the env must reset but we should keep the number of timesteps
    model = model_class.load(tmp_path / "test_save.zip", env=env3, force_reset=True)
    assert model._last_obs is None
    model.learn(total_timesteps=64, reset_num_timesteps=False)
    assert model.num_timesteps == 3 * 64

    del model
    # Load the model with a different number of environments
    model = model_class.load(tmp_path / "test_save.zip", env=env4)
    model.learn(total_timesteps=64)

    # Clear saved file
    os.remove(tmp_path / "test_save.zip")


def test_exclude_include_saved_params(tmp_path, model_class):
    """
    Test if exclude and include parameters of save() work

    :param model_class: (BaseAlgorithm) A RL model
    """
    env = DummyVecEnv([lambda: select_env(model_class)])

    # create model, set verbose as 2, which is not standard
    model = model_class("MlpPolicy", env, policy_kwargs=dict(net_arch=[16]), verbose=2)

    # Check if exclude works
    model.save(tmp_path / "test_save", exclude=["verbose"])
    del model
    model = model_class.load(str(tmp_path / "test_save.zip"))
    # check if verbose was not saved
    assert model.verbose != 2

    # set verbose as something different then standard settings
    model.verbose = 2
    # Check if include works
    model.save(tmp_path / "test_save", exclude=["verbose"], include=["verbose"])
    del model
    # Load with custom objects
    custom_objects = dict(learning_rate=2e-5, dummy=1.0)
    model = model_class.load(
        str(tmp_path / "test_save.zip"),
        custom_objects=custom_objects,
        print_system_info=True,
    )
    assert model.verbose == 2
    # Check that the custom object was taken into account
    assert model.learning_rate == custom_objects["learning_rate"]
    # Check that only parameters that are here already are replaced
    assert not hasattr(model, "dummy")

    # clear file from os
    os.remove(tmp_path / "test_save.zip")


def test_save_load_env_cnn(tmp_path, model_class):
    """
    Test loading with an env that requires a ``CnnPolicy``.
    This is to test wrapping and observation space check.
    (SB3 runs this with A2C and TD3; n_steps=64 for the variants, A2C's default is 5.)
    """
    env = FakeImageEnv(screen_height=40, screen_width=40, n_channels=2, discrete=False)
    kwargs = dict(policy_kwargs=dict(net_arch=[32]), n_steps=64)

    model = model_class("CnnPolicy", env, **kwargs).learn(100)
    model.save(tmp_path / "test_save")
    # Test loading with env and continuing training
    model = model_class.load(str(tmp_path / "test_save.zip"), env=env, **kwargs).learn(100)
    # clear file from os
    os.remove(tmp_path / "test_save.zip")

    # Check we can load A2C/PPO models saved with SB3 < 1.7.0
    del model.policy.pi_features_extractor
    model.save(tmp_path / "test_save")
    with pytest.warns(UserWarning):
        model_class.load(str(tmp_path / "test_save.zip"), env=env, **kwargs).learn(100)
    os.remove(tmp_path / "test_save.zip")


@pytest.mark.parametrize("policy_str", ["MlpPolicy", "CnnPolicy"])
@pytest.mark.parametrize("use_sde", [False, True])
def test_save_load_policy(tmp_path, model_class, policy_str, use_sde):
    """
    Test saving and loading policy only.

    :param model_class: (BaseAlgorithm) A RL model
    :param policy_str: (str) Name of the policy.
    """
    # n_steps=64: SB3 runs PPO with its default 2048 here
    kwargs = dict(policy_kwargs=dict(net_arch=[16]), n_steps=64)

    if policy_str == "MlpPolicy":
        env = select_env(model_class)
    else:
        env = FakeImageEnv(screen_height=40, screen_width=40, n_channels=2, discrete=False)

    if use_sde:
        kwargs["use_sde"] = True

    env = DummyVecEnv([lambda: env])

    # create model
    model = model_class(policy_str, env, verbose=1, **kwargs)
    model.learn(total_timesteps=300)

    env.reset()
    observations = np.concatenate([env.step([env.action_space.sample()])[0] for _ in range(10)], axis=0)

    policy = model.policy
    policy_class = policy.__class__

    # Get dictionary of current parameters
    params = deepcopy(policy.state_dict())

    # Modify all parameters to be random values
    random_params = {param_name: th.rand_like(param) for param_name, param in params.items()}

    # Update model parameters with the new random values
    policy.load_state_dict(random_params)

    new_params = policy.state_dict()
    # Check that all params are different now
    for k in params:
        assert not th.allclose(params[k], new_params[k]), "Parameters did not change as expected."

    params = new_params

    # get selected actions
    selected_actions, _ = policy.predict(observations, deterministic=True)

    # Save and load policy
    policy.save(tmp_path / "policy.pkl")

    del policy

    policy = policy_class.load(tmp_path / "policy.pkl")

    # check if params are still the same after load
    new_params = policy.state_dict()

    # Check that all params are the same as before save load procedure now
    for key in params:
        assert th.allclose(params[key], new_params[key]), "Policy parameters not the same after save and load."

    # check if model still selects the same actions
    new_selected_actions, _ = policy.predict(observations, deterministic=True)
    assert np.allclose(selected_actions, new_selected_actions, 1e-4)

    # clear file from os
    os.remove(tmp_path / "policy.pkl")


def test_load_invalid_object(tmp_path, model_class):
    # See GH Issue #1122 for an example
    # of invalid object loading
    path = str(tmp_path / "ppo_pendulum.zip")
    model_class("MlpPolicy", "Pendulum-v1", learning_rate=lambda _: 1.0).save(path)

    with zipfile.ZipFile(path, mode="r") as archive:
        json_data = json.loads(archive.read("data").decode())

    # Intentionally corrupt the data
    serialization = json_data["learning_rate"][":serialized:"]
    base64_object = base64.b64decode(serialization.encode())
    new_bytes = base64_object.replace(b"CodeType", b"CodeTyps")
    base64_encoded = base64.b64encode(new_bytes).decode()
    json_data["learning_rate"][":serialized:"] = base64_encoded
    serialized_data = json.dumps(json_data, indent=4)

    with open(tmp_path / "data", "w") as f:
        f.write(serialized_data)
    # Replace with the corrupted file
    # probably doesn't work on windows
    os.system(f"cd {tmp_path}; zip ppo_pendulum.zip data")
    with pytest.warns(UserWarning, match=r"custom_objects"):
        model_class.load(path)
    # Load with custom object, no warnings
    with warnings.catch_warnings(record=True) as record:
        model_class.load(path, custom_objects=dict(learning_rate=lambda _: 1.0))
    assert len(record) == 0


# Turn warnings into errors
@pytest.mark.filterwarnings("error")
def test_no_resource_warning(tmp_path, model_class):
    # Check behavior of save/load
    # see https://github.com/DLR-RM/stable-baselines3/issues/1751

    # check that files are properly closed
    # Create a PPO agent and save it
    model_class("MlpPolicy", "CartPole-v1").save(tmp_path / "dqn_cartpole")
    model_class.load(tmp_path / "dqn_cartpole")

    model_class("MlpPolicy", "CartPole-v1").save(str(tmp_path / "dqn_cartpole"))
    model_class.load(str(tmp_path / "dqn_cartpole"))

    # Do the same but in memory, should not close the file
    with tempfile.TemporaryFile() as fp:
        model_class("MlpPolicy", "CartPole-v1").save(fp)
        model_class.load(fp)
        assert not fp.closed


def test_cast_lr_schedule(tmp_path, model_class):
    # See GH#1900
    model = model_class("MlpPolicy", "Pendulum-v1", learning_rate=lambda t: t * np.sin(1.0))
    # Note: for recent version of numpy, np.float64 is a subclass of float
    # so we need to use type here
    # assert isinstance(model.lr_schedule(1.0), float)
    assert type(model.lr_schedule(1.0)) is float
    assert model.lr_schedule(0.5) == 0.5 * np.sin(1.0)
    model.save(tmp_path / "ppo.zip")
    model = model_class.load(tmp_path / "ppo.zip")
    assert type(model.lr_schedule(1.0)) is float
    assert model.lr_schedule(0.5) == 0.5 * np.sin(1.0)


def test_save_load_net_arch_none(tmp_path, model_class):
    """
    Test that the model is loaded correctly when net_arch is manually set to None.
    See GH#1928
    """
    model_class("MlpPolicy", "CartPole-v1", policy_kwargs=dict(net_arch=None)).save(tmp_path / "ppo.zip")
    model = model_class.load(tmp_path / "ppo.zip")
    # None has been replaced by the default net arch
    assert model.policy.net_arch is not None
    os.remove(tmp_path / "ppo.zip")


# --------------------------------------------------------------------------------------------------------------
# Ours: round trips of every variant, the KL controller included
# --------------------------------------------------------------------------------------------------------------


def _no_controller(model, n_updates: int) -> None:
    assert model.kl_controller is None


def _scheduled_beta(model, n_updates: int) -> None:
    # FixedKLController: beta of the last update = kl_coef at the progress of that update
    assert isinstance(model.kl_controller, FixedKLController)
    assert model.kl_controller.value == model.kl_coef(model._current_progress_remaining)


def _adapted_beta(factor: float) -> Callable[[Any, int], None]:
    # With kl_target far above (below) any KL reached here, every update halves (doubles) beta: exact powers of two
    def check(model, n_updates: int) -> None:
        assert isinstance(model.kl_controller, AdaptiveKLController)
        initial = float(model.kl_coef)
        assert model.kl_controller.value == initial * factor**n_updates
        assert model.kl_controller.value != initial

    return check


ROUND_TRIP: dict[str, dict[str, Any]] = {
    "clip": dict(kwargs={}, check_beta=_no_controller),
    "kl": dict(kwargs=dict(kl_coef="lin_0.5"), check_beta=_scheduled_beta),
    "adaptive_kl": dict(kwargs=dict(kl_coef=1.0, kl_target=1e3), check_beta=_adapted_beta(0.5)),
    "clip_kl": dict(kwargs=dict(kl_coef=0.2, kl_target=1e-9, kl_estimator="k3"), check_beta=_adapted_beta(2.0)),
}
assert set(ROUND_TRIP) == set(PLAIN_VARIANTS)

N_STEPS = 32
VARIANT_ATTRIBUTES = ("surrogate", "kl_penalty", "kl_coef", "kl_target", "kl_estimator", "n_steps", "ent_coef")


def _tensors(state: dict[str, Any]) -> dict[str, th.Tensor]:
    return {key: value.detach().clone() for key, value in state.items()}


@pytest.mark.parametrize("variant", PLAIN_VARIANTS)
def test_round_trip(tmp_path, variant):
    settings = ROUND_TRIP[variant]
    model_class = VARIANTS[variant]
    env = DummyVecEnv([lambda: IdentityEnvBox(-10, 10)])
    model = model_class("MlpPolicy", env, n_steps=N_STEPS, batch_size=N_STEPS, n_epochs=4, seed=0, **settings["kwargs"])
    model.learn(3 * N_STEPS)
    settings["check_beta"](model, 3)

    observation_space = env.observation_space
    observation_space.seed(1)
    observations = np.stack([observation_space.sample() for _ in range(10)])
    actions, _ = model.predict(observations, deterministic=True)
    policy_state = _tensors(model.policy.state_dict())
    optimizer_state = deepcopy(model.policy.optimizer.state_dict())
    controller = deepcopy(model.kl_controller)

    model.save(tmp_path / "model.zip")
    loaded = model_class.load(tmp_path / "model.zip", env=env)

    assert type(loaded) is model_class
    assert loaded.num_timesteps == 3 * N_STEPS
    for name in VARIANT_ATTRIBUTES:
        assert getattr(loaded, name) == getattr(model, name), name
    for progress in (1.0, 0.5, 0.0):  # SB3's FloatSchedule has no __eq__: compare the values
        assert loaded.clip_range(progress) == model.clip_range(progress)
        assert loaded.lr_schedule(progress) == model.lr_schedule(progress)
    # parameters, optimizer moments and predictions
    loaded_state = loaded.policy.state_dict()
    assert loaded_state.keys() == policy_state.keys()
    for key, value in policy_state.items():
        assert th.equal(loaded_state[key], value), key
    loaded_optimizer = loaded.policy.optimizer.state_dict()
    for index, moments in optimizer_state["state"].items():
        for name, value in moments.items():
            assert th.equal(th.as_tensor(loaded_optimizer["state"][index][name]), th.as_tensor(value)), (index, name)
    new_actions, _ = loaded.predict(observations, deterministic=True)
    np.testing.assert_array_equal(new_actions, actions)
    # the KL controller, with its current (adapted or scheduled) beta
    assert type(loaded.kl_controller) is type(controller)
    assert vars(loaded.kl_controller) == vars(controller) if controller is not None else loaded.kl_controller is None
    settings["check_beta"](loaded, 3)

    # the loaded model keeps learning, and beta keeps following its rule
    loaded.learn(2 * N_STEPS, reset_num_timesteps=False)
    assert loaded.num_timesteps == 5 * N_STEPS
    settings["check_beta"](loaded, 5)
    assert any(not th.equal(loaded.policy.state_dict()[key], value) for key, value in policy_state.items())


@pytest.mark.parametrize("variant", PLAIN_VARIANTS)
def test_round_trip_without_env(tmp_path, variant):
    """Load without an env (e.g. for inference), then attach one with set_env and train on."""
    settings = ROUND_TRIP[variant]
    model_class = VARIANTS[variant]
    model = model_class(
        "MlpPolicy", "CartPole-v1", n_steps=N_STEPS, batch_size=N_STEPS, n_epochs=2, seed=0, **settings["kwargs"]
    )
    model.learn(2 * N_STEPS)
    model.save(tmp_path / "model")
    loaded = model_class.load(tmp_path / "model")
    assert loaded.get_env() is None
    assert vars(loaded.kl_controller) == vars(model.kl_controller) if model.kl_controller is not None else True
    loaded.set_env(model.get_env())
    loaded.learn(2 * N_STEPS, reset_num_timesteps=False)
    assert loaded.num_timesteps == 4 * N_STEPS
    settings["check_beta"](loaded, 4)


# Arguments passed to load() replace the saved attributes (BaseAlgorithm.load: __dict__.update(kwargs), then
# _setup_model()); SB3's PPO re-derives its schedules from them in _setup_model (clip_range, learning_rate).
LOAD_OVERRIDES: dict[str, dict[str, Any]] = {
    "kl": dict(kwargs=dict(kl_coef=0.5), override=dict(kl_coef=0.1), expected_beta=0.1),
    "clip_kl": dict(kwargs=dict(kl_coef=0.2), override=dict(kl_coef=0.05), expected_beta=0.05),
    "adaptive_kl": dict(kwargs=dict(kl_coef=1.0, kl_target=1e3), override=dict(kl_target=1e-9), expected_beta=None),
}


@pytest.mark.parametrize("variant", list(LOAD_OVERRIDES))
def test_load_overrides_kl_settings(tmp_path, variant):
    """Ours: as with SB3 (SAC.load(path, train_freq=...), PPO.load(path, clip_range=...)), an argument given to
    load() is the one training uses."""
    settings = LOAD_OVERRIDES[variant]
    model_class = VARIANTS[variant]
    model = model_class(
        "MlpPolicy", "CartPole-v1", n_steps=N_STEPS, batch_size=N_STEPS, n_epochs=2, seed=0, **settings["kwargs"]
    )
    model.learn(N_STEPS)
    model.save(tmp_path / "model")
    loaded = model_class.load(tmp_path / "model", env=model.get_env(), **settings["override"])
    beta_before = loaded.kl_controller.value
    loaded.learn(2 * N_STEPS, reset_num_timesteps=False)
    if settings["expected_beta"] is not None:
        assert loaded.kl_controller.value == settings["expected_beta"]
    else:
        # a kl_target far below any KL: beta must have doubled at each of the two updates
        assert loaded.kl_controller.value == 4 * beta_before


def test_load_with_schedule_string(tmp_path, model_class):
    """Ours: the constructors take schedule strings; load() arguments should too."""
    model = model_class("MlpPolicy", "CartPole-v1", n_steps=N_STEPS, batch_size=N_STEPS, n_epochs=1, seed=0)
    model.save(tmp_path / "model")
    loaded = model_class.load(tmp_path / "model", env=model.get_env(), ent_coef="lin_0.01")
    loaded.learn(N_STEPS)
    assert loaded.ent_coef == LinearSchedule(0.01)


# rl-zoo3's enjoy.py (2.9.2) and SB3's docs load a model for inference with these overrides.
ZOO_INFERENCE_OBJECTS = {"learning_rate": 0.0, "lr_schedule": lambda _: 0.0, "clip_range": lambda _: 0.0}


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_load_with_inference_custom_objects(tmp_path, model_class, env_id):
    """Ours: as stable_baselines3.PPO does, a model loads with a clip_range of 0 given for inference (the
    constructor would refuse it), and predicts what the saved model predicts."""
    model = model_class("MlpPolicy", env_id, n_steps=N_STEPS, batch_size=N_STEPS, n_epochs=1, seed=0).learn(N_STEPS)
    model.save(tmp_path / "model")
    with pytest.raises(ValueError, match="clip_range"):
        model_class("MlpPolicy", env_id, clip_range=0.0)
    loaded = model_class.load(tmp_path / "model", custom_objects=ZOO_INFERENCE_OBJECTS)
    assert loaded.clip_range(1.0) == 0.0
    observations = np.stack([model.observation_space.sample() for _ in range(8)])
    expected, _ = model.predict(observations, deterministic=True)
    actions, _ = loaded.predict(observations, deterministic=True)
    np.testing.assert_array_equal(actions, expected)
