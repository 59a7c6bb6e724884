"""Muon and Shampoo as ``torch.optim.Optimizer`` classes, and the parameter routing that
decides which weights they may touch.

The maths lives in small pure functions (:func:`momentum_directions`,
:func:`orthogonalize`, :func:`adjusted_lr`, :func:`inverse_root`); the classes only keep
state and apply updates.
"""

from __future__ import annotations

import fnmatch
import math
from collections import ChainMap, defaultdict
from typing import Callable, Iterable, Literal, Sequence

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from .distributed import Shard, is_sharded, orthogonalize_sharded
from .fused import ITERATION_DTYPE, FusedMuonStep, fusable
from .kernels import interpreting
from .linalg import NORM_FLOOR, NS_STEPS, CoefficientSpec, frobenius_scaled, msign, msign_by_gram, newton_schulz, rms_scaled

AdjustLR = Literal["match_rms_adamw", "original", "dynamic_rms"] | None
#: the RMS of an AdamW update, which "match_rms_adamw" gives Muon's updates (Moonlight)
ADAMW_RMS = 0.2
#: how a Muon update is orthogonalised: Newton-Schulz, exact SVD, or not at all ("frobenius":
#: the momentum at the orthogonalised update's Frobenius norm, an ablation)
Method = Literal["newton_schulz", "svd", "frobenius"]
METHODS = ("newton_schulz", "svd", "frobenius")
ADAMW_BETAS = (0.9, 0.95)  # the paper's AdamW settings, also used for Muon's auxiliary AdamW


# --------------------------------------------------------------------------- maths


def momentum_directions(grads: list[Tensor], buffers: list[Tensor], beta: float, nesterov: bool) -> list[Tensor]:
    """Update the EMA momenta ``M <- beta M + (1 - beta) G`` in place (eq. 3) and return the
    directions to orthogonalise: the ``M`` themselves, or with Nesterov the look-ahead
    ``(1 - beta) G + beta M``. The gradients are never modified. One multi-tensor kernel
    per operation instead of one launch per parameter."""
    grads = [g.to(b.dtype) for g, b in zip(grads, buffers)]
    torch._foreach_lerp_(buffers, grads, 1 - beta)
    return torch._foreach_lerp(grads, buffers, beta) if nesterov else list(buffers)


def orthogonalize(
    updates: list[Tensor],
    method: Method = "newton_schulz",
    steps: int = NS_STEPS,
    coefficients: CoefficientSpec = "muon",
    dtype: torch.dtype = ITERATION_DTYPE,
    eps: float = NORM_FLOOR,
    shard: Shard | None = None,
) -> list[Tensor]:
    """``msign`` of each update (eq. 4), by Newton-Schulz (each matrix divided by its norm, or
    by ``eps`` if that is larger) or exact SVD; or, for the ablation that drops it, each
    update scaled to ``msign``'s Frobenius norm (``"frobenius"``).

    Each update (a matrix, or a 3D stack of experts, orthogonalised per expert) is turned
    wide (``msign(G^T) = msign(G)^T``), and all those of the same wide shape are
    concatenated into one batch: on a GPU a 768-wide Newton-Schulz is launch-bound, so one
    call per shape instead of one per matrix is the largest single saving, and a
    ``3072 x 768`` matrix joins the batch of the ``768 x 3072`` ones. Newton-Schulz results
    come back in ``dtype``, the others in float32 (float64 for float64 input). With a
    :class:`muonlib.distributed.Shard` each rank orthogonalises its slice of every batch and
    the slices are all-gathered: every rank gets every result.
    """
    if method not in METHODS:
        raise ValueError(f"orthogonalize must be one of {METHODS}, got {method!r}")

    def solve(batch: Tensor) -> Tensor:
        if method == "svd":  # float64 stays the reference SVD; lower precision takes the GPU-fast exact route
            return msign(batch) if batch.dtype == torch.float64 else msign_by_gram(batch)
        if method == "frobenius":
            return frobenius_scaled(batch, eps)
        return newton_schulz(batch, steps=steps, coefficients=coefficients, dtype=dtype, eps=eps)

    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, u in enumerate(updates):
        groups[(*sorted(u.shape[-2:]), u.device)].append(i)
    batches, sizes = [], []
    for (p, q, _), indices in groups.items():
        wide = [_as_wide(updates[i]).reshape(-1, p, q) for i in indices]
        batches.append(wide[0] if len(wide) == 1 else torch.cat(wide))
        sizes.append([w.size(0) for w in wide])
    if shard is None:
        results = [solve(batch) for batch in batches]
    else:  # pad every batch to equal slices; the padding is zeros, whose msign is zero
        batches = [b if shard.padded(b.size(0)) == b.size(0) else torch.cat([b, b.new_zeros(shard.padded(b.size(0)) - b.size(0), *b.shape[1:])])
                   for b in batches]
        results = [torch.empty_like(b, dtype=(torch.float64 if b.dtype == torch.float64 else torch.float32) if method != "newton_schulz" else dtype)
                   for b in batches]
        shard.orthogonalize(batches, lambda source, result: result.copy_(solve(source)), results)
    out: list[Tensor | None] = [None] * len(updates)
    for ((p, q, _), indices), result, counts in zip(groups.items(), results, sizes):
        for i, r in zip(indices, result[: sum(counts)].split(counts)):
            shape = updates[i].shape
            r = r.reshape(*shape[:-2], p, q)
            out[i] = r.mT if shape[-2] > shape[-1] else r
    return out  # type: ignore[return-value]


