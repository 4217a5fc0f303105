"""Shared test set-up: repository paths, a seeded RNG, torch on fixed threads."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("COURSE_DEVICE", "cpu")  # the same answers on a GPU machine


def free_port() -> int:
    """A TCP port nobody listens on now (the OS picks it for a socket bound to port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT

# Notebooks the tests open themselves (the browser test's fixtures): not lessons for nbval to run.
collect_ignore_glob = ["fixtures_*/*.ipynb"]
