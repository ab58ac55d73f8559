"""The arithmetic system: tokenizer, environment, language-model policy, pretraining."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch as th

from sb3_ppo_variants.arithmetic.env import ENV_ID, ArithmeticEnv, answer_score, generate_answers
from sb3_ppo_variants.arithmetic.tokenizer import CharTokenizer, load_tokenizer


def answer(env: ArithmeticEnv, prompt: str, text: str, end: bool = True) -> tuple[float, bool, dict]:
    """Play ``text`` (and the end token) as the answer to ``prompt``; the last step's reward, terminated, info."""
    env.reset(options={"prompt_index": env.prompts.index(prompt)})
    tokens = [*env.tokenizer.encode(text), *([env.eos_token_id] if end else [])]
    for i, token in enumerate(tokens):
        _, reward, terminated, truncated, info = env.step(token)
        assert not truncated
        if terminated:
            assert i == len(tokens) - 1, f"ended early at token {i} of {text!r}"
            return reward, terminated, info
        assert reward == 0.0
    return reward, terminated, info


# --- tokenizer -----------------------------------------------------------------------------------------------------


def test_tokenizer_round_trip(tmp_path):
    tokenizer = CharTokenizer()
    text = "0123456789+-*="
    ids = tokenizer.encode(text)
    assert len(ids) == len(text) and len(set(ids)) == len(text)
    assert tokenizer.pad_token_id not in ids and tokenizer.eos_token_id not in ids
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode([*ids, tokenizer.eos_token_id, tokenizer.pad_token_id]) == text
    assert tokenizer.decode([tokenizer.eos_token_id], skip_special_tokens=False) == "<eos>"
    tokenizer.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded == tokenizer and loaded.encode("37+48=") == tokenizer.encode("37+48=")


def test_tokenizer_bad_input():
    tokenizer = CharTokenizer()
    with pytest.raises(ValueError, match=r"text '3/4=' has the character '/'"):
        tokenizer.encode("3/4=")
    with pytest.raises(ValueError, match="ids has the id 99"):
        tokenizer.decode([2, 99])
    with pytest.raises(ValueError, match="characters must not repeat"):
        CharTokenizer("0123455")


# --- environment ---------------------------------------------------------------------------------------------------


def test_env_rewards_on_hand_written_answers():
    env = ArithmeticEnv(operators="+-", digits=2, split="train")
    shaped = ArithmeticEnv(operators="+-", digits=2, split="train", reward="digits")
    prompt = next(p for p in env.prompts if p.startswith("37+"))
    correct = str(37 + int(prompt[3:5]))
    assert answer(env, prompt, correct)[0] == 1.0
    reward, terminated, info = answer(env, prompt, correct)
    assert terminated and info["is_correct"] and info["answer"] == correct
    wrong = str(int(correct) + 1)
    assert answer(env, prompt, wrong)[0] == 0.0
    assert answer(shaped, prompt, correct)[0] == 1.0
    assert answer(shaped, prompt, wrong)[0] == answer_score(wrong, correct, "digits")
    assert answer(env, prompt, "0" + correct)[0] == 0.0  # a leading zero is not the exact answer
    for malformed in ("", "8+5", "-", "=", "+" + correct):
        assert answer(env, prompt, malformed)[0] == 0.0
        assert answer(shaped, prompt, malformed)[0] == 0.0
    # too long: no end token within max_answer_tokens (3 digits + end for two-digit operands)
    assert env.max_answer_tokens == 4
    reward, terminated, info = answer(env, prompt, "1234", end=False)
    assert (reward, terminated, info["is_correct"]) == (0.0, True, False)
    # the padding token ends the episode as malformed
    env.reset(options={"prompt_index": env.prompts.index(prompt)})
    env.step(env.tokenizer.encode(correct[0])[0])
    _, reward, terminated, _, _ = env.step(env.pad_token_id)
    assert (reward, terminated) == (0.0, True)
    # a negative answer
    minus = next(p for p in env.prompts if p.startswith("12-"))
    assert answer(env, minus, str(12 - int(minus[3:5])))[0] == 1.0


