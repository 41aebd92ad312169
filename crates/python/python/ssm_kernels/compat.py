"""The rest of what mamba_ssm and causal_conv1d clients call, composed from our
kernels and plain torch ops, so that a client's fast path (transformers'
MambaMixer / Mamba2Mixer `cuda_kernels_forward`) can run on this package:

- `causal_conv1d_fn`, `causal_conv1d_update`: the depthwise causal convolution
  (torch's conv1d; causal_conv1d's semantics, `activation` "silu"/"swish").
- `mamba_inner_fn`: mamba_ssm's fused Mamba-1 block (conv, x_proj, dt_proj, our
  scan, out_proj), as its reference `mamba_inner_ref` composes it.
- `mamba_split_conv1d_scan_combined`: the fused Mamba-2 block (conv, our SSD,
  gated RMSNorm, out_proj), as `mamba_split_conv1d_scan_ref`.
- `patch_module(module)`: point a client module's kernel globals (those of these
  names, or of transformers' later names for them, that it has) at this
  package; returns what it replaced, for `unpatch_module`. `torch_path(module)`
  points them at the client's own torch code instead.

Only the SSM scans run our kernels; the convolution, projections and norm are
torch's. Needs torch.
"""

import torch
import torch.nn.functional as F

from . import mamba_chunk_scan_combined, selective_scan_fn, selective_state_update

__all__ = [
    "causal_conv1d_fn",
    "causal_conv1d_update",
    "mamba_inner_fn",
    "mamba_split_conv1d_scan_combined",
    "selective_scan_fn",
    "selective_state_update",
    "mamba_chunk_scan_combined",
    "patch_module",
    "unpatch_module",
    "torch_path",
]


def _act(x, activation):
    if activation in ("silu", "swish"):
        return F.silu(x)
    if activation is None:
        return x
    raise ValueError(f"argument `activation`: expected None, 'silu' or 'swish', got {activation!r}")


def causal_conv1d_fn(x, weight, bias=None, seq_idx=None, initial_states=None,
                     return_final_states=False, final_states_out=None, activation=None):
    """x: (batch, dim, seqlen); weight: (dim, width); bias: (dim). Returns (batch,
    dim, seqlen)."""
    if seq_idx is not None or initial_states is not None or return_final_states:
        raise NotImplementedError(
            "ssm_kernels.compat.causal_conv1d_fn: seq_idx, initial_states and "
            "return_final_states are not supported")
    if x.dim() != 3:
        raise ValueError(f"argument `x`: expected shape (batch, dim, seqlen), got {tuple(x.shape)}")
    dim, width = weight.shape
    if x.shape[1] != dim:
        raise ValueError(f"argument `weight`: expected shape (dim={x.shape[1]}, width), got {tuple(weight.shape)}")
    seqlen = x.shape[-1]
    out = F.conv1d(x, weight.unsqueeze(1).to(x.dtype), None if bias is None else bias.to(x.dtype),
                   padding=width - 1, groups=dim)[..., :seqlen]
    return _act(out, activation)


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None, cache_seqlens=None,
                         conv_state_indices=None):
    """x: (batch, dim) or (batch, dim, seqlen); conv_state: (batch, dim, state_len),
    state_len >= width - 1, updated in place (the newest inputs last). Returns
    out like x."""
    if cache_seqlens is not None or conv_state_indices is not None:
        raise NotImplementedError(
            "ssm_kernels.compat.causal_conv1d_update: cache_seqlens and conv_state_indices "
            "are not supported")
    unsqueeze = x.dim() == 2
    if unsqueeze:
        x = x.unsqueeze(-1)
    batch, dim, seqlen = x.shape
    width = weight.shape[1]
    state_len = conv_state.shape[-1]
    if conv_state.shape[:2] != (batch, dim) or state_len < width - 1:
        raise ValueError(
            f"argument `conv_state`: expected shape (batch={batch}, dim={dim}, state_len >= "
            f"{width - 1}), got {tuple(conv_state.shape)}")
    x_new = torch.cat([conv_state.to(weight.dtype), x.to(weight.dtype)], dim=-1)
    conv_state.copy_(x_new[:, :, -state_len:])
    out = F.conv1d(x_new, weight.unsqueeze(1), bias, padding=0, groups=dim)[:, :, -seqlen:]
    out = _act(out, activation).to(x.dtype)
    return out.squeeze(-1) if unsqueeze else out


