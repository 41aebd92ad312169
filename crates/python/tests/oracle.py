"""Naive float64 recurrences in NumPy: the tests' oracle (written for obviousness,
independently of the Rust crates), in mamba_ssm's layouts and semantics.
Shared by the NumPy tests here and the GPU tests (tests/gpu/)."""

import numpy as np


def softplus(x):
    # mamba_ssm's: log(1 + exp(x)), the identity above 20.
    return np.where(x <= 20.0, np.log1p(np.exp(np.minimum(x, 20.0))), x)


def silu(x):
    return x / (1.0 + np.exp(-x))


def f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   initial_states=None, cu_seqlens=None):
    """Returns (out, last_state): out (b, D, L), last_state (seqs, D, N)."""
    u, delta, A, B, C, D, z, delta_bias = map(f64, (u, delta, A, B, C, D, z, delta_bias))
    batch, d_inner, seqlen = u.shape
    n = A.shape[1]
    if delta_bias is not None:
        delta = delta + delta_bias[None, :, None]
    if delta_softplus:
        delta = softplus(delta)

    def bc_at(M, b, t):
        # -> (D, N)
        if M.ndim == 2:
            return M
        if M.ndim == 3:
            return np.broadcast_to(M[b, :, t][None, :], (d_inner, n))
        g = M.shape[1]
        return np.repeat(M[b, :, :, t], d_inner // g, axis=0)

    if cu_seqlens is None:
        seqs = [(b, 0, seqlen) for b in range(batch)]
    else:
        cu = np.asarray(cu_seqlens)
        seqs = [(0, int(cu[i]), int(cu[i + 1])) for i in range(len(cu) - 1)]
    out = np.zeros_like(u)
    last = np.zeros((len(seqs), d_inner, n))
    for s, (b, t0, t1) in enumerate(seqs):
        h = np.zeros((d_inner, n)) if initial_states is None else f64(initial_states)[s].copy()
        for t in range(t0, t1):
            dt = delta[b, :, t][:, None]
            h = np.exp(dt * A) * h + dt * bc_at(B, b, t) * u[b, :, t][:, None]
            y = (h * bc_at(C, b, t)).sum(axis=1)
            if D is not None:
                y = y + D * u[b, :, t]
            if z is not None:
                y = y * silu(z[b, :, t])
            out[b, :, t] = y
        last[s] = h
    return out, last


def ssd(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
        dt_limit=(0.0, float("inf")), initial_states=None, seq_idx=None):
    """The SSD as its recurrence. Returns (out (b, L, H, P), final (b, H, P, N),
    per-sequence finals as a list in order). The state resets where seq_idx
    changes; initial_states start each row."""
    x, dt, A, B, C, D, z, dt_bias = map(f64, (x, dt, A, B, C, D, z, dt_bias))
    batch, seqlen, heads, p = x.shape
    g, n = B.shape[2], B.shape[3]
    rep = heads // g
    if dt_bias is not None:
        dt = dt + dt_bias
    if dt_softplus:
        dt = softplus(dt)
    dt = np.clip(dt, dt_limit[0], dt_limit[1])
    out = np.zeros_like(x)
    final = np.zeros((batch, heads, p, n))
    seq_finals = []
    for b in range(batch):
        h = np.zeros((heads, p, n)) if initial_states is None else f64(initial_states)[b].copy()
        for t in range(seqlen):
            if seq_idx is not None and t > 0 and seq_idx[b, t] != seq_idx[b, t - 1]:
                seq_finals.append(h.copy())
                h = np.zeros_like(h)
            d = dt[b, t]  # (H)
            Bt = np.repeat(B[b, t], rep, axis=0)  # (H, N)
            Ct = np.repeat(C[b, t], rep, axis=0)
            h = np.exp(d * A)[:, None, None] * h + (d[:, None] * x[b, t])[:, :, None] * Bt[:, None, :]
            y = np.einsum("hpn,hn->hp", h, Ct)
            if D is not None:
                y = y + (D[:, None] if D.ndim == 1 else D) * x[b, t]
            if z is not None:
                y = y * silu(z[b, t])
            out[b, t] = y
        seq_finals.append(h.copy())
        final[b] = h
    return out, final, seq_finals


def state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                 state_batch_indices=None):
    """mamba_ssm's selective_state_update_ref in f64 on the general (per head and
    dim) layout; returns (out, new_state)."""
    state = f64(state).copy()
    has_heads = state.ndim == 4
    x, dt, A, B, C, D, z, dt_bias = map(f64, (x, dt, A, B, C, D, z, dt_bias))
    if not has_heads:
        state = state[:, None]
        x, dt, A = x[:, None], dt[:, None], A[None]
        D = None if D is None else D[None]
        z = None if z is None else z[:, None]
        dt_bias = None if dt_bias is None else dt_bias[None]
    if B.ndim == 2:
        B, C = B[:, None], C[:, None]
    batch, heads = x.shape[0], x.shape[1]
    rep = heads // B.shape[1]
    if dt_bias is not None:
        dt = dt + dt_bias
    if dt_softplus:
        dt = softplus(dt)
    out = np.zeros_like(x)
    for i in range(batch):
        row = i if state_batch_indices is None else int(state_batch_indices[i])
        if row < 0:
            continue
        Bh = np.repeat(B[i], rep, axis=0)[:, None, :]  # (H, 1, N)
        Ch = np.repeat(C[i], rep, axis=0)[:, None, :]
        d = dt[i][:, :, None]
        s = state[row] * np.exp(A * d) + d * Bh * x[i][:, :, None]
        state[row] = s
        y = (s * Ch).sum(-1)
        if D is not None:
            y = y + D * x[i]
        if z is not None:
            y = y * silu(z[i])
        out[i] = y
    if not has_heads:
        out, state = out[:, 0], state[:, 0]
    return out, state


def rel_err(got, want):
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert np.all(np.isfinite(got)), "non-finite output (unwritten or overflowed)"
    den = np.linalg.norm(want)
    return float(np.linalg.norm(got - want) / (den if den > 0 else 1.0))
