"""The arithmetic system: a language-model policy answers prompts such as ``"37+48="`` token by token, fine-tuned
with PPO and a KL penalty to a frozen reference (the RLHF pattern).

Importing this package imports neither ``transformers`` nor the policy: ``policy``, ``pretrain`` and ``report`` do.
"""

from sb3_ppo_variants.arithmetic.env import ENV_ID, ArithmeticEnv, answer_score, generate_answers, greedy_accuracy
from sb3_ppo_variants.arithmetic.tokenizer import CharTokenizer, load_tokenizer

__all__ = ["ENV_ID", "ArithmeticEnv", "CharTokenizer", "answer_score", "generate_answers", "greedy_accuracy", "load_tokenizer"]