def mamba_inner_fn(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight,
                   out_proj_weight, out_proj_bias, A, B=None, C=None, D=None, delta_bias=None,
                   B_proj_bias=None, C_proj_bias=None, delta_softplus=True, checkpoint_lvl=1,
                   **_unused_norm_weights):
    """mamba_ssm's Mamba-1 block on (batch, 2 * dim, seqlen) projected inputs."""
    L = xz.shape[-1]
    delta_rank = delta_proj_weight.shape[1]
    d_state = A.shape[-1]
    x, z = xz.chunk(2, dim=1)
    x = causal_conv1d_fn(x, conv1d_weight.reshape(conv1d_weight.shape[0], -1), conv1d_bias,
                         activation="silu")
    batch = x.shape[0]
    x_dbl = F.linear(x.transpose(1, 2).reshape(batch * L, -1), x_proj_weight)
    delta = (delta_proj_weight @ x_dbl[:, :delta_rank].t()).reshape(-1, batch, L).transpose(0, 1)
    if B is None:
        B = x_dbl[:, delta_rank:delta_rank + d_state]
        if B_proj_bias is not None:
            B = B + B_proj_bias.to(B.dtype)
        B = B.reshape(batch, L, d_state).transpose(1, 2).contiguous()
    if C is None:
        C = x_dbl[:, -d_state:]
        if C_proj_bias is not None:
            C = C + C_proj_bias.to(C.dtype)
        C = C.reshape(batch, L, d_state).transpose(1, 2).contiguous()
    y = selective_scan_fn(x, delta, A, B, C, D, z=z, delta_bias=delta_bias,
                          delta_softplus=delta_softplus)
    return F.linear(y.transpose(1, 2), out_proj_weight, out_proj_bias)


def _gated_rmsnorm(x, weight, z, eps, norm_before_gate):
    dtype = x.dtype
    x = x.float()
    if not norm_before_gate:
        x = x * F.silu(z.float())
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    if norm_before_gate:
        x = x * F.silu(z.float())
    return weight * x.to(dtype)


def mamba_split_conv1d_scan_combined(zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D,
                                     chunk_size, initial_states=None, seq_idx=None,
                                     dt_limit=(0.0, float("inf")), return_final_states=False,
                                     activation="silu", rmsnorm_weight=None, rmsnorm_eps=1e-6,
                                     outproj_weight=None, outproj_bias=None, headdim=None,
                                     ngroups=1, norm_before_gate=True):
    """mamba_ssm's fused Mamba-2 block on (batch, seqlen, 2 * dim + 2 * ngroups *
    dstate + nheads) projected inputs."""
    if D.dim() == 1:
        if headdim is None:
            raise ValueError("argument `headdim`: required when D is (nheads)")
        (nheads,) = D.shape
    else:
        nheads, headdim = D.shape
    batch, seqlen, width = zxbcdt.shape
    dim = nheads * headdim
    dstate = (width - 2 * dim - nheads) // ngroups // 2
    if width != 2 * dim + 2 * ngroups * dstate + nheads or dstate <= 0:
        raise ValueError(
            f"argument `zxbcdt`: expected (batch, seqlen, 2 * dim + 2 * ngroups * dstate + nheads) "
            f"with dim = {dim}, nheads = {nheads}, ngroups = {ngroups}, got {tuple(zxbcdt.shape)} "
            "(a gated MLP part is not supported)")
    z, xBC, dt = torch.split(zxbcdt, [dim, dim + 2 * ngroups * dstate, nheads], dim=-1)
    xBC = causal_conv1d_fn(xBC.transpose(1, 2), conv1d_weight, conv1d_bias,
                           activation=activation).transpose(1, 2)
    x, B, C = torch.split(xBC, [dim, ngroups * dstate, ngroups * dstate], dim=-1)
    x = x.reshape(batch, seqlen, nheads, headdim)
    B = B.reshape(batch, seqlen, ngroups, dstate)
    C = C.reshape(batch, seqlen, ngroups, dstate)
    zh = z.reshape(batch, seqlen, nheads, headdim)
    res = mamba_chunk_scan_combined(
        x, dt.to(x.dtype), A, B, C, chunk_size, D=D.float(),
        z=zh if rmsnorm_weight is None else None, dt_bias=dt_bias, initial_states=initial_states,
        seq_idx=seq_idx, dt_softplus=True, dt_limit=dt_limit,
        return_final_states=return_final_states)
    out, final = (res if return_final_states else (res, None))
    out = out.reshape(batch, seqlen, dim)
    if rmsnorm_weight is not None:
        out = _gated_rmsnorm(out, rmsnorm_weight, z, rmsnorm_eps, norm_before_gate)
    if outproj_weight is not None:
        out = F.linear(out, outproj_weight, outproj_bias)
    return (out, final) if return_final_states else out


