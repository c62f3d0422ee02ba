"""Unit-test fixtures (no Ray)."""

import pytest


@pytest.fixture(autouse=True)
def single_thread():
    # Tiny tensors gain nothing from intra-op threads, and on a busy CI box OpenMP wake-ups make
    # a 1 ms forward take 30 ms. Restored afterwards so other tests see the default.
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
