"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

# --------------------------------------------------------------------------- gradient tests
# (tests/test_vjp_rules.py, tests/test_driver.py, tests/test_fixtures.py)

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


@pytest.fixture
def rng() -> np.random.Generator:
    """A fresh seeded generator per test: results never depend on test order."""
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """The checked-in fixture models written by tools/make_models.py."""
    return MODELS_DIR

# --------------------------------------------------------------------------- end gradient tests
