"""tests/quant run torch single-threaded: on the shared 2-core CI machine, torch's two intra-op threads
stall each other (measured: a 256-token SmolLM2 forward 1.1 s on 1 thread vs 7-13 s on 2 under load)."""

import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
