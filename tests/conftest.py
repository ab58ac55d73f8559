"""Shared fixtures. PostgreSQL tests skip where no server runs, unless SB3PV_REQUIRE_POSTGRES=1 (set by .ci/run)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import torch as th

# Small MLPs on a 2-core machine: one torch thread per test process (pytest -n 2 runs two) is several times
# faster than torch's default, which oversubscribes the cores.
th.set_num_threads(1)

POSTGRES_SERVER = os.environ.get("SB3PV_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")


def _require_postgres() -> bool:
    return os.environ.get("SB3PV_REQUIRE_POSTGRES", "") not in ("", "0")


def _variants_on(base_name: str) -> list[str]:
    """The registry's names of the variants built on one host base (``VariantPPO``, ``MaskableVariantPPO``, ...)."""
    from sb3_ppo_variants import VARIANTS, algorithm

    return [name for name, cls in VARIANTS.items() if issubclass(cls, getattr(algorithm, base_name))]


@pytest.fixture(params=["clip", "kl", "adaptive_kl", "clip_kl"])
def model_class(request: pytest.FixtureRequest) -> type:
    """Stands for SB3's ``PPO`` in the ported SB3 tests: one run per variant (ids: clip, kl, adaptive_kl, clip_kl)."""
    from sb3_ppo_variants import VARIANTS

    assert _variants_on("VariantPPO") == ["clip", "kl", "adaptive_kl", "clip_kl"], "update the params above"
    return VARIANTS[request.param]


@pytest.fixture(params=["maskable_clip", "maskable_kl", "maskable_adaptive_kl", "maskable_clip_kl"])
def maskable_class(request: pytest.FixtureRequest) -> type:
    """Stands for sb3-contrib's ``MaskablePPO`` in the ported sb3-contrib tests: one run per variant on that host."""
    from sb3_ppo_variants import VARIANTS

    assert _variants_on("MaskableVariantPPO") == [
        "maskable_clip",
        "maskable_kl",
        "maskable_adaptive_kl",
        "maskable_clip_kl",
    ], "update the params above"
    return VARIANTS[request.param]


@pytest.fixture(params=["recurrent_clip", "recurrent_kl", "recurrent_adaptive_kl", "recurrent_clip_kl"])
def recurrent_class(request: pytest.FixtureRequest) -> type:
    """Stands for sb3-contrib's ``RecurrentPPO`` in the ported sb3-contrib tests: one run per variant on that host."""
    from sb3_ppo_variants import VARIANTS

    assert _variants_on("RecurrentVariantPPO") == [
        "recurrent_clip",
        "recurrent_kl",
        "recurrent_adaptive_kl",
        "recurrent_clip_kl",
    ], "update the params above"
    return VARIANTS[request.param]


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty database on the PostgreSQL server; dropped afterwards. Its URL is yielded."""
    try:
        import psycopg

        admin = psycopg.connect(f"{POSTGRES_SERVER}/postgres", autocommit=True, connect_timeout=5)
    except Exception as error:
        if _require_postgres():
            pytest.fail(f"PostgreSQL is required (SB3PV_REQUIRE_POSTGRES=1) but {POSTGRES_SERVER} is not reachable: {error}")
        pytest.skip(f"no PostgreSQL server at {POSTGRES_SERVER}: {error}")
    name = f"sb3pv_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{POSTGRES_SERVER}/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
