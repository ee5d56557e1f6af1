"""Shared fixtures: the default offline model, trained once and then loaded from the cache."""
import pytest


@pytest.fixture(scope="session")
def learn():
    """The course's default Learner (offline: compact_cnn on SynthPets, from the on-disk cache)."""
    from course_utils.model import get_learner
    return get_learner(online=False)   # tests never download, whatever $COURSE_ONLINE says
