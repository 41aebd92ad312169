"""The naive recurrences as differentiable torch code (run in float64): the
gradient oracle of the torch tests here and of the GPU tests (gpu_tests/).
Same semantics as oracle.py; loops over time, so keep L small."""

import torch
import torch.nn.functional as F


def softplus(x):
    return torch.where(x <= 20.0, torch.log1p(torch.exp(torch.clamp(x, max=20.0))), x)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   initial_states=None):
    """u, delta, z (b, D, L); A (D, N); B, C (D, N), (b, N, L) or (b, G, N, L).
    Returns (out, last_state)."""
    batch, d_inner, seqlen = u.shape
    n = A.shape[1]
    if delta_bias is not None:
        delta = delta + delta_bias[None, :, None]
    if delta_softplus:
        delta = softplus(delta)

    def bc(M, t):
        if M.dim() == 2:
            return M[None]
        if M.dim() == 3:
            return M[:, None, :, t]
        g = M.shape[1]
        return M[:, :, :, t].repeat_interleave(d_inner // g, dim=1)

    h = u.new_zeros(batch, d_inner, n) if initial_states is None else initial_states
    ys = []
    for t in range(seqlen):
        dt = delta[:, :, t, None]
        h = torch.exp(dt * A) * h + dt * bc(B, t) * u[:, :, t, None]
        y = (h * bc(C, t)).sum(-1)
        if D is not None:
            y = y + D * u[:, :, t]
        if z is not None:
            y = y * F.silu(z[:, :, t])
        ys.append(y)
    return torch.stack(ys, dim=-1), h


def ssd(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
        dt_limit=(0.0, float("inf")), initial_states=None):
    """x, z (b, L, H, P); dt (b, L, H); A, dt_bias (H); B, C (b, L, G, N); D (H) or
    (H, P). Returns (out, final_states)."""
    batch, seqlen, heads, p = x.shape
    g, n = B.shape[2], B.shape[3]
    rep = heads // g
    if dt_bias is not None:
        dt = dt + dt_bias
    if dt_softplus:
        dt = softplus(dt)
    dt = torch.clamp(dt, dt_limit[0], dt_limit[1])
    h = x.new_zeros(batch, heads, p, n) if initial_states is None else initial_states
    ys = []
    for t in range(seqlen):
        d = dt[:, t]
        Bt = B[:, t].repeat_interleave(rep, dim=1)
        Ct = C[:, t].repeat_interleave(rep, dim=1)
        h = torch.exp(d * A)[:, :, None, None] * h + (d[:, :, None] * x[:, t])[..., None] * Bt[:, :, None, :]
        y = torch.einsum("bhpn,bhn->bhp", h, Ct)
        if D is not None:
            y = y + (D[:, None] if D.dim() == 1 else D) * x[:, t]
        if z is not None:
            y = y * F.silu(z[:, t])
        ys.append(y)
    return torch.stack(ys, dim=1), h