# A client module's kernel globals, by the name of the function they stand for.
# transformers 5.x before about 5.10 (modeling_mamba*.py filled these globals
# from lazy_load_kernel and checked is_fast_path_available) used mamba_ssm's
# names; later 5.x (5.17, 5.24) call module-level wrappers with their own names
# (`use_kernel_func_from_hub_with_fallback`), looked up at call time.
_ALIASES = {
    "selective_scan_fn": ["selective_scan_fn", "mamba_selective_scan"],
    "selective_state_update": ["selective_state_update", "mamba_selective_state_update",
                               "mamba2_selective_state_update"],
    "mamba_inner_fn": ["mamba_inner_fn"],
    "mamba_chunk_scan_combined": ["mamba_chunk_scan_combined", "mamba2_chunk_scan"],
    "mamba_split_conv1d_scan_combined": ["mamba_split_conv1d_scan_combined",
                                         "mamba2_split_conv1d_scan_combined"],
    "causal_conv1d_fn": ["causal_conv1d_fn"],
    "causal_conv1d_update": ["causal_conv1d_update"],
}


def accepting(fn):
    """`fn` called with the keyword arguments it has and the others dropped (the
    clients pass options of their own, e.g. transformers' `use_mambapy`), as
    transformers itself calls a kernel package's function."""
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return fn
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return fn
    names = set(params)

    def call(*args, **kwargs):
        return fn(*args, **{k: v for k, v in kwargs.items() if k in names})

    call.__wrapped_kernel__ = fn
    return call


def patch_module(module, **overrides):
    """Point the kernel globals of a client module (transformers' modeling_mamba or
    modeling_mamba2) at this package, and turn its fast path on where it has a
    switch. `overrides` names other implementations for some of them, by
    mamba_ssm's name (e.g. `selective_scan_fn=mamba_ssm's`, to time it on the same
    composed block). Returns the replaced values, for `unpatch_module`."""
    impls = {name: globals()[name] for name in _ALIASES}
    impls.update(overrides)
    saved = {}
    for name, fn in impls.items():
        for alias in _ALIASES.get(name, [name]):
            if hasattr(module, alias):
                saved[alias] = getattr(module, alias)
                setattr(module, alias, None if fn is None else accepting(fn))
    if hasattr(module, "is_fast_path_available"):
        saved["is_fast_path_available"] = module.is_fast_path_available
        module.is_fast_path_available = True
    return saved


def unpatch_module(module, saved):
    for name, value in saved.items():
        setattr(module, name, value)


def torch_path(module):
    """Point a client module at its own torch implementation (no kernels): the
    undecorated functions of later transformers, or None (with the fast path off)
    for the globals of earlier ones. Returns what to restore with `unpatch_module`."""
    import inspect

    saved = {}
    for aliases in _ALIASES.values():
        for alias in aliases:
            if hasattr(module, alias):
                current = getattr(module, alias)
                saved[alias] = current
                base = inspect.unwrap(current) if callable(current) else None
                setattr(module, alias, base if base is not current else None)
    if hasattr(module, "is_fast_path_available"):
        saved["is_fast_path_available"] = module.is_fast_path_available
        module.is_fast_path_available = False
    return saved
