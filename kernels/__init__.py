"""Hand-written Triton kernels for the speedrun, one concept per file, each beside its PyTorch reference.

- `kernels.attention`: causal flash attention with sliding window and document masking.
- `kernels.norm`: fused RMSNorm / LayerNorm.
- `kernels.newton_schulz`: Muon's Newton-Schulz orthogonalisation.
- `kernels.mlp`: the MLP proj(relu(fc(x))²) with ReLU² in the fc matmul's epilogues.
- `kernels.fp8`: the FP8 matmul of the output head (`torch._scaled_mm`, no Triton), beside its fp32 emulation.

Every op is registered with `torch.library.custom_op` so that autograd and `torch.compile` see it.
Without a GPU the kernels run under Triton's interpreter (set TRITON_INTERPRET=1 before importing).
"""