def test_shaped_reward_by_hand():
    assert answer_score("84", "85", "digits") == 0.5
    assert answer_score("185", "85", "digits") == 2 / 3  # the score's own division
    assert answer_score("85", "85", "digits") == 1.0
    assert answer_score("8-5", "85", "digits") == 0.0
    assert answer_score("84", "85", "exact") == 0.0


def test_observation_is_padded_token_ids():
    env = gym.make(ENV_ID, digits=2)
    obs, info = env.reset(seed=3)
    assert env.observation_space.contains(obs) and obs.dtype == np.int64
    base = env.unwrapped
    assert isinstance(base, ArithmeticEnv)
    assert base.tokenizer.decode(obs) == info["prompt"]
    assert obs.shape == (6 + 4,) and (obs[6:] == base.pad_token_id).all()
    token = base.tokenizer.encode("1")[0]
    obs, *_ = env.step(token)
    assert obs[6] == token and (obs[7:] == base.pad_token_id).all()


def test_held_out_prompts_never_in_training_episodes():
    train = ArithmeticEnv(digits=(1, 2), held_out_fraction=0.2, split_seed=5)
    held_out = ArithmeticEnv(digits=(1, 2), held_out_fraction=0.2, split_seed=5, split="held_out")
    assert len(train.prompts) + len(held_out.prompts) == 100 * 100
    assert len(held_out.prompts) in (2000, 2001)  # whole twin pairs: one problem over 20% at most
    assert set(train.prompts).isdisjoint(held_out.prompts)
    assert set(train.other_prompts) == set(held_out.prompts)
    held = set(held_out.prompts)
    train.reset(seed=0)
    seen = set()
    for _ in range(3000):
        _, info = train.reset()
        seen.add(info["prompt"])
    assert seen.isdisjoint(held) and len(seen) > 2000
    # another split seed, another split
    assert set(ArithmeticEnv(digits=(1, 2), split_seed=6, split="held_out").prompts) != held


SPLIT_SETTINGS = [
    {"operators": operators, **digits}
    for operators in ("+", "-", "*", "+-*")
    for digits in ({"digits": 1}, {"digits": 2}, {"digits": (1, 2)}, {"operands": [0, 3, 7, 11, 250]})
]


