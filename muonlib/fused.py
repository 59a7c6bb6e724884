"""A Muon step of one parameter group as three Triton passes around the batched Newton-Schulz,
replayed as one CUDA graph.

:func:`muonlib.optim.muon_step` is the reference: the same maths in plain torch. Here the
memory traffic is that of :mod:`muonlib.kernels.muon_passes` (three passes, 32 bytes per
float32 weight), and the host's work per step is a few address comparisons and one graph
replay: no guards, no graph re-recording when gradients move, no copies of them.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict

import torch
from torch import Tensor

from .distributed import Shard
from .linalg import NORM_FLOOR, CoefficientSpec, coefficient_schedule, newton_schulz_iterations, normalization_safety

#: The dtype Muon's Newton-Schulz iterates in, fused or not (:func:`muonlib.optim.orthogonalize`'s
#: default): float16, for the reasons :func:`muonlib.linalg.newton_schulz` gives.
ITERATION_DTYPE = torch.float16
#: The parameter and gradient dtypes the passes handle; others take the reference step.
PASS_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def fusable(params: list[Tensor], grads: list[Tensor]) -> str | None:
    """Why these tensors cannot take the fused step, or ``None`` if they can: it needs contiguous
    parameters of one dtype in :data:`PASS_DTYPES` on one device, and gradients of one such dtype."""
    devices = {p.device for p in params}
    if len(devices) != 1:
        return f"the parameters are on several devices ({sorted(map(str, devices))})"
    for kind, tensors in (("parameters", params), ("gradients", grads)):
        dtypes = {t.dtype for t in tensors}
        if len(dtypes) != 1 or not dtypes <= set(PASS_DTYPES):
            return f"the {kind} have dtypes {sorted(map(str, dtypes))}; the passes need one of {[str(d) for d in PASS_DTYPES]}"
    if not all(p.is_contiguous() for p in params):
        return "some parameters are not contiguous"
    return None


class FusedMuonStep:
    """The Muon step of one parameter group, with its structure (shapes, Nesterov, the
    Newton-Schulz schedule, per-matrix learning-rate factors) fixed at construction.

    Each call runs, in order: the momentum pass, the normalisation pass (into one float16
    batch per wide shape), :func:`muonlib.linalg.newton_schulz_iterations` on each batch (into a
    second, fixed batch), and the update pass. On a GPU the first call runs them and records
    them as a CUDA graph; later calls replay it. The graph reads addresses from
    :class:`~muonlib.kernels.muon_passes.PassTables` and ``lr``, ``beta`` and ``weight_decay``
    from a small device tensor, so moving gradients, a learning-rate schedule or a reloaded
    state never needs a new recording.
    """

    def __init__(self, params: list[Tensor], lr_factors: list[float], nesterov: bool, steps: int,
                 coefficients: CoefficientSpec, cuda_graph: bool = True, eps: float = NORM_FLOOR,
                 shard: Shard | None = None):
        from .kernels import muon_passes  # imports Triton: only where a fused step is built

        self._passes = muon_passes
        self.nesterov = nesterov
        self.schedule = coefficient_schedule(coefficients, steps)
        self.safety = normalization_safety(coefficients)
        self.eps = eps
        self.param_dtype = params[0].dtype
        device = params[0].device
        self.device = device
        self.shard = shard  # several ranks: each iterates on its slice of every batch, then all gather
        self.cuda_graph = cuda_graph and device.type == "cuda" and shard is None  # no collectives in the graph
        slots: dict[tuple[int, int], list[int]] = defaultdict(list)  # wide shape -> parameters
        for i, p in enumerate(params):
            slots[tuple(sorted(p.shape[-2:]))].append(i)
        self.batches: list[tuple[Tensor, Tensor]] = []
        sources: list[Tensor | None] = [None] * len(params)
        results: list[Tensor | None] = [None] * len(params)
        for (rows, cols), members in slots.items():
            counts = [params[i].numel() // (rows * cols) for i in members]
            size = shard.padded(sum(counts)) if shard is not None else sum(counts)
            source, result = (torch.zeros(size, rows, cols, dtype=ITERATION_DTYPE, device=device) for _ in range(2))
            self.batches.append((source, result))
            for i, s, r in zip(members, source[: sum(counts)].split(counts), result[: sum(counts)].split(counts)):
                sources[i], results[i] = s, r
        self.tables = muon_passes.PassTables(params, sources, results, lr_factors)  # type: ignore[arg-type]
        self.scalars = torch.zeros(3, dtype=torch.float64, device=device)  # lr, beta, weight decay
        self._scalar_values: tuple[float, ...] = ()
        self._grad_dtype = params[0].dtype
        self._graph: torch.cuda.CUDAGraph | None = None

    def __call__(self, params: list[Tensor], grads: list[Tensor], buffers: list[Tensor],
                 lr: float, beta: float, weight_decay: float) -> None:
        # Triton launches and CUDA graphs use the current device: make it the parameters' for the call.
        with torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext():
            self._step(params, grads, buffers, lr, beta, weight_decay)

    def _step(self, params: list[Tensor], grads: list[Tensor], buffers: list[Tensor],
              lr: float, beta: float, weight_decay: float) -> None:
        grads = [g if g.is_contiguous() else g.contiguous() for g in grads]
        if grads[0].dtype != self._grad_dtype:
            self._grad_dtype = grads[0].dtype
            self._graph = None  # the passes are compiled for one gradient dtype
        self.tables.point_at(grads, buffers, params)
        values = (float(lr), float(beta), float(weight_decay))
        if values != self._scalar_values:
            self._passes.copy_to_device(self.scalars, torch.tensor(values, dtype=torch.float64))
            self._scalar_values = values
        if self._graph is not None:
            self._graph.replay()
            return
        self._run()
        if self.cuda_graph:  # recording executes nothing: this step was the eager run above
            self._graph = torch.cuda.CUDAGraph()
            # A stream of this GPU: torch's default capture stream belongs to whichever GPU first captured.
            with torch.cuda.graph(self._graph, stream=torch.cuda.Stream(self.device)):
                self._run()

    def _run(self) -> None:
        passes = self._passes
        passes.momentum_pass(self.tables, self.scalars, self._grad_dtype, self.nesterov)
        passes.normalize_pass(self.tables, self.scalars, self._grad_dtype, self.nesterov, self.safety, ITERATION_DTYPE, self.eps)
        if self.shard is None:
            for source, result in self.batches:
                newton_schulz_iterations(source, self.schedule, out=result)
        else:
            sources, results = zip(*self.batches)
            self.shard.orthogonalize(list(sources), lambda s, r: newton_schulz_iterations(s, self.schedule, out=r), list(results))
        passes.update_pass(self.tables, self.scalars, self.param_dtype, ITERATION_DTYPE)


__all__ = ["FusedMuonStep", "ITERATION_DTYPE", "PASS_DTYPES", "fusable"]