def _as_wide(G: Tensor) -> Tensor:
    return G.mT if G.size(-2) > G.size(-1) else G


def muon_directions(
    grads: list[Tensor],
    buffers: list[Tensor],
    beta: float,
    nesterov: bool,
    method: Method = "newton_schulz",
    steps: int = NS_STEPS,
    coefficients: CoefficientSpec = "muon",
    eps: float = NORM_FLOOR,
    shard: Shard | None = None,
) -> list[Tensor]:
    """Everything in a Muon step but the parameter update: momentum (eq. 3), look-ahead and
    orthogonalisation (eq. 4). Updates ``buffers`` in place."""
    return orthogonalize(momentum_directions(grads, buffers, beta, nesterov), method, steps, coefficients, eps=eps, shard=shard)


def apply_updates(
    params: list[Tensor], directions: list[Tensor], lr: float, weight_decay: float, lr_factors: Sequence[float]
) -> None:
    """``W <- (1 - lr weight_decay) W - lr factor D`` for each parameter, in place (eq. 5 with
    decoupled weight decay): each operation rounds to the parameter's dtype, the scalars do not
    (a float32 ``1 - lr wd`` rounded to bfloat16 would be 1). ``factor`` is :func:`adjusted_lr`
    of the parameter's shape at ``lr = 1`` (every rule there is linear in ``lr``)."""
    for p, d, factor in zip(params, directions, lr_factors):
        if weight_decay:
            p.mul_(1 - lr * weight_decay)
        p.sub_(d.to(p.dtype) * (lr * factor))


def muon_step(
    params: list[Tensor],
    grads: list[Tensor],
    buffers: list[Tensor],
    lr: float,
    beta: float,
    nesterov: bool,
    weight_decay: float,
    lr_factors: Sequence[float],
    method: Method = "newton_schulz",
    steps: int = NS_STEPS,
    coefficients: CoefficientSpec = "muon",
    eps: float = NORM_FLOOR,
    shard: Shard | None = None,
    update_rms: float | None = None,
) -> None:
    """One Muon step on one parameter group, in place: :func:`muon_directions` (each then
    scaled to ``update_rms`` if given: ``adjust_lr="dynamic_rms"``), then :func:`apply_updates`.
    The reference for :class:`muonlib.fused.FusedMuonStep`, which :class:`Muon` runs instead
    on a GPU."""
    directions = muon_directions(grads, buffers, beta, nesterov, method, steps, coefficients, eps, shard)
    if update_rms is not None:
        directions = [rms_scaled(d, update_rms, eps) for d in directions]
    apply_updates(params, directions, lr, weight_decay, lr_factors)


#: Whether :class:`Muon`'s fused step replays a CUDA graph after its first call: at XS-L widths
#: a step is launch-bound, and one replay replaces about a hundred launches.
CUDA_GRAPHS = True


def adjusted_lr(lr: float, shape: torch.Size | tuple[int, ...], adjust_lr: AdjustLR) -> float:
    """Learning rate applied to the orthogonalised update of an ``m x n`` matrix (the last
    two dimensions of ``shape``; ``m`` = fan-out, as in ``nn.Linear.weight``).

    * ``"match_rms_adamw"``: ``lr * 0.2 * sqrt(max(m, n))`` (Moonlight, arXiv 2502.16982).
      ``msign`` of an ``m x n`` matrix has RMS ``1 / sqrt(max(m, n))``, so the update then has
      RMS about 0.2, the typical RMS of an AdamW update: ``lr`` means the same as AdamW's and
      one learning rate can serve both (the paper's Algorithm 1 writes ``0.2 sqrt(n)``).
    * ``"original"``: ``lr * sqrt(max(1, m / n))`` (Keller Jordan): ``lr`` is then roughly
      the spectral norm of the update, and typical values are ~0.02, not AdamW's ~1e-3.
    * ``None``: ``lr`` unchanged.
    * ``"dynamic_rms"`` (Muon only): ``lr`` unchanged, and :class:`Muon` scales each update to
      RMS 0.2 itself at every step: what ``"match_rms_adamw"`` assumes, measured per layer
      (an update short of full rank, or Newton-Schulz's singular values away from 1, change
      its RMS). The paper's Table 2 lists a "per-layer dynamic RMS" without defining it;
      this is our reading.
    """
    m, n = shape[-2], shape[-1]
    if adjust_lr == "match_rms_adamw":
        return lr * ADAMW_RMS * math.sqrt(max(m, n))
    if adjust_lr == "original":
        return lr * math.sqrt(max(1.0, m / n))
    if adjust_lr is None or adjust_lr == "dynamic_rms":
        return lr
    raise ValueError(f"adjust_lr must be 'match_rms_adamw', 'original', 'dynamic_rms' or None, got {adjust_lr!r}")


