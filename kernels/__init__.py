"""Triton kernels for the Llama model, installed as ``jpeglm.kernels``.

One op per file, each written kernel -> launcher -> ``torch.autograd.Function``:

* :mod:`.rms_norm` -- RMSNorm, forward + backward (Llama casting: normalise in fp32, scale in
  the input dtype).
* :mod:`.rope` -- rotary embeddings applied in place to q and k (HF ``rotate_half`` layout).
* :mod:`.swiglu` -- ``silu(gate) * up`` fused, backward recomputes the sigmoid.
* :mod:`.fused_linear_cross_entropy` -- ``cross_entropy(h @ W.T, y)`` in row chunks, so the
  full ``(tokens, vocab)`` logits are never materialised; gradients are computed in the forward.

:mod:`.reference` holds the plain PyTorch version of every op: the specification the kernels
are tested against and the path used where Triton is unavailable. It imports torch only.

This ``__init__`` imports nothing, so ``jpeglm.kernels.reference`` works without Triton and
Triton is first imported by ``from jpeglm.kernels.rms_norm import rms_norm`` and the like (set
``TRITON_INTERPRET=1`` before that to run the kernels on CPU). Model code reaches the ops
through :mod:`jpeglm.backends`, which picks between the two.
"""
