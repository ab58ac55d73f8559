"""A character-level tokenizer for arithmetic prompts, with the part of Hugging Face's tokenizer interface that
the environment and the pretraining use (``encode``, ``decode``, ``pad_token_id``, ``eos_token_id``, ``len()``,
``save_pretrained`` / ``from_pretrained``), so that a real GPT-2 tokenizer can stand in for it."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_CHARACTERS", "TOKENIZER_FILE", "CharTokenizer", "has_tokenizer", "load_tokenizer"]

#: Digits, the operators and "=": every character an arithmetic prompt or answer needs.
DEFAULT_CHARACTERS = "0123456789+-*="
#: The file :meth:`CharTokenizer.save_pretrained` writes into a model directory.
TOKENIZER_FILE = "char_tokenizer.json"


class CharTokenizer:
    """One token per character, plus a padding token (id 0) and an end token (id 1).

    :param characters: the characters of the vocabulary, in id order after the two special tokens
    :param pad_token: the padding token's text (never produced by ``encode``)
    :param eos_token: the end token's text: the policy emits it to end its answer
    """

    def __init__(self, characters: str = DEFAULT_CHARACTERS, pad_token: str = "<pad>", eos_token: str = "<eos>"):
        if not isinstance(characters, str) or not characters:
            raise ValueError(f"characters must be a non-empty string, got {characters!r}")
        if len(set(characters)) != len(characters):
            raise ValueError(f"characters must not repeat a character, got {characters!r}")
        if pad_token == eos_token or pad_token in characters or eos_token in characters:
            raise ValueError(
                f"pad_token {pad_token!r} and eos_token {eos_token!r} must differ from each other and from the characters"
            )
        self.characters = characters
        self.pad_token = pad_token
        self.eos_token = eos_token
        self.pad_token_id = 0
        self.eos_token_id = 1
        self._ids = {char: index + 2 for index, char in enumerate(characters)}
        self._tokens = [pad_token, eos_token, *characters]

    def __len__(self) -> int:
        return len(self._tokens)

    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """The ids of ``text``'s characters (no special tokens are added: ``add_special_tokens`` is accepted for
        compatibility with Hugging Face tokenizers and must be False).

        :raises ValueError: on a character outside the vocabulary
        """
        if add_special_tokens:
            raise ValueError("add_special_tokens must be False: CharTokenizer adds no special tokens")
        try:
            return [self._ids[char] for char in text]
        except KeyError as error:
            raise ValueError(
                f"text {text!r} has the character {error.args[0]!r}, which is not in the tokenizer's vocabulary "
                f"{self.characters!r}"
            ) from None

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """The text of ``ids``; special tokens are dropped unless ``skip_special_tokens`` is False.

        :raises ValueError: on an id outside ``[0, len(self))``
        """
        pieces = []
        for token_id in ids:
            token_id = int(token_id)
            if not 0 <= token_id < len(self._tokens):
                raise ValueError(f"ids has the id {token_id}, outside the vocabulary [0, {len(self._tokens)})")
            if token_id in (self.pad_token_id, self.eos_token_id) and skip_special_tokens:
                continue
            pieces.append(self._tokens[token_id])
        return "".join(pieces)

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return [self._tokens[int(token_id)] for token_id in ids]

    def save_pretrained(self, directory: str | os.PathLike[str]) -> None:
        """Write the vocabulary to ``directory/char_tokenizer.json`` (next to a model's ``save_pretrained`` files)."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        settings = {"characters": self.characters, "pad_token": self.pad_token, "eos_token": self.eos_token}
        (path / TOKENIZER_FILE).write_text(json.dumps(settings, indent=1))

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str]) -> CharTokenizer:
        """The tokenizer :meth:`save_pretrained` wrote into ``directory``."""
        file = Path(directory) / TOKENIZER_FILE
        if not file.is_file():
            raise ValueError(f"directory {str(directory)!r} has no {TOKENIZER_FILE} (see CharTokenizer.save_pretrained)")
        return cls(**json.loads(file.read_text()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and self._tokens == other._tokens

    def __hash__(self) -> int:
        return hash(tuple(self._tokens))

    def __repr__(self) -> str:
        return f"CharTokenizer(characters={self.characters!r})"


#: Files of which one is in a directory where a Hugging Face tokenizer was saved with ``save_pretrained``.
_HF_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.json")


def has_tokenizer(directory: str | os.PathLike[str]) -> bool:
    """Whether ``directory`` holds a saved tokenizer that :func:`load_tokenizer` can load (a ``CharTokenizer``'s file,
    or one of a Hugging Face tokenizer's files)."""
    path = Path(directory)
    return any((path / name).is_file() for name in (TOKENIZER_FILE, *_HF_TOKENIZER_FILES))


def load_tokenizer(directory: str | os.PathLike[str]) -> Any:
    """The tokenizer saved with a model: a :class:`CharTokenizer` where ``char_tokenizer.json`` exists, otherwise a
    Hugging Face tokenizer (``transformers.AutoTokenizer.from_pretrained``, e.g. a real GPT-2's, whose ``pad_token_id``
    is then set to its ``eos_token_id`` when it has none)."""
    if (Path(directory) / TOKENIZER_FILE).is_file():
        return CharTokenizer.from_pretrained(directory)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
