"""Without a GPU, Triton kernels run in Triton's CPU interpreter. The variable must be set
before ``triton`` decorates the kernels, i.e. before ``muonlib.kernels`` is first imported."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
