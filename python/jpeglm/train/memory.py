"""How much GPU memory training takes, per GPU: the model that ``jpeglm plan`` reports.

For a model preset at a sequence length, under DDP and FSDP2, with activation checkpointing
none / selective / full, the per-GPU bytes of:

* **params, grads, optimizer** -- counted: fp32 master weights (4 B/param), fp32 gradients
  (4 B/param), AdamW's two fp32 moments (8 B/param); FSDP divides all three by the GPU count.
* **bf16 weights** -- counted: under DDP, bf16 autocast keeps a bf16 copy of every matmul
  weight from its first use in the forward until backward is done (2 B per matmul param);
  under FSDP2 (``MixedPrecisionPolicy(param_dtype=bf16)``) two blocks are all-gathered in
  bf16 at a time (the running one and the prefetched one) plus the root's unsharded
  embedding / norm / output.
* **activations** -- *measured*, not guessed: a :class:`~jpeglm.model.model.Transformer` with small
  dims runs its forward on CPU under a ``TorchDispatchMode`` that records the storage of every
  tensor each op creates; what is still alive when the forward returns (deduplicated by
  storage, parameters, buffers and autocast weight casts left out) is what the backward keeps.
  With ``activation_checkpoint="none"`` this equals the sum over
  ``torch.autograd.graph.saved_tensors_hooks`` (tested); the dispatch mode also sees what
  checkpointing keeps outside those hooks (block inputs, selective checkpointing's cache).
  Runs at 1 and 2 layers separate the per-layer cost from the embedding / norm / loss head.
  Bytes per token per layer are then fitted by least squares as linear in
  ``(dim, kv_dim, hidden_dim, n_heads, 1)`` (exact: every saved tensor is one of those
  widths), linearity in the sequence length is checked (CPU SDPA is a flash kernel: it saves
  out + logsumexp, no ``seq^2`` scores, as flash-attn does on GPU), and the fit is
  extrapolated to the preset's dims and sequence length. For ``"full"`` checkpointing the
  activations are ``L`` block inputs plus one block's full activations while it is
  recomputed.
* **transient** -- measured the same way: the peak during the backward above what the forward
  left (the gradients flowing through one block, the recompute of selective checkpointing)
  or the loss's logits gradients (8 B x vocab per token on the reference backend), whichever
  is larger; plus, under DDP, the largest weight's gradient (bf16, then its fp32 cast), under
  FSDP one block's unsharded gradient (bf16, then fp32 for the reduce-scatter).

The trainer's DDP uses ``gradient_as_bucket_view=True``: the all-reduce buckets are the
gradients, not a second copy. FSDP with gradient accumulation (``accum > 1``) skips the
reduce-scatter on non-final micro-batches, so the whole model's unsharded fp32 gradients
stay resident: counted in the grads column and footnoted.

The measurement runs the PyTorch reference ops (the CPU backend) in the trainer's dtypes:
fp32 weights under bf16 autocast (DDP) and bf16 weights (FSDP mixed precision). On GPU the
Triton kernels save less (RMSNorm keeps its input and 1/rms, SwiGLU its bf16 gate and up,
the fused cross-entropy never holds all logits), so these activations are an upper bound.
Not counted: the CUDA context, NCCL and cuBLAS workspaces and allocator fragmentation; a
configuration "fits" when its total leaves :data:`RESERVE` bytes free.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported only when measuring: `jpeglm --help` stays light
    import torch

    from jpeglm.model import ModelArgs, Transformer

__all__ = [
    "AC_MODES",
    "RESERVE",
    "ActivationFit",
    "Measurement",
    "PlanRow",
    "fit_activations",
    "param_counts",
    "measure",
    "plan",
]

GiB = 2**30
AC_MODES = ("none", "selective", "full")
RESERVE = 2 * GiB  #: CUDA context, NCCL buffers, cuBLAS workspaces: left free for "fits"
PRECISION = {"DDP": "autocast", "FSDP": "bf16"}  #: how each strategy runs the forward
DDP_SINGLE = "1 GPU"

# Small configurations the fit is measured on: (dim, n_heads, n_kv_heads, hidden_dim, vocab).
# Vocabularies are small so that the blocks (not the logits) set the backward peak.
FIT_CONFIGS = (
    (64, 4, 4, 176, 8),
    (96, 3, 3, 256, 16),
    (128, 4, 2, 352, 32),
    (128, 8, 8, 512, 8),
    (192, 6, 3, 512, 64),
    (256, 8, 8, 704, 16),
    (256, 4, 4, 1024, 32),
)
FIT_SEQ = 100  # no parameter has this size: weight-gradient temporaries are told apart by shape


# ------------------------------------------------------------------------------ measurement


def _live_storages(exclude: set[int], weight_shapes: set[tuple[int, ...]]):  # noqa: ANN202 - a TorchDispatchMode
    import torch
    from torch.multiprocessing.reductions import StorageWeakRef
    from torch.utils._python_dispatch import TorchDispatchMode

    class LiveStorages(TorchDispatchMode):
        """Records (weakly) every storage an op creates; sums those still alive."""

        def __init__(self) -> None:
            super().__init__()
            self._ref = StorageWeakRef
            self.exclude = exclude
            self.live: dict[int, tuple] = {}  # data_ptr -> (weak ref, nbytes, tag)
            self.tag = "forward"
            self.peak = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            out = func(*args, **(kwargs or {}))
            src = args[0] if args and isinstance(args[0], torch.Tensor) else None
            cast = func is torch.ops.aten._to_copy.default and src is not None and (
                src.untyped_storage().data_ptr() in self.exclude
            )  # fmt: skip
            for t in torch.utils._pytree.tree_leaves(out):
                if not isinstance(t, torch.Tensor):
                    continue
                s = t.untyped_storage()
                ptr = s.data_ptr()
                if s.nbytes() == 0 or ptr in self.exclude:
                    continue
                tag = "cast" if cast else self.tag
                if tag == "backward" and tuple(t.shape) in weight_shapes:
                    tag = "weight-grad"  # counted analytically (plan), not per token
                old = self.live.get(ptr)
                if old is None or old[0].expired():
                    self.live[ptr] = (self._ref(s), s.nbytes(), tag)
            self.peak = max(self.peak, self.total())
            return out

        def total(self, tags: tuple[str, ...] = ("forward", "backward")) -> int:
            return sum(n for ref, n, tag in self.live.values() if tag in tags and not ref.expired())

        def grad(self, p: torch.Tensor) -> None:
            """A parameter's gradient: not a transient (post-accumulate-grad hook)."""
            s = p.grad.untyped_storage()
            self.live[s.data_ptr()] = (self._ref(s), s.nbytes(), "grad")

    return LiveStorages()


