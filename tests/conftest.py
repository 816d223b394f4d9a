"""Shared fixtures, and `--threads N`: the suite with N torch threads (and OMP_NUM_THREADS=N for the
processes tests start), so comparisons whose tolerances derive from float32 rounding can be checked
under different reduction orders: `python -m pytest --threads 1` and `--threads 2`. A config's own
`threads=` setting still wins inside `fit`."""

import os

import pytest


def pytest_addoption(parser):
    parser.addoption("--threads", type=int, default=None, help="torch threads for the test process and its children")


def pytest_configure(config):
    n = config.getoption("--threads")
    if n:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(n)
        import torch
        torch.set_num_threads(n)


@pytest.fixture(scope="session")
def warm(tmp_path_factory):
    """A tiny model SFT'd for 150 steps on 1-operation sums: groups then have mixed accuracy."""
    from tests.warm import train_warm
    return train_warm(tmp_path_factory.mktemp("warm"))