@pytest.mark.parametrize("settings", SPLIT_SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
@pytest.mark.parametrize(("fraction", "split_seed"), [(0.2, 0), (0.5, 3)])
def test_held_out_split_keeps_commuted_twins_together(settings, fraction, split_seed):
    """For + and *, a+b and b+a (the same answer) are on the same side of the split; every problem is on exactly one
    side; at least ``held_out_fraction`` of the problems are held out, one twin more at most."""
    kwargs = {**settings, "held_out_fraction": fraction, "split_seed": split_seed}
    train = ArithmeticEnv(**kwargs)
    held_out = ArithmeticEnv(**kwargs, split="held_out")
    values = sorted(settings.get("operands") or {1: range(10), 2: range(10, 100), (1, 2): range(100)}[settings["digits"]])
    every = {f"{a}{op}{b}=" for op in settings["operators"] for a in values for b in values}
    held, trained = set(held_out.prompts), set(train.prompts)
    assert held | trained == every and held.isdisjoint(trained)
    assert len(held) + len(trained) == len(every)  # no prompt twice within a split
    assert set(train.other_prompts) == held and set(held_out.other_prompts) == trained
    needed = math.ceil(fraction * len(every))
    assert needed <= len(held) <= needed + 1
    twins = 0
    for prompt in held:
        a, op, b = re.fullmatch(r"([0-9]+)([-+*])([0-9]+)=", prompt).groups()
        if op in "+*":
            assert f"{b}{op}{a}=" in held, prompt
            twins += a != b
        else:
            assert f"{b}{op}{a}=" in every
    assert twins > 0 or set(settings["operators"]) == {"-"}
    assert all(answer == str(eval(prompt[:-1])) for prompt, answer in zip(held_out.prompts, held_out.answers))


def test_the_split_by_prompt_string_had_twins_in_training():
    """The defect the twin-aware split fixes, counted on the issue's setting (+ and *, two digits, 20% held out): a
    split by prompt string left 2,590 held-out prompts whose twin was trained on; this split leaves none."""
    settings = {"operators": "+*", "digits": 2}
    held_out = ArithmeticEnv(**settings, split="held_out")
    trained = set(ArithmeticEnv(**settings).prompts)
    assert not [p for p in held_out.prompts if f"{p[3:5]}{p[2]}{p[:2]}=" in trained]
    order = np.random.default_rng(0).permutation(2 * 90 * 90)  # the old split: shuffled problems, first 20% held out
    every = [f"{a}{op}{b}=" for op in "+*" for a in range(10, 100) for b in range(10, 100)]
    old_held = {every[i] for i in order[: math.ceil(0.2 * len(every))]}
    assert sum(f"{p[3:5]}{p[2]}{p[:2]}=" not in old_held for p in old_held) == 2590


def test_reward_fn_scores_answers_that_end_with_the_end_token():
    calls = []

    def score(prompt: str, answer_text: str) -> float:
        calls.append((prompt, answer_text))
        return 0.25 * len(answer_text) - (answer_text == "85")

    env = ArithmeticEnv(digits=2, reward_fn=score)
    prompt = env.prompts[0]
    assert answer(env, prompt, "85")[0] == 0.25 * 2 - 1
    reward, _, info = answer(env, prompt, env.answers[0])
    assert reward == 0.25 * len(env.answers[0]) - (env.answers[0] == "85") and info["is_correct"]
    assert answer(env, prompt, "8+5")[0] == 0.75 and not answer(env, prompt, "8+5")[2]["is_correct"]
    assert calls[:3] == [(prompt, "85"), (prompt, env.answers[0]), (prompt, "8+5")]
    n_calls = len(calls)
    assert answer(env, prompt, "1234", end=False)[0] == 0.0  # too long: 0, no call
    env.reset(options={"prompt_index": 0})
    assert env.step(env.pad_token_id)[1] == 0.0  # malformed: 0, no call
    assert len(calls) == n_calls
    # through gymnasium's registry, as make_vec_env builds it
    made = gym.make(ENV_ID, digits=2, reward_fn=lambda p, a: 7.0).unwrapped
    assert answer(made, made.prompts[0], "1")[0] == 7.0


def test_reward_fn_bad_input():
    with pytest.raises(TypeError, match=r"reward_fn must be a callable \(prompt, answer_text\) -> float or None, got 3"):
        ArithmeticEnv(reward_fn=3)
    with pytest.raises(ValueError, match="give reward or reward_fn, not both: reward='digits'"):
        ArithmeticEnv(reward="digits", reward_fn=lambda p, a: 0.0)
    for bad in ("high", float("nan"), None):
        env = ArithmeticEnv(digits=1, reward_fn=lambda p, a, bad=bad: bad)
        with pytest.raises(ValueError, match=rf"reward_fn=.* must return a finite number, returned {bad!r} for \('"):
            answer(env, env.prompts[0], "1")


def test_env_bad_input():
    with pytest.raises(ValueError, match=r"obs_length=8 is too short.*obs_length must be an int >= 10"):
        ArithmeticEnv(digits=2, obs_length=8)
    with pytest.raises(ValueError, match="operators must be"):
        ArithmeticEnv(operators=("/",))
    with pytest.raises(ValueError, match=r"tokenizer CharTokenizer.*cannot encode.*text '10\*10=' has the character '\*'"):
        ArithmeticEnv(operators="*", digits=2, tokenizer=CharTokenizer("0123456789+="))
    with pytest.raises(ValueError, match="split must be one of"):
        ArithmeticEnv(split="test")
    with pytest.raises(ValueError, match="reward must be one of"):
        ArithmeticEnv(reward="partial")
    with pytest.raises(ValueError, match="digits must be"):
        ArithmeticEnv(digits=0)
    env = ArithmeticEnv(digits=1)
    with pytest.raises(ValueError, match="longer than obs_length"):
        env.observation("12345+6=")
    with pytest.raises(ValueError, match="action must be a token id"):
        env.reset()
        env.step(99)


def test_importing_the_package_does_not_import_transformers():
    code = (
        "import sys, gymnasium as gym, sb3_ppo_variants, sb3_ppo_variants.arithmetic; gym.make('sb3pv/Arithmetic-v0');"
        "assert 'transformers' not in sys.modules, 'transformers imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- policy --------------------------------------------------------------------------------------------------------

TINY = {"n_layer": 1, "n_embd": 32, "n_head": 2}


def test_policy_logits_are_the_language_model_next_token_logits(tmp_path):
    from sb3_ppo_variants.arithmetic.policy import TransformerPolicy
    from sb3_ppo_variants.schedules import ConstantSchedule

    th.manual_seed(0)
    env = ArithmeticEnv(digits=2)
    policy = TransformerPolicy(env.observation_space, env.action_space, ConstantSchedule(1e-3), model_config=TINY)
    assert policy.action_net is policy.language_model.lm_head
    obs = np.stack([env.observation("37+48="), env.observation("37+48=", env.tokenizer.encode("8")), env.observation("9+9=")])
    with th.no_grad():
        logits = policy.get_distribution(th.as_tensor(obs)).distribution.logits
        for row, prompt_and_answer in zip(logits, ["37+48=", "37+48=8", "9+9="]):
            ids = th.as_tensor([env.tokenizer.encode(prompt_and_answer)])
            expected = policy.language_model(input_ids=ids).logits[0, -1]
            # the policy runs the three padded observations as one batch, this each prompt alone and unpadded
            # (other shapes, so other matmul and softmax reductions): measured 2.4e-7 absolute
            th.testing.assert_close(row, th.log_softmax(expected, dim=-1), rtol=1e-5, atol=1e-5)
    # save_pretrained / from_pretrained: the same next-token distribution
    policy.save_pretrained(tmp_path / "lm", env.tokenizer)
    loaded = TransformerPolicy.from_pretrained(tmp_path / "lm", env.observation_space, env.action_space)
    assert load_tokenizer(tmp_path / "lm") == env.tokenizer
    with th.no_grad():
        assert th.equal(loaded.get_distribution(th.as_tensor(obs)).distribution.logits, logits)
    # SB3's policy save/load
    policy.save(tmp_path / "policy.pt")
    again = TransformerPolicy.load(tmp_path / "policy.pt")
    with th.no_grad():
        assert th.equal(again.get_distribution(th.as_tensor(obs)).distribution.logits, logits)


def test_policy_bad_input(tmp_path):
    from sb3_ppo_variants.arithmetic.policy import TransformerPolicy
    from sb3_ppo_variants.schedules import ConstantSchedule

    env = ArithmeticEnv(digits=2)
    small = TransformerPolicy(env.observation_space, env.action_space, ConstantSchedule(1e-3), model_config=TINY)
    small.save_pretrained(tmp_path / "lm")
    wider = ArithmeticEnv(digits=2, tokenizer=CharTokenizer("0123456789+-*=/"))
    with pytest.raises(ValueError, match=r"model_path=.*vocabulary has 16 tokens but the action space has 17"):
        TransformerPolicy.from_pretrained(tmp_path / "lm", wider.observation_space, wider.action_space)
    longer = ArithmeticEnv(digits=2, obs_length=24)
    with pytest.raises(ValueError, match=r"model_path=.*reads at most 10 tokens, the observation has 24"):
        TransformerPolicy.from_pretrained(tmp_path / "lm", longer.observation_space, longer.action_space)
    with pytest.raises(ValueError, match="model_path must be a directory"):
        TransformerPolicy.from_pretrained(tmp_path / "missing", env.observation_space, env.action_space)
    with pytest.raises(ValueError, match="action_space must be Discrete"):
        TransformerPolicy(env.observation_space, gym.spaces.Box(-1, 1, (2,)), ConstantSchedule(1e-3))


def test_generate_answers_matches_the_environment():
    """Batched decoding scores answers as the environment does (None where the episode ends without an end token)."""

    env = ArithmeticEnv(digits=1, max_answer_tokens=2)
    script = {"1+1=": "2", "9+9=": "18"}  # "18" needs 3 tokens with the end token: too long

    def predict(obs: np.ndarray, deterministic: bool = True) -> tuple[np.ndarray, None]:
        actions = []
        for row in obs:
            text = env.tokenizer.decode(row)
            prompt = text[: text.index("=") + 1]
            wanted = [*env.tokenizer.encode(script.get(prompt, "")), env.eos_token_id]
            actions.append(wanted[len(text) - len(prompt)])
        return np.asarray(actions), None

    prompts = [p for p in ("1+1=", "9+9=", "3+4=") if p in env.prompts]
    assert generate_answers(predict, env, prompts) == [{"1+1=": "2", "9+9=": None, "3+4=": ""}[p] for p in prompts]


# --- pretraining, the KL to the reference, learning -----------------------------------------------------------------

CI_ENV = {"digits": 2}
# The default model (2 layers, width 64): fine-tuning a narrower one (width 32) lowered its held-out accuracy here.
CI_PRETRAINING = {"target_accuracy": 0.4, "eval_every": 25, "n_eval_prompts": 300}


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    """A CI-sized pretrained reference, made once per test session."""
    from sb3_ppo_variants.arithmetic.pretrain import pretrain_reference

    directory = str(tmp_path_factory.mktemp("arithmetic") / "reference")
    return directory, pretrain_reference(directory, CI_ENV, **CI_PRETRAINING)


def ci_hyperparams(reference_dir: str) -> dict:
    return {
        ENV_ID: {
            "default": {
                "policy": "sb3_ppo_variants.arithmetic.policy:TransformerPolicy",
                "policy_kwargs": {"model_path": reference_dir},
                "env_kwargs": CI_ENV,
                "n_envs": 64,
                "n_steps": 32,
                "batch_size": 256,
                "n_epochs": 4,
                "learning_rate": 5e-5,
                "gamma": 1.0,
                "vf_coef": 0.1,
            },
            "no_kl": {"variant": "clip"},
            "kl_reward": {"variant": "clip_kl", "kl_reference": reference_dir, "kl_reference_in": "reward", "kl_coef": 0.2},
        }
    }


def test_pretraining_gives_an_imperfect_reference_without_the_held_out_prompts(reference):
    from sb3_ppo_variants.arithmetic.pretrain import answer_batches, pretrain_reference

    directory, metadata = reference
    assert 0.2 <= metadata["held_out_accuracy"] <= 0.7, metadata
    assert metadata["train_accuracy"] >= 0.4
    env = ArithmeticEnv(**CI_ENV)
    inputs, labels = answer_batches(env)
    texts = {env.tokenizer.decode(row) for row in inputs.tolist()}
    held_out = ArithmeticEnv(**CI_ENV, split="held_out")
    assert len(texts) == len(env.prompts) and not any(t.startswith(p) for t in texts for p in held_out.prompts[:50])
    assert {t[: t.index("=") + 1] for t in texts} == set(env.prompts)
    # labels only on the answer and the end token
    row = env.tokenizer.encode(env.prompts[0])
    assert (labels[0, : len(row) - 1] == -100).all() and labels[0, len(row) - 1] != -100
    # saved and reused: the same settings do not train again
    assert pretrain_reference(directory, CI_ENV, **CI_PRETRAINING) == metadata


def test_reference_equal_to_the_initial_policy_gives_zero_kl(reference):
    from sb3_ppo_variants import ClipKLPPO
    from sb3_ppo_variants.hyperparams import make_model

    directory, _ = reference
    entry = ci_hyperparams(directory)[ENV_ID]
    model = make_model(ClipKLPPO, ENV_ID, {**entry["default"], "n_envs": 8, "batch_size": 64}, seed=0, kl_reference=directory)
    before = {k: v.clone() for k, v in model.reference_policy.state_dict().items()}
    model.learn(8 * 16)
    buffer = model.rollout_buffer
    assert np.abs(buffer.reference_kl).max() < 1e-6
    assert model.logger.name_to_value["train/kl_ref"] > 0  # after the update
    for name, value in model.reference_policy.state_dict().items():
        th.testing.assert_close(value, before[name])


def test_reference_that_does_not_match_the_policy(reference, tmp_path):
    from sb3_ppo_variants import ClipKLPPO
    from sb3_ppo_variants.arithmetic.policy import TransformerPolicy
    from sb3_ppo_variants.schedules import ConstantSchedule

    directory, _ = reference
    wider = ArithmeticEnv(digits=2, tokenizer=CharTokenizer("0123456789+-*=/"))
    TransformerPolicy(wider.observation_space, wider.action_space, ConstantSchedule(0.0), model_config=TINY).save_pretrained(
        tmp_path / "wider"
    )
    env = ArithmeticEnv(**CI_ENV)
    kwargs = {"policy_kwargs": {"model_path": directory}, "n_steps": 8, "batch_size": 8}
    with pytest.raises(ValueError, match=r"kl_reference='.*wider'.*vocabulary has 17 tokens but the action space has 16"):
        ClipKLPPO(TransformerPolicy, env, kl_reference=str(tmp_path / "wider"), **kwargs)
    longer = ArithmeticEnv(digits=2, obs_length=12)
    with pytest.raises(ValueError, match=r"kl_reference=.*reads at most 10 tokens, the observation has 12"):
        wide_context = {"model_config": {**TINY, "n_positions": 12}}
        ClipKLPPO(TransformerPolicy, longer, kl_reference=directory, policy_kwargs=wide_context)


@pytest.mark.slow
def test_fine_tuning_beats_the_reference_and_writes_a_report(reference, tmp_path):
    import json

    from sb3_ppo_variants.arithmetic.report import run

    directory, metadata = reference
    summary = run(
        tmp_path / "report", directory, ["kl_reward"], [0], 64 * 32 * 4, ci_hyperparams(directory), CI_PRETRAINING, verbose=0
    )
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    (run_result,) = results["runs"]
    assert summary["reference_held_out_accuracy"] == metadata["held_out_accuracy"]
    assert run_result["held_out_accuracy"] >= metadata["held_out_accuracy"] + 0.05, (run_result, metadata)
    assert 0 < run_result["kl_per_response"] < 3
    assert run_result["evaluations"][0]["accuracy"] == summary["reference_eval_accuracy"]  # the curve starts at the reference
    report = (tmp_path / "report" / "report.md").read_text()
    assert "kl_reward" in report and f"{run_result['held_out_accuracy']:.3f}" in report
    assert (tmp_path / "report" / "curves.png").stat().st_size > 10_000


def test_a_gpt2_tokenizer_and_checkpoint_take_the_same_code_path(tmp_path):
    """transformers' own GPT2Tokenizer (byte-level BPE, here with a tiny vocabulary and no merges, no download) and a
    GPT-2 checkpoint saved next to it: the env, the policy and the KL reference load them from the directory."""
    import json

    from transformers import GPT2Tokenizer

    from sb3_ppo_variants import ClipKLPPO
    from sb3_ppo_variants.arithmetic.policy import TransformerPolicy
    from sb3_ppo_variants.schedules import ConstantSchedule

    vocab = {char: i for i, char in enumerate("0123456789+-*=")} | {"<|endoftext|>": 14}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    directory = tmp_path / "gpt2"
    GPT2Tokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt")).save_pretrained(directory)
    tokenizer = load_tokenizer(directory)
    assert type(tokenizer).__name__.startswith("GPT2Tokenizer")
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 14  # GPT-2 has no padding token: its end token pads
    env = ArithmeticEnv(digits=1, tokenizer=str(directory))
    assert env.action_space.n == 15 and env.pad_token_id == env.eos_token_id == 14
    assert answer(env, env.prompts[0], env.answers[0])[0] == 1.0
    special = {"pad_token_id": 14, "eos_token_id": 14, "bos_token_id": 14}
    policy = TransformerPolicy(env.observation_space, env.action_space, ConstantSchedule(0.0), model_config=TINY | special)
    policy.save_pretrained(directory, tokenizer)
    kwargs = {"policy_kwargs": {"model_path": str(directory)}, "n_steps": 16, "batch_size": 16}
    model = ClipKLPPO(TransformerPolicy, env, kl_reference=str(directory), **kwargs)
    model.learn(16)
    assert np.abs(model.rollout_buffer.reference_kl).max() < 1e-6


def test_a_policy_named_by_its_import_path():
    from sb3_ppo_variants.hyperparams import resolve_policy

    assert resolve_policy("MlpPolicy") == "MlpPolicy"
    assert resolve_policy("sb3_ppo_variants.arithmetic.env:ArithmeticEnv") is ArithmeticEnv
    with pytest.raises(ValueError, match=r"policy 'sb3_ppo_variants.arithmetic.env:Nope': cannot import 'Nope'"):
        resolve_policy("sb3_ppo_variants.arithmetic.env:Nope")