def inverse_root(M: Tensor, p: int, eps: float) -> Tensor:
    """``(M + eps I)^(-1/p)`` of a symmetric positive semi-definite ``M`` by eigendecomposition.

    Eigenvalues below the rounding level of the largest (``n * machine eps * w_max``) are
    raised to it: the null space of a rank-deficient ``M`` (e.g. ``G^T G`` of a wide ``G``)
    holds rounding noise of either sign, and a root of it would amplify that noise without
    bound when ``eps`` is tiny.
    """
    n = M.size(-1)
    w, Q = torch.linalg.eigh(M + eps * torch.eye(n, dtype=M.dtype, device=M.device))
    floor = (n * torch.finfo(w.dtype).eps * w.amax(dim=-1, keepdim=True)).clamp_min(torch.finfo(w.dtype).tiny)
    return (Q * torch.maximum(w, floor).pow(-1.0 / p).unsqueeze(-2)) @ Q.mT


# --------------------------------------------------------------------------- optimizers

_UNSET = object()


def resolve_adjust_lr(adjust_lr: AdjustLR | object, adjust_lr_fn: str | None | object) -> AdjustLR:
    """Muon's scale rule from ``adjust_lr`` (ours: ``None`` leaves ``lr`` unchanged) or
    ``adjust_lr_fn`` (torch.optim.Muon's name and meaning: ``None`` is ``"original"``)."""
    if adjust_lr is not _UNSET and adjust_lr_fn is not _UNSET:
        raise ValueError("pass adjust_lr (muonlib's) or adjust_lr_fn (torch.optim.Muon's), not both: "
                         "they mean different things by None")
    if adjust_lr_fn is not _UNSET:
        adjust_lr = "original" if adjust_lr_fn is None else adjust_lr_fn
    elif adjust_lr is _UNSET:
        adjust_lr = "match_rms_adamw"
    adjusted_lr(1.0, (1, 1), adjust_lr)  # validates it
    return adjust_lr  # type: ignore[return-value]



