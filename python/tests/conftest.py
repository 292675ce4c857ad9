"""Shared setup: one thread (CI runs the suite beside nothing else, but the 2-core
machines slow down under OpenMP spin), float64 references."""
import pytest
import torch

import sgdx  # noqa: F401  (fails the whole run with a clear message when the package is missing)

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