@dataclass(frozen=True)
class Measurement:
    """Bytes measured for one forward + backward on CPU."""

    activations: int  #: alive after the forward (kept for the backward)
    backward: int  #: peak during the backward above ``activations`` (weight gradients excluded)
    casts: int  #: autocast's bf16 weight copies alive at the end of the forward


def _small_model(args: ModelArgs, precision: str, mode: str) -> Transformer:
    import torch

    from jpeglm.model import Transformer

    torch.manual_seed(0)
    model = Transformer(args, backend="torch")
    if precision == "bf16":
        model.to(torch.bfloat16)
    model.set_activation_checkpointing(mode)
    return model


def measure(
    args: ModelArgs, seq_len: int, mode: str, precision: str = "autocast", batch: int = 1
) -> Measurement:
    """Measure activation and backward bytes of one training step of a (small) model on CPU.

    ``precision``: ``"autocast"`` (fp32 weights, bf16 autocast: DDP) or ``"bf16"`` (bf16
    weights, no autocast: FSDP mixed precision).
    """
    import torch

    model = _small_model(args, precision, mode)
    exclude = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, args.vocab_size, (batch, seq_len), generator=gen)
    tgt = torch.randint(0, args.vocab_size, (batch, seq_len), generator=gen)
    shapes = {tuple(p.shape) for p in model.parameters()}
    tracker = _live_storages(exclude, shapes | {s[::-1] for s in shapes})
    for p in model.parameters():
        p.register_post_accumulate_grad_hook(tracker.grad)
    with tracker:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "autocast"):
            loss = model(idx, targets=tgt)
            casts = tracker.total(("cast",))
        activations = tracker.total()
        tracker.peak, tracker.tag = activations, "backward"
        loss.backward()
    return Measurement(activations, tracker.peak - activations, casts)


