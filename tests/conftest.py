"""Shared test settings: small thread pools (tests run side by side on 2 cores) and seeds."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    torch.manual_seed(0)
