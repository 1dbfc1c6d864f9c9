"""Kernel tests run the Triton kernels under the CPU interpreter unless a GPU is present.

`TRITON_INTERPRET` is read when a `@triton.jit` function is decorated: Triton's own library functions
(`tl.zeros`, ...) are decorated when `triton` is first imported, ours when a kernel module is. So the variable
is set here, before these tests import anything from Triton, and only if Triton is not imported yet: turning
it on after that would mix interpreted kernels with compiled library functions. When something imported Triton
earlier (e.g. `sentence_transformers` does), `kernel_cases.CAN_RUN_TRITON` is false and the kernel tests skip
with that reason; setting `TRITON_INTERPRET=1` in the environment or at the top of `tests/conftest.py` fixes
it. Only Triton reads the variable; the other test packages do not run Triton kernels.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

if not torch.cuda.is_available() and "TRITON_INTERPRET" not in os.environ and "triton" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
