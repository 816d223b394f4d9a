import pytest


@pytest.fixture(scope="session")
def warm(tmp_path_factory):
    """A tiny model SFT'd for 150 steps on 1-operation sums: groups then have mixed accuracy."""
    from tests.warm import train_warm
    return train_warm(tmp_path_factory.mktemp("warm"))
