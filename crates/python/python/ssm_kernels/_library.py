"""The scans as `torch.library` custom ops, so that `torch.compile` traces
through them (the op is opaque to the compiler; its fake implementation gives
the output shapes, its registered autograd the backward):

    torch.ops.ssm_kernels.selective_scan_fwd / selective_scan_bwd
    torch.ops.ssm_kernels.chunk_scan_fwd / chunk_scan_bwd

`_torch.py` uses them while torch.compile traces (`torch.compiler.is_compiling()`);
eager calls go through the lighter autograd.Functions. Covered: every option
but varlen input (`seq_idx`, `cu_seqlens`), whose number of sequences and
output shapes depend on tensor contents: those calls run eagerly (a graph break).
Optional outputs are returned as empty tensors and mapped back to None.
"""

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from . import _impl

_NS = "ssm_kernels"


def _backend(t):
    from ._torch import TorchBackend

    return TorchBackend(t.device)


def _cast(g, like):
    if like is None:
        return None
    return g.to(like.dtype) if g.dtype != like.dtype else g


def _grads(g, inputs, names, device, dtype):
    """The gradients in the inputs' dtypes; an empty tensor for each absent input."""
    out = []
    for name, t in zip(names, inputs):
        if t is None:
            out.append(torch.empty(0, device=device, dtype=dtype))
        else:
            out.append(_cast(g[name], t))
    return out


# ------------------------------------------------------------------ Mamba-1 scan

SCAN_GRADS = ["du", "ddelta", "dA", "dB", "dC", "dD", "dz", "ddelta_bias", "dinitial_states"]


@torch.library.custom_op(f"{_NS}::selective_scan_fwd", mutates_args=())
def selective_scan_fwd(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                       D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor],
                       initial_states: Optional[Tensor], delta_softplus: bool,
                       return_last_state: bool) -> Tuple[Tensor, Tensor]:
    call = _impl.ScanCall(_backend(u), u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                          return_last_state, initial_states, None)
    out, last = call.forward()
    if last is None:
        last = torch.empty(0, device=u.device, dtype=torch.float32)
    return out, last


@selective_scan_fwd.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, initial_states, delta_softplus, return_last_state):
    b, d, _ = u.shape
    n = A.shape[1]
    last = u.new_empty((b, d, n) if return_last_state else (0,), dtype=torch.float32)
    return torch.empty_like(u, memory_format=torch.contiguous_format), last


@torch.library.custom_op(f"{_NS}::selective_scan_bwd", mutates_args=())
def selective_scan_bwd(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                       D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor],
                       initial_states: Optional[Tensor], d_out: Tensor, d_last: Optional[Tensor],
                       delta_softplus: bool) -> List[Tensor]:
    call = _impl.ScanCall(_backend(u), u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                          d_last is not None, initial_states, None)
    g = call.backward(d_out, d_last)
    return _grads(g, (u, delta, A, B, C, D, z, delta_bias, initial_states), SCAN_GRADS,
                  u.device, u.dtype)


@selective_scan_bwd.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, initial_states, d_out, d_last, delta_softplus):
    return [torch.empty_like(t, memory_format=torch.contiguous_format) if t is not None
            else u.new_empty((0,)) for t in (u, delta, A, B, C, D, z, delta_bias, initial_states)]


def _scan_setup(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, initial_states, delta_softplus, return_last_state = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_states)
    ctx.delta_softplus = delta_softplus
    ctx.return_last_state = return_last_state


def _scan_backward(ctx, d_out, d_last):
    saved = ctx.saved_tensors
    d_last = d_last if (ctx.return_last_state and d_last is not None) else None
    grads = selective_scan_bwd(*saved, d_out, d_last, ctx.delta_softplus)
    return (*(None if t is None else g for g, t in zip(grads, saved)), None, None)


torch.library.register_autograd(f"{_NS}::selective_scan_fwd", _scan_backward,
                                setup_context=_scan_setup)


# ------------------------------------------------------------------ Mamba-2 SSD

SSD_GRADS = ["dx", "ddt", "dA", "dB", "dC", "dD", "dz", "ddt_bias", "dinitial_states"]


