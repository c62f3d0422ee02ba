"""Unit-test fixtures (no Ray)."""

import pytest


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    # Tiny tensors gain nothing from intra-op threads, and on a busy CI box OpenMP wake-ups make
    # a 1 ms forward take 30 ms. Module scope: an autouse fixture is set up before the other
    # fixtures of its scope, so module fixtures that train (test_finetune.py's fine-tuning: 67 s
    # of 8 epochs with two threads at load 10) run single-threaded too. Restored afterwards so
    # other modules' tests see the default.
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