def saved_tensor_bytes(args: ModelArgs, seq_len: int, precision: str = "autocast") -> int:
    """Bytes saved for backward by ``saved_tensors_hooks`` (no checkpointing), deduplicated by
    storage; parameters, buffers and bf16 weight casts left out. A cross-check of
    :func:`measure`."""
    import torch

    model = _small_model(args, precision, "none")
    weights = {id(p) for p in model.parameters()}
    exclude = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    shapes = {tuple(p.shape) for p in model.parameters() if p.ndim == 2}
    shapes |= {s[::-1] for s in shapes}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        cast = t.dtype == torch.bfloat16 and tuple(t.shape) in shapes and precision == "autocast"
        if id(t) not in weights and s.data_ptr() not in exclude and not cast:
            seen[s.data_ptr()] = s.nbytes()
        return t

    idx = torch.randint(0, args.vocab_size, (1, seq_len))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "autocast"):
            model(idx, targets=idx)
    return sum(seen.values())


# ---------------------------------------------------------------------------------- the fit


def _block_features(a: ModelArgs) -> np.ndarray:
    return np.array([a.dim, a.n_kv_heads * a.head_dim, a.hidden_dim, a.n_heads, 1.0])


def _head_features(a: ModelArgs) -> np.ndarray:
    return np.array([a.dim, a.vocab_size, 1.0])


@dataclass(frozen=True)
class ActivationFit:
    """Bytes per token, linear in the model's widths, for one precision.

    ``layer[mode]``: kept per layer; ``head[mode]``: kept by embedding / final norm / loss;
    ``backward[mode]``: the backward's peak above the kept activations.
    """

    precision: str
    layer: dict[str, np.ndarray]  # over (dim, kv_dim, hidden_dim, n_heads, 1)
    head: dict[str, np.ndarray]  # over (dim, vocab, 1)
    backward: dict[str, np.ndarray]  # over (dim, kv_dim, hidden_dim, n_heads, 1)
    max_rel_residual: float  #: worst relative misfit on the measured configurations

    def layer_bytes(self, a: ModelArgs, mode: str) -> float:
        return float(self.layer[mode] @ _block_features(a))

    def head_bytes(self, a: ModelArgs, mode: str) -> float:
        return float(self.head[mode] @ _head_features(a))

    def backward_bytes(self, a: ModelArgs, mode: str) -> float:
        """The backward's peak above the activations, per token: one block's gradients, or the
        logits' gradients (8 B x vocab: fp32 dlogits and d log-softmax), the larger."""
        return max(float(self.backward[mode] @ _block_features(a)), 8.0 * a.vocab_size)


def _args(dim: int, heads: int, kv: int, hidden: int, vocab: int, layers: int) -> ModelArgs:
    from jpeglm.model import ModelArgs

    return ModelArgs(dim=dim, n_layers=layers, n_heads=heads, n_kv_heads=kv, hidden_dim=hidden,
                     vocab_size=vocab, max_seq_len=FIT_SEQ)  # fmt: skip


@functools.cache
def fit_activations(precision: str = "autocast") -> ActivationFit:
    """Measure :data:`FIT_CONFIGS` at 1 and 2 layers and fit bytes per token (a few seconds;
    kept in memory for the process, never on disk)."""
    rows: dict[str, list] = {m: [] for m in AC_MODES}
    for cfg in FIT_CONFIGS:
        a1, a2 = _args(*cfg, layers=1), _args(*cfg, layers=2)
        for mode in AC_MODES:
            m1 = measure(a1, FIT_SEQ, mode, precision)
            m2 = measure(a2, FIT_SEQ, mode, precision)
            rows[mode].append((a1, m1, m2))
    layer, head, backward = {}, {}, {}
    worst = 0.0
    for mode, data in rows.items():
        xb = np.stack([_block_features(a) for a, _, _ in data])
        xh = np.stack([_head_features(a) for a, _, _ in data])
        y_layer = np.array([(m2.activations - m1.activations) / FIT_SEQ for _, m1, m2 in data])
        y_head = np.array([m1.activations / FIT_SEQ for _, m1, _ in data]) - y_layer
        y_back = np.array([max(m1.backward, m2.backward) / FIT_SEQ for _, m1, m2 in data])
        for x, y, out in (xb, y_layer, layer), (xh, y_head, head), (xb, y_back, backward):
            coef = np.linalg.lstsq(x, y, rcond=None)[0]
            out[mode] = coef
            worst = max(worst, float(np.max(np.abs(x @ coef - y) / y)))
    return ActivationFit(precision, layer, head, backward, worst)


