"""Without a GPU, Triton kernels run in Triton's CPU interpreter. The variable must be set
before ``triton`` decorates the kernels, i.e. before ``muonlib.kernels`` is first imported.

Under pytest-xdist (``make test-gpu`` runs up to eight workers) each worker, and each process
it starts, gets its share of the cores, as the runner gives its workers
(:func:`muonlib.runner.slots`): with a thread per core in every worker, eight workers on a
16-core GPU machine took 185 s for the MoE bias test, 1.4 s alone on two cores (two processes
of eight threads each on two cores take 11 s)."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

if (workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))) > 1:
    threads = max(1, (os.cpu_count() or 1) // workers)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))  # the processes a test starts read it
    torch.set_num_threads(threads)
