"""Hand-written Triton kernels for the speedrun, one concept per file, each beside its PyTorch reference.

- `kernels.attention`: causal flash attention with sliding window and document masking.
- `kernels.norm`: fused RMSNorm / LayerNorm.
- `kernels.newton_schulz`: Muon's Newton-Schulz orthogonalisation.
- `kernels.mlp`: the MLP proj(relu(fc(x))²) with ReLU² in the fc matmul's epilogues.
- `kernels.fp8`: the FP8 matmul of the output head (`torch._scaled_mm`) and its casts in one Triton pass
  (`cast_fp8`; torch's casts on a CPU), beside its fp32 emulation.
- `kernels.head_loss`: the FP8 head's soft-capped cross-entropy, whose backward writes the FP8 gradient
  (`fp8_head_loss`), beside the torch composition (`softcap_cross_entropy`, also the trainer's bf16 loss).

Every op is registered with `torch.library.custom_op` so that autograd and `torch.compile` see it.
Without a GPU the kernels run under Triton's interpreter (set TRITON_INTERPRET=1 before importing): @triton.jit
reads it when it decorates a kernel, at its file's import. Each file's input check calls `check_tensors` and
`check_launchable`, and those whose kernels compute in their inputs' dtype (tl.dot of bf16 tiles: attention, mlp,
newton_schulz) call `check_interpretable` too.
"""
from __future__ import annotations

import torch
from triton.runtime.interpreter import InterpretedFunction


def interpreted(kernel) -> bool:
    """Whether `kernel` (a @triton.jit function) runs under Triton's interpreter: @triton.jit makes an
    InterpretedFunction where TRITON_INTERPRET was set when it decorated the kernel (Triton 3.6 and 3.9)."""
    return isinstance(kernel, InterpretedFunction)


def check_tensors(op: str, **tensors) -> None:
    """A one-line TypeError naming the first of `op`'s arguments `tensors` (by name) that is neither a tensor nor None:
    a numpy array or a list otherwise fails on a missing attribute, or passes a dtype check by its dtype's name."""
    for name, t in tensors.items():
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")


def check_launchable(op: str, interpreting: bool, *tensors: torch.Tensor) -> None:
    """A one-line ValueError where `op` would launch a compiled kernel (`interpreting` False: its file was imported
    without TRITON_INTERPRET=1) on CPU tensors: Triton has no CPU driver, and its own error names no op."""
    if not interpreting and any(t.device.type == "cpu" for t in tensors):
        raise ValueError(f"{op}: CPU tensors need Triton's interpreter: set TRITON_INTERPRET=1 before importing "
                         "kernels/")


def check_interpretable(op: str, interpreting: bool, dtype: torch.dtype) -> None:
    """A one-line ValueError where `op`'s kernels would compute in bf16 under Triton's interpreter (`interpreting`):
    it holds bf16 as raw uint16 bits and converts them only in casts, so bf16 dots give garbage, not an error."""
    if interpreting and dtype == torch.bfloat16:
        raise ValueError(f"{op}: bfloat16 under Triton's interpreter, which has no bf16 arithmetic (use float32 or "
                         "float16 there)")