class Muon(Optimizer):
    """MomentUm Orthogonalized by Newton-Schulz, eqs. (3)-(5) and Algorithm 1 of the paper.

    For each hidden weight matrix ``W`` (2D, a 3D stack of experts, or a convolution filter)::

        M <- beta M + (1 - beta) G                  (Nesterov: D = (1 - beta) G + beta M, else D = M)
        W <- W - lr * weight_decay * W              (decoupled, with the unadjusted lr)
        W <- W - adjusted_lr(lr, W.shape) * msign~(D)

    where ``msign~`` is ``ns_steps`` Newton-Schulz iterations with ``ns_coefficients`` (or the
    exact SVD with ``orthogonalize="svd"``, or none with ``orthogonalize="frobenius"``: the
    momentum scaled to ``msign``'s Frobenius norm, for ablations). A convolution filter
    ``(out, in, kh, kw)`` is orthogonalised as the matrix ``(out, in * kh * kw)``, as Keller
    Jordan's Muon does; it must be contiguous, since the update goes through a view.

    **What ``lr`` means.** With the default ``adjust_lr="match_rms_adamw"`` the update of an
    ``m x n`` matrix is scaled by ``0.2 sqrt(max(m, n))``, which gives it AdamW's typical RMS:
    ``lr`` is on AdamW's scale, hence the default ``1e-3``. Code written for another Muon
    converts as follows (see :func:`adjusted_lr`):

    * ``torch.optim.Muon(lr=x)`` (``adjust_lr_fn=None`` means ``"original"`` there): pass the
      same ``adjust_lr_fn``, accepted here with torch's meaning, or ``adjust_lr="original"``
      and ``lr=x``;
    * Keller Jordan's ``Muon(lr=0.02)``: ``adjust_lr="original"``, ``lr=0.02``; or, keeping
      the default scale, ``lr = 0.02 sqrt(max(1, m/n)) / (0.2 sqrt(max(m, n)))`` (about
      ``3.6e-3`` for a ``768 x 768`` matrix).

    ``eps`` is the smallest norm a direction is divided by before Newton-Schulz (torch's name;
    its default ``1e-7`` under-scales tiny gradients, so ours only guards an exact zero).

    **Several GPUs.** Under data parallelism (``torch.distributed`` initialised, e.g. by
    ``torchrun``) every rank holds the same averaged gradients. With ``distributed=True``
    (what :func:`muonlib.train.train` passes under DDP) each rank then orthogonalises an equal
    slice of every shape batch and the slices are all-gathered
    (:class:`muonlib.distributed.Shard`); momentum and updates stay replicated, so every rank
    ends the step with the same weights and state as a single process would. It is not the
    default: ranks whose gradients differ (independent models) would mix their updates.
    Parameters FSDP2 shards (``fully_shard``, DTensors) need no option: momentum stays in
    pieces like them, and each matrix is gathered whole on one rank, orthogonalised there and
    scattered back (``muonlib.distributed.orthogonalize_sharded``): the single-process
    step, with each rank doing a balanced share of the Newton-Schulz work.

    Use Muon only for hidden matrices; :func:`build_optimizer` routes embeddings, the
    output head, norms and biases to AdamW. The momentum buffer is kept in float32 even for
    low-precision parameters. ``step`` makes no host synchronisation.

    ``fused`` (default: where the parameters are on a GPU and :func:`muonlib.fused.fusable`)
    runs each group's step as :class:`muonlib.fused.FusedMuonStep`: three Triton memory passes
    around the batched Newton-Schulz, replayed as one CUDA graph (see :data:`CUDA_GRAPHS`) that
    reads gradients wherever they are. ``fused=False`` runs :func:`muon_step`, the plain torch
    reference; ``fused=True`` raises where the fused step cannot run (on a CPU it then needs
    ``TRITON_INTERPRET=1``, which is how the tests run it).

    A drop-in for ``torch.optim`` code::

        >>> import torch
        >>> W = torch.nn.Parameter(torch.randn(64, 32))
        >>> opt = Muon([W], lr=1e-3, weight_decay=0.1)
        >>> W.grad = torch.randn(64, 32)
        >>> opt.step()
        >>> sorted(opt.state[W])
        ['momentum_buffer']
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 1e-3,
        momentum: float = 0.95,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        ns_steps: int = NS_STEPS,
        ns_coefficients: CoefficientSpec = "muon",
        adjust_lr: AdjustLR | object = _UNSET,
        orthogonalize: Method = "newton_schulz",
        fused: bool | None = None,
        *,
        adjust_lr_fn: str | None | object = _UNSET,
        eps: float = NORM_FLOOR,
        distributed: bool = False,
    ):
        if not (lr >= 0 and math.isfinite(lr)) or not (weight_decay >= 0 and math.isfinite(weight_decay)):
            raise ValueError(f"lr and weight_decay must be finite and >= 0, got lr={lr}, weight_decay={weight_decay}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if not (isinstance(ns_steps, int) and ns_steps >= 1):
            raise ValueError(f"ns_steps must be an integer >= 1 (0 would skip the orthogonalisation), got {ns_steps!r}")
        if not (eps > 0 and math.isfinite(eps)):
            raise ValueError(f"eps must be a small positive number, got {eps}")
        if orthogonalize not in METHODS:
            raise ValueError(f"orthogonalize must be one of {METHODS}, got {orthogonalize!r}")
        adjust_lr = resolve_adjust_lr(adjust_lr, adjust_lr_fn)
        defaults = dict(
            lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, ns_steps=ns_steps,
            ns_coefficients=ns_coefficients, adjust_lr=adjust_lr, orthogonalize=orthogonalize, fused=fused, eps=eps,
            distributed=distributed,
        )
        super().__init__(params, defaults)
        self._fused_steps: dict[int, tuple[tuple, FusedMuonStep]] = {}
        self._matrices: dict[Tensor, Tensor] = {}  # convolution filter -> its matrix view, made once

    def add_param_group(self, param_group: dict) -> None:
        """Every group (the constructor's too) is checked here, before it joins, not at its first step."""
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        for p in params:
            if p.ndim < 2:
                raise ValueError(
                    f"Muon updates matrices, stacks of them and convolution filters; got a parameter of shape "
                    f"{tuple(p.shape)}. Give vectors and scalars to AdamW (build_optimizer does this)."
                )
            self._matrix(p)  # a filter that cannot be viewed as a matrix is refused now
        super().add_param_group({**param_group, "params": params})

    @staticmethod
    def _matrix(p: Tensor) -> Tensor:
        """What Muon updates: the parameter itself, or a convolution filter viewed as ``(out, rest)``."""
        if p.ndim <= 3:
            return p
        if not p.is_contiguous():
            raise ValueError(f"Muon orthogonalises a convolution filter {tuple(p.shape)} through a matrix view, which needs "
                             f"a contiguous parameter (channels_last?): make it contiguous, or route it to AdamW "
                             f"(build_optimizer(..., overrides={{NAME: 'adamw'}}))")
        return p.view(p.size(0), -1)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index, group in enumerate(self.param_groups):
            for key, value in (("eps", NORM_FLOOR), ("distributed", False)):
                group.setdefault(key, value)  # a state dict saved before these options existed
            with_grads = [p for p in group["params"] if p.grad is not None]
            if sharded := [p for p in with_grads if is_sharded(p)]:
                self._sharded_step(group, sharded)
                with_grads = [p for p in with_grads if not is_sharded(p)]
            if not with_grads:
                continue
            buffers = [self._momentum_buffer(p) for p in with_grads]
            params = [self._matrices.setdefault(p, self._matrix(p)) if p.ndim > 3 else p for p in with_grads]
            grads = [p.grad if p.ndim <= 3 else p.grad.reshape(m.shape) for p, m in zip(with_grads, params)]
            shard = self._shard(group)
            if self._takes_fused_step(group, params, grads):
                self._fused_step(index, group, params, shard)(params, grads, buffers, group["lr"], group["momentum"], group["weight_decay"])
                continue
            muon_step(
                params, grads, buffers, group["lr"], group["momentum"], group["nesterov"], group["weight_decay"],
                [adjusted_lr(1.0, p.shape, group["adjust_lr"]) for p in params],
                group["orthogonalize"], group["ns_steps"], group["ns_coefficients"], group["eps"], shard,
                self._update_rms(group),
            )
        return loss

    def _sharded_step(self, group: dict, params: list[Tensor]) -> None:
        """The step for parameters FSDP2 shards: momentum and the update on this rank's pieces,
        each matrix orthogonalised whole by one rank (``muonlib.distributed.orthogonalize_sharded``)."""
        if group["fused"]:
            raise ValueError("Muon(fused=True) cannot fuse the step of parameters sharded by FSDP2; pass fused=None")
        if any(p.ndim > 3 for p in params):
            raise ValueError("Muon cannot view a convolution filter sharded by FSDP2 as a matrix: route it to AdamW, "
                             "or keep it out of fully_shard")
        grads = [p.grad.to_local() for p in params]
        buffers = [self._momentum_buffer(p).to_local() for p in params]
        directions = momentum_directions(grads, buffers, group["momentum"], group["nesterov"])
        update_rms = self._update_rms(group)

        def solve(wholes: list[Tensor]) -> list[Tensor]:
            updates = orthogonalize(wholes, group["orthogonalize"], group["ns_steps"], group["ns_coefficients"], eps=group["eps"])
            return updates if update_rms is None else [rms_scaled(u, update_rms, group["eps"]) for u in updates]

        apply_updates([p.to_local() for p in params], orthogonalize_sharded(directions, params, solve), group["lr"],
                      group["weight_decay"], [adjusted_lr(1.0, p.shape, group["adjust_lr"]) for p in params])

    @staticmethod
    def _update_rms(group: dict) -> float | None:
        """The RMS every update is scaled to under ``adjust_lr="dynamic_rms"``, else ``None``."""
        return ADAMW_RMS if group["adjust_lr"] == "dynamic_rms" else None

    @staticmethod
    def _shard(group: dict) -> Shard | None:
        if not group["distributed"]:
            return None
        shard = Shard.current()
        if shard is None:
            raise ValueError("Muon(distributed=True) needs an initialised torch.distributed process group of several "
                             "ranks (launch with torchrun); leave distributed=False in a single process")
        return shard

    @staticmethod
    def _takes_fused_step(group: dict, params: list[Tensor], grads: list[Tensor]) -> bool:
        if group["fused"] is False:
            return False
        reason = fusable(params, grads)
        if reason is None and group["orthogonalize"] != "newton_schulz":
            reason = f"orthogonalize={group['orthogonalize']!r} (it fuses Newton-Schulz only)"
        if reason is None and group["adjust_lr"] == "dynamic_rms":
            reason = "adjust_lr='dynamic_rms' (it fuses static scales only)"
        if reason is None and not params[0].is_cuda and (group["fused"] is None or not interpreting()):
            reason = ("the parameters are on a CPU, where the Triton passes run only in Triton's interpreter "
                      "(TRITON_INTERPRET=1, set before muonlib is imported)" if group["fused"] else "the parameters are on a CPU")
        if reason is not None and group["fused"]:
            raise ValueError(f"Muon(fused=True) cannot fuse this step: {reason}. Pass fused=None to fall back to the reference step.")
        return reason is None

    def _fused_step(self, index: int, group: dict, params: list[Tensor], shard: Shard | None) -> FusedMuonStep:
        key = (tuple(map(id, params)), params[0].dtype, group["nesterov"], group["ns_steps"],
               repr(group["ns_coefficients"]), group["adjust_lr"], group["eps"], shard)
        if self._fused_steps.get(index, (None,))[0] != key:
            factors = [adjusted_lr(1.0, p.shape, group["adjust_lr"]) for p in params]
            self._fused_steps[index] = key, FusedMuonStep(
                params, factors, group["nesterov"], group["ns_steps"], group["ns_coefficients"], CUDA_GRAPHS, group["eps"], shard)
        return self._fused_steps[index][1]

    def _momentum_buffer(self, p: Tensor) -> Tensor:
        state = self.state[p]
        dtype = torch.float32 if p.dtype in (torch.float16, torch.bfloat16) else p.dtype
        if "momentum_buffer" not in state and is_sharded(p):  # sharded like the parameter
            state["momentum_buffer"] = torch.zeros_like(p, dtype=dtype)
        elif "momentum_buffer" not in state:  # shaped like what Muon updates (a filter's matrix)
            state["momentum_buffer"] = torch.zeros(self._matrix(p).shape, dtype=dtype, device=p.device)
        elif state["momentum_buffer"].dtype != dtype:  # load_state_dict casts state to the parameter's dtype
            state["momentum_buffer"] = state["momentum_buffer"].to(dtype)
        if is_sharded(p) and not is_sharded(state["momentum_buffer"]):  # a whole buffer loaded from a full state dict
            from torch.distributed.tensor import distribute_tensor

            state["momentum_buffer"] = distribute_tensor(state["momentum_buffer"], p.device_mesh, p.placements)
        return state["momentum_buffer"]


class Shampoo(Optimizer):
    """Full-matrix Shampoo for matrices (and stacks of them), the reference for eq. (11).

    With ``L = G G^T`` and ``R = G^T G`` (or their EMAs with factor ``beta``)::

        W <- W - lr * (L + eps I)^(-1/4) G (R + eps I)^(-1/4)

    The inverse **fourth** roots are those of a matrix (order-2 tensor) Shampoo. With
    ``beta = 0`` and ``eps -> 0`` the update of a full-rank ``G`` is exactly ``msign(G)``:
    ``(U S^2 U^T)^(-1/4) U S V^T (V S^2 V^T)^(-1/4) = U V^T``. The preconditioners are
    computed by eigendecomposition in ``precision`` (float64 by default: this class is a
    reference, not a fast optimizer). No momentum, no grafting. With ``beta > 0`` the state
    holds ``L`` and ``R``.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 0.02,
        beta: float = 0.0,
        eps: float = 1e-12,
        weight_decay: float = 0.0,
        adjust_lr: AdjustLR = None,
        precision: torch.dtype = torch.float64,
    ):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        if adjust_lr == "dynamic_rms":
            raise ValueError("adjust_lr='dynamic_rms' is Muon's (it scales the orthogonalised update); Shampoo takes "
                             "'match_rms_adamw', 'original' or None")
        adjusted_lr(1.0, (1, 1), adjust_lr)
        defaults = dict(lr=lr, beta=beta, eps=eps, weight_decay=weight_decay, adjust_lr=adjust_lr, precision=precision)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim not in (2, 3):
                    raise ValueError(f"Shampoo here preconditions matrices (2D/3D); got shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                G = p.grad.to(group["precision"])
                L, R = G @ G.mT, G.mT @ G
                if group["beta"] > 0:
                    state = self.state[p]
                    if "L" not in state:
                        state["L"], state["R"] = torch.zeros_like(L), torch.zeros_like(R)
                    L = state["L"].lerp_(L, 1 - group["beta"])
                    R = state["R"].lerp_(R, 1 - group["beta"])
                update = inverse_root(L, 4, group["eps"]) @ G @ inverse_root(R, 4, group["eps"])
                lr = group["lr"]
                if group["weight_decay"]:
                    p.mul_(1 - lr * group["weight_decay"])
                p.add_(update.to(p.dtype), alpha=-adjusted_lr(lr, p.shape, group["adjust_lr"]))
        return loss


class ChildStates(ChainMap):
    """The children's per-parameter states seen as one mapping. A plain ``ChainMap`` would ask
    each child's state (a ``defaultdict``) in turn, and the first would invent an empty state
    for every parameter it does not own."""

    def __getitem__(self, key):
        for mapping in self.maps:
            if key in mapping:
                return mapping[key]
        return self.__missing__(key)


class HybridOptimizer(Optimizer):
    """Several optimizers over disjoint parameters, presented as one.

    ``param_groups`` is the concatenation of the children's groups (the same dicts), so an
    LR scheduler that scales ``group["lr"]`` drives every child; ``state_dict`` nests the
    children's. Each group carries an ``"optimizer"`` key naming its child.
    """

    def __init__(self, optimizers: dict[str, Optimizer]):
        self.optimizers = dict(optimizers)
        for name, opt in self.optimizers.items():
            for group in opt.param_groups:
                group["optimizer"] = name
        self._linked = False  # Optimizer.__init__ adds the children's groups through add_param_group
        super().__init__([g for opt in self.optimizers.values() for g in opt.param_groups], defaults={})
        self._link_children()
        self._linked = True

    def add_param_group(self, param_group: dict) -> None:
        """Add a group to the child named by its ``"optimizer"`` key (``"adamw"``, ``"muon"``,
        ...): a group no child owns would never be updated."""
        if not self._linked:
            return super().add_param_group(param_group)
        name = param_group.get("optimizer")
        if name not in self.optimizers:
            raise ValueError(f"say which optimizer updates the new group: param_group['optimizer'] must be one of "
                             f"{sorted(self.optimizers)}, got {name!r}")
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        owned = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in owned for p in params):
            raise ValueError("some parameters of the new group are already updated by this optimizer: two optimizers "
                             "would update them")
        self.optimizers[name].add_param_group({**param_group, "params": params})
        self._link_children()

    def _link_children(self) -> None:
        # Children's load_state_dict replaces their group and state dicts: point at the new ones.
        self.param_groups = [g for opt in self.optimizers.values() for g in opt.param_groups]
        self.state = ChildStates(*(opt.state for opt in self.optimizers.values()))  # type: ignore[assignment]

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One step of every inner optimizer, after ``closure`` (if given) recomputes the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers.values():
            opt.step()
        return loss

    def state_dict(self) -> dict:
        """``{"optimizers": {name: that optimizer's state_dict()}}``, one entry per inner optimizer."""
        return {"optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()}}

    def load_state_dict(self, state_dict: dict) -> None:
        """Load what :meth:`state_dict` returned; refused if it holds other inner optimizers."""
        saved = state_dict.get("optimizers", {})
        if set(saved) != set(self.optimizers):
            raise ValueError(
                f"checkpoint holds optimizers {sorted(saved)} but this one has {sorted(self.optimizers)}: "
                "it was saved for a different optimizer configuration"
            )
        for name, opt in self.optimizers.items():
            opt.load_state_dict(saved[name])
        self._link_children()

    def __repr__(self) -> str:
        inner = ",\n".join(f"  {name}: {opt!r}".replace("\n", "\n  ") for name, opt in self.optimizers.items())
        return f"HybridOptimizer(\n{inner}\n)"


# --------------------------------------------------------------------------- routing

HEAD_NAMES = ("lm_head", "head", "output", "unembed")
ROLES = ("hidden", "embedding", "head", "router", "vector")


def classify_parameters(model: nn.Module, head_names: Iterable[str] = HEAD_NAMES) -> dict[str, list[tuple[str, Tensor]]]:
    """Sort a model's parameters by role: ``hidden`` matrices (Muon's), ``embedding``,
    ``head`` (the output projection to the vocabulary, tied or not), ``router`` (MoE
    routing logits) and ``vector`` (norm gains, biases, scalars).

    ``ndim == 2`` alone cannot tell a hidden matrix from an embedding or a head, so roles
    come from the owning module: an ``nn.Embedding``; a module named in ``head_names`` or an
    ``nn.Linear`` whose output size is the vocabulary of an embedding; a module whose class
    sets ``muon_role = "router"``. A tied weight counts as an embedding.
    """
    head_names = set(head_names)
    vocab_sizes = {m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding)}
    role_of: dict[int, str] = {}
    for module_name, module in model.named_modules():
        leaf = module_name.rsplit(".", 1)[-1]
        if isinstance(module, nn.Embedding):
            role = "embedding"
        elif leaf in head_names or (isinstance(module, nn.Linear) and module.out_features in vocab_sizes):
            role = "head"
        elif getattr(module, "muon_role", None) == "router":
            role = "router"
        else:
            continue
        for p in module.parameters(recurse=False):
            if p.ndim >= 2 and role_of.get(id(p)) != "embedding":
                role_of[id(p)] = role
    roles: dict[str, list[tuple[str, Tensor]]] = {r: [] for r in ROLES}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        role = role_of.get(id(p)) or ("hidden" if p.ndim >= 2 else "vector")
        roles[role].append((name, p))
    return roles


def assert_muon_safe(model: nn.Module, matrix_params: Iterable[Tensor], head_names: Iterable[str] = HEAD_NAMES) -> None:
    """Raise if an embedding, an output head or a non-matrix would be orthogonalised."""
    roles = classify_parameters(model, head_names)
    forbidden = {id(p): (name, role) for role in ("embedding", "head", "vector") for name, p in roles[role]}
    for p in matrix_params:
        if id(p) in forbidden:
            name, role = forbidden[id(p)]
            raise ValueError(
                f"parameter {name!r} (shape {tuple(p.shape)}) is a {role} parameter and would be updated by a "
                f"matrix optimizer. Muon/Shampoo are for hidden weight matrices only: embeddings and the output "
                f"head are lookup tables/classifiers whose rows should not be orthogonalised. Send it to AdamW "
                f"(drop it from `overrides`)."
            )


def build_optimizer(
    model: nn.Module,
    name: Literal["muon", "adamw", "shampoo"],
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = ADAMW_BETAS,
    adamw_lr: float | None = None,
    router: Literal["adamw", "muon"] = "adamw",
    overrides: dict[str, str] | None = None,
    head_names: Iterable[str] = HEAD_NAMES,
    **matrix_hparams,
) -> HybridOptimizer:
    """One optimizer for a whole model, with parameters routed by role.

    * ``"adamw"``: AdamW on everything.
    * ``"muon"`` / ``"shampoo"``: the matrix optimizer on hidden matrices (2D and 3D expert
      stacks), AdamW on embeddings, the output head, norms, biases and, unless
      ``router="muon"``, MoE router weights. Convolution filters (4D) go to Muon, which
      orthogonalises each as an ``(out, in * kh * kw)`` matrix as Keller Jordan's Muon does,
      and to AdamW under Shampoo (a reference for matrices only).

    ``lr`` is shared (with Muon's default ``adjust_lr="match_rms_adamw"`` both optimizers
    read it on AdamW's scale); ``adamw_lr`` overrides it for the AdamW part. Weight decay
    applies to matrices, never to vectors. ``overrides`` maps parameter names or glob
    patterns to ``"muon"`` or ``"adamw"``; sending an embedding or head to Muon raises.
    ``matrix_hparams`` go to :class:`Muon` or :class:`Shampoo` (e.g. ``momentum``,
    ``ns_steps``, ``ns_coefficients``, ``adjust_lr``, ``orthogonalize``, ``beta``, ``eps``).

    A training step of a model::

        >>> import torch
        >>> from muonlib.models import GPT, preset
        >>> model = GPT(preset("tiny"))
        >>> opt = build_optimizer(model, "muon", lr=2e-3, weight_decay=0.1)
        >>> idx = torch.randint(0, model.config.vocab_size, (2, 16))
        >>> logits, loss = model(idx, targets=idx)
        >>> loss.backward()
        >>> opt.step()
        >>> opt.zero_grad()
    """
    if name not in ("muon", "adamw", "shampoo"):
        raise ValueError(f"optimizer name must be 'muon', 'adamw' or 'shampoo', got {name!r}")
    if router not in ("adamw", "muon"):
        raise ValueError(f"router must be 'adamw' or 'muon', got {router!r}")
    roles = classify_parameters(model, head_names)
    matrix_roles = {"hidden"} | ({"router"} if router == "muon" else set())
    to_matrix: list[tuple[str, Tensor]] = []
    to_adamw: list[tuple[str, Tensor]] = []
    for role, named in roles.items():
        for pname, p in named:
            target = "muon" if (name != "adamw" and role in matrix_roles and (name == "muon" or p.ndim <= 3)) else "adamw"
            for pattern, forced in (overrides or {}).items():
                if fnmatch.fnmatchcase(pname, pattern):
                    if forced not in ("muon", "adamw"):
                        raise ValueError(f"override for {pattern!r} must be 'muon' or 'adamw', got {forced!r}")
                    target = forced
            (to_matrix if target == "muon" and name != "adamw" else to_adamw).append((pname, p))
    assert_muon_safe(model, (p for _, p in to_matrix), head_names)

    adamw_lr = lr if adamw_lr is None else adamw_lr
    decay = [p for _, p in to_adamw if p.ndim >= 2]
    no_decay = [p for _, p in to_adamw if p.ndim < 2]
    adamw_groups = [g for g in (
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ) if g["params"]]
    fused = all(p.is_cuda for g in adamw_groups for p in g["params"]) and bool(adamw_groups)
    optimizers: dict[str, Optimizer] = {}
    if to_matrix:
        matrix_cls = Muon if name == "muon" else Shampoo
        optimizers[name] = matrix_cls(
            [p for _, p in to_matrix], lr=lr, weight_decay=weight_decay, **matrix_hparams
        )
    elif matrix_hparams:
        raise ValueError(f"{sorted(matrix_hparams)} apply to Muon/Shampoo only, not to {name!r}")
    if adamw_groups:
        optimizers["adamw"] = torch.optim.AdamW(adamw_groups, lr=adamw_lr, betas=betas, fused=fused or None)
    return HybridOptimizer(optimizers)


__all__ = [
    "HybridOptimizer",
    "Muon",
    "Shampoo",
    "adjusted_lr",
    "assert_muon_safe",
    "build_optimizer",
    "classify_parameters",
    "inverse_root",
    "momentum_directions",
    "muon_directions",
    "orthogonalize",
]
