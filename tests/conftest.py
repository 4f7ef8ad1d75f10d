"""Fixtures shared by test files."""

import pytest


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """A private-model cache for the module (``ATOMSCORE_KIM_MODELS_DIR``), never ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        d = tmp_path_factory.mktemp("kim-models")
        mp.setenv("ATOMSCORE_KIM_MODELS_DIR", str(d))
        yield d