# --------------------------------------------------------------------------------- the plan


def param_counts(a: ModelArgs) -> tuple[int, int, int, int]:
    """(total, one block, matmul weights, the root's: embedding + norm + output)."""
    import torch

    from jpeglm.model import Transformer

    with torch.device("meta"):
        model = Transformer(a, backend="torch")
    total = model.num_params()
    block = sum(p.numel() for p in model.layers[0].parameters())
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return total, block, matmul, total - a.n_layers * block


@dataclass(frozen=True)
class PlanRow:
    """Per-GPU bytes of one (strategy, activation checkpointing) configuration."""

    strategy: str
    ac: str
    params: float
    grads: float
    optimizer: float
    bf16_weights: float
    activations: float
    transient: float
    notes: tuple[str, ...] = ()

    @property
    def total(self) -> float:
        return (self.params + self.grads + self.optimizer + self.bf16_weights
                + self.activations + self.transient)  # fmt: skip

    def fits(self, gpu_mem: float) -> bool:
        return self.total + RESERVE <= gpu_mem


def plan(
    args: ModelArgs,
    *,
    seq_len: int = 12288,
    gpus: int = 1,
    micro_batch: int = 1,
    accum: int = 1,
    strategies: Sequence[str] = ("DDP", "FSDP"),
    ac_modes: Sequence[str] = AC_MODES,
) -> list[PlanRow]:
    """Per-GPU memory rows for ``args`` at ``micro_batch`` sequences of ``seq_len`` tokens."""
    if gpus < 1 or micro_batch < 1 or accum < 1 or seq_len < 1:
        raise ValueError("gpus, micro_batch, accum and seq_len must be positive")
    total, block, matmul, root = param_counts(args)
    tokens = micro_batch * seq_len
    rows = []
    for strategy in strategies:
        if strategy not in PRECISION:
            raise ValueError(f"unknown strategy {strategy!r}: DDP or FSDP")
        if gpus == 1 and strategy == "FSDP":
            continue  # the trainer shards only over several ranks
        fit = fit_activations(PRECISION[strategy])
        sharded = strategy == "FSDP"
        n = gpus if sharded else 1
        notes: list[str] = []
        grads = 4.0 * total / n
        if sharded and accum > 1:
            grads += 4.0 * total
            notes.append("fsdp-accum")
        if sharded:
            bf16 = 2.0 * (2 * block + root)  # two gathered blocks + the unsharded root
            extra = 6.0 * max(block, root)  # one unsharded gradient: bf16, then fp32
        else:  # + the largest weight's gradient: bf16, then its fp32 cast for accumulation
            bf16, extra = 2.0 * matmul, 6.0 * args.dim * max(args.hidden_dim, args.vocab_size)
        for ac in ac_modes:
            if ac not in AC_MODES:
                raise ValueError(f"unknown activation checkpointing {ac!r}: {AC_MODES}")
            per_token = args.n_layers * fit.layer_bytes(args, ac) + fit.head_bytes(args, ac)
            back = fit.backward_bytes(args, ac)
            if ac == "full":  # one block recomputed at a time, in full, then its backward
                per_token += fit.layer_bytes(args, "none")
                back = fit.backward_bytes(args, "none")
            name = DDP_SINGLE if gpus == 1 else strategy
            params, opt = 4.0 * total / n, 8.0 * total / n
            act, tmp = tokens * per_token, tokens * back + extra
            rows.append(PlanRow(name, ac, params, grads, opt, bf16, act, tmp, tuple(notes)))
    return rows
