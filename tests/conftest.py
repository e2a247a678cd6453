"""Settings every test shares: one torch thread, and property tests that draw the same examples
on every run (so CI cannot fail at random).

- Small models run fastest on one intra-op thread on a shared CPU; more threads only fight over
  the cores (measured on the project's 2-core machine).
- Hypothesis profiles: ``ci`` (the default) is derandomised: examples come from a fixed seed
  derived from each test, and no example database is read or written, so every run of the
  suite tests the same cases. ``explore`` draws fresh random examples (use it to hunt for new
  counterexamples, then pin any it finds with ``@example``): ``HYPOTHESIS_PROFILE=explore``.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
settings.register_profile("explore", derandomize=False, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