def _ssd_call(x, dt, A, B, C, D, z, dt_bias, initial_states, dt_softplus, dt_min, dt_max,
              final):
    return _impl.SsdCall(_backend(x), x, dt, A, B, C, 256, D, z, dt_bias, initial_states, None,
                         None, dt_softplus, (dt_min, dt_max), final, False)


@torch.library.custom_op(f"{_NS}::chunk_scan_fwd", mutates_args=())
def chunk_scan_fwd(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                   z: Optional[Tensor], dt_bias: Optional[Tensor], initial_states: Optional[Tensor],
                   dt_softplus: bool, dt_min: float, dt_max: float,
                   return_final_states: bool) -> Tuple[Tensor, Tensor]:
    call = _ssd_call(x, dt, A, B, C, D, z, dt_bias, initial_states, dt_softplus, dt_min, dt_max,
                     return_final_states)
    out, final, _ = call.forward()
    if final is None:
        final = torch.empty(0, device=x.device, dtype=torch.float32)
    return out, final


@chunk_scan_fwd.register_fake
def _(x, dt, A, B, C, D, z, dt_bias, initial_states, dt_softplus, dt_min, dt_max,
      return_final_states):
    b, _, h, p = x.shape
    n = B.shape[-1]
    final = x.new_empty((b, h, p, n) if return_final_states else (0,), dtype=torch.float32)
    return torch.empty_like(x, memory_format=torch.contiguous_format), final


@torch.library.custom_op(f"{_NS}::chunk_scan_bwd", mutates_args=())
def chunk_scan_bwd(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                   z: Optional[Tensor], dt_bias: Optional[Tensor], initial_states: Optional[Tensor],
                   d_out: Tensor, d_final: Optional[Tensor], dt_softplus: bool, dt_min: float,
                   dt_max: float) -> List[Tensor]:
    call = _ssd_call(x, dt, A, B, C, D, z, dt_bias, initial_states, dt_softplus, dt_min, dt_max,
                     d_final is not None)
    g = call.backward(d_out, d_final, None)
    return _grads(g, (x, dt, A, B, C, D, z, dt_bias, initial_states), SSD_GRADS, x.device, x.dtype)


@chunk_scan_bwd.register_fake
def _(x, dt, A, B, C, D, z, dt_bias, initial_states, d_out, d_final, dt_softplus, dt_min, dt_max):
    return [torch.empty_like(t, memory_format=torch.contiguous_format) if t is not None
            else x.new_empty((0,)) for t in (x, dt, A, B, C, D, z, dt_bias, initial_states)]


def _ssd_setup(ctx, inputs, output):
    (x, dt, A, B, C, D, z, dt_bias, initial_states, dt_softplus, dt_min, dt_max,
     return_final_states) = inputs
    ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, initial_states)
    ctx.flags = (dt_softplus, dt_min, dt_max, return_final_states)


def _ssd_backward(ctx, d_out, d_final):
    saved = ctx.saved_tensors
    dt_softplus, dt_min, dt_max, want_final = ctx.flags
    d_final = d_final if (want_final and d_final is not None) else None
    grads = chunk_scan_bwd(*saved, d_out, d_final, dt_softplus, dt_min, dt_max)
    return (*(None if t is None else g for g, t in zip(grads, saved)), None, None, None, None)


torch.library.register_autograd(f"{_NS}::chunk_scan_fwd", _ssd_backward, setup_context=_ssd_setup)


# ------------------------------------------------------------------ entry points


def selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
                   initial_states):
    out, last = selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, initial_states,
                                   bool(delta_softplus), bool(return_last_state))
    return (out, last) if return_last_state else out


def chunk_scan(x, dt, A, B, C, D, z, dt_bias, initial_states, dt_softplus, dt_limit,
               return_final_states):
    out, final = chunk_scan_fwd(x, dt, A, B, C, D, z, dt_bias, initial_states, bool(dt_softplus),
                                float(dt_limit[0]), float(dt_limit[1]), bool(return_final_states))
    return (out, final) if return_final_states else out
