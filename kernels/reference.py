"""Plain PyTorch versions of the kernel ops: moved to :mod:`jpeglm.reference.kernels` (with the
other reference twins); re-exported here so ``jpeglm.kernels.reference`` keeps working. Imports
torch and numpy only (never Triton or ``jpeglm._core``)."""

from jpeglm.reference.kernels import (  # noqa: F401
    __all__,
    fused_linear_cross_entropy,
    rms_norm,
    rope,
    swiglu,
)
