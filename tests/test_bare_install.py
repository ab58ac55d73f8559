"""The algorithms work without the ``studies`` extra: an interpreter that refuses its packages imports every
variant and trains one (a stand-in for a fresh virtualenv with ``pip install sb3-ppo-variants``: that needs
PyPI and minutes; this needs neither)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: The studies extra's packages (and what they bring): none of them may be needed by the algorithms.
REFUSED = ("optuna", "rliable", "matplotlib", "psycopg", "pandas", "sqlalchemy", "tqdm", "rich", "arch")

SCRIPT = f"""
import importlib.abc, sys

REFUSED = {REFUSED!r}

class Hide(importlib.abc.MetaPathFinder):
    # finds what the wrapped finder finds, except the refused packages: to importers they are not installed

    def __init__(self, inner):
        self.inner = inner

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in REFUSED or not hasattr(self.inner, "find_spec"):
            return None
        return self.inner.find_spec(name, path, target)

assert not set(sys.modules) & set(REFUSED)
sys.meta_path[:] = [Hide(finder) for finder in sys.meta_path]
import torch
torch.set_num_threads(1)
import sb3_ppo_variants
from sb3_ppo_variants import VARIANTS
from sb3_ppo_variants.hyperparams import make_model
from sb3_ppo_variants.studies import registry  # the name registry is free of optional dependencies too

for name in VARIANTS:
    assert registry.algorithm_class(name) is VARIANTS[name]
model = make_model("clip_kl", "CartPole-v1", {{"n_steps": 64, "batch_size": 32, "n_epochs": 2}}, seed=0)
model.learn(256)
print("trained", type(model).__name__, model.num_timesteps)
print("loaded", sorted({{m.split(".")[0] for m in sys.modules}} & set(REFUSED)))
"""


def test_every_algorithm_imports_and_trains_without_the_studies_extra() -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trained ClipKLPPO 256" in result.stdout
    assert "loaded []" in result.stdout


def test_the_refusing_interpreter_does_refuse() -> None:
    """The check above could pass vacuously if the refusal did not work: importing optuna must fail there."""
    script = SCRIPT.split("import torch")[0] + "import optuna\n"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode != 0 and "ModuleNotFoundError: No module named 'optuna'" in result.stderr
