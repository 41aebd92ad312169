"""The operations, written once over an array backend (`_backend.py`): argument
checks in mamba_ssm's layouts, conversion to the native layouts, the native call.

Forward functions return plain arrays; the backward functions return the
gradients of every differentiable input. `ssm_kernels/__init__.py` picks the
backend; `_torch.py` wraps these in `torch.autograd.Function`s.
"""

import numpy as np

from . import _shapes as S
from ._backend import raws


def grad_outputs(be, inputs, **dtypes):
    """The backward's output arrays: `d<name>` shaped as `inputs[name]`, of the
    dtype given for it (in that order), `None` where the input is absent."""
    return {f"d{name}": None if inputs[name] is None else be.empty(inputs[name].shape, dtype)
            for name, dtype in dtypes.items()}


# ------------------------------------------------------------------ Mamba-1 scan


class ScanCall:
    """A validated selective-scan call: sizes, layouts and the converted inputs."""

    def __init__(self, be, u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                 return_last_state, initial_states, cu_seqlens):
        self.be = be
        S.expect_ndim("u", u, {3: "(b, D, L)"})
        batch, d_inner, seqlen = (int(s) for s in u.shape)
        S.expect_ndim("A", A, {2: "(D, N)"})
        d_state = int(A.shape[1])
        S.expect("A", A, ("D", "N"), (d_inner, d_state))
        S.expect("delta", delta, ("b", "D", "L"), (batch, d_inner, seqlen))
        self.dtype = be.dtype_name("u", u)
        self.groups = []
        self.squeeze = []
        bc = []
        for name, t in (("B", B), ("C", C)):
            S.expect_ndim(name, t, {2: "(D, N)", 3: "(b, N, L)", 4: "(b, G, N, L)"})
            if t.ndim == 2:
                S.expect(name, t, ("D", "N"), (d_inner, d_state))
                self.groups.append(None)
            elif t.ndim == 3:
                S.expect(name, t, ("b", "N", "L"), (batch, d_state, seqlen))
                self.groups.append(1)
            else:
                g = int(t.shape[1])
                S.divides(name, g, "D", d_inner)
                S.expect(name, t, ("b", "G", "N", "L"), (batch, g, d_state, seqlen))
                self.groups.append(g)
            self.squeeze.append(t.ndim == 3)
            bc.append(be.contig(name, t, self.dtype))
        S.expect("D", D, ("D",), (d_inner,))
        S.expect("z", z, ("b", "D", "L"), (batch, d_inner, seqlen))
        S.expect("delta_bias", delta_bias, ("D",), (d_inner,))
        self.num_seqs = batch
        if cu_seqlens is not None:
            S.expect_ndim("cu_seqlens", cu_seqlens, {1: "(num_seqs + 1)"})
            if batch != 1:
                raise ValueError(f"argument `cu_seqlens`: varlen input needs batch 1, got b={batch}")
            self.num_seqs = int(cu_seqlens.shape[0]) - 1
        S.expect("initial_states", initial_states, ("seqs", "D", "N"), (self.num_seqs, d_inner, d_state))
        self.dims = (batch, d_inner, d_state, seqlen)
        self.softplus = bool(delta_softplus)
        self.return_last_state = bool(return_last_state)
        self.has_initial = initial_states is not None
        be.check_same_device(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias,
                             initial_states=initial_states, cu_seqlens=cu_seqlens)
        self.inputs = dict(
            u=be.contig("u", u, self.dtype),
            delta=be.contig("delta", delta, self.dtype),
            A=be.f32("A", A),
            B=bc[0],
            C=bc[1],
            D=be.f32("D", D),
            z=be.contig("z", z, self.dtype),
            delta_bias=be.f32("delta_bias", delta_bias),
            initial_states=be.f32("initial_states", initial_states),
            cu_seqlens=be.i64("cu_seqlens", cu_seqlens),
        )

    def native_call(self):
        """The call's sizes and options as the native `ScanCall` (crates/python/src/lib.rs)."""
        return (self.dims, self.groups[0], self.groups[1], self.softplus)

    def forward(self):
        be = self.be
        batch, d_inner, d_state, seqlen = self.dims
        out = be.empty((batch, d_inner, seqlen), self.dtype)
        last = be.empty((self.num_seqs, d_inner, d_state), "float32") if self.return_last_state else None
        t = raws(be, **self.inputs, out=out, final_states=last)
        be.call("scan_fwd", self.dtype, self.native_call(), tensors=t)
        return out, last

    def backward(self, d_out, d_last):
        """Gradients `(du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_states)`
        in the inputs' layouts (B and C as given: squeezed when 3-D)."""
        be = self.be
        batch, d_inner, d_state, seqlen = self.dims
        inp = self.inputs
        d_out = be.contig("d_out", d_out, self.dtype)
        d_last = be.f32("d_final_states", d_last) if (d_last is not None and self.return_last_state) else None
        seq = self.dtype
        g = grad_outputs(be, inp, u=seq, delta=seq, A="float32", B=seq, C=seq, D="float32", z=seq,
                         delta_bias="float32", initial_states="float32")
        t = raws(be, **inp, d_out=d_out, d_final_states=d_last, **g)
        be.call("scan_bwd", self.dtype, self.native_call(), self.return_last_state and d_last is not None,
                tensors=t)
        return g


def selective_scan(be, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, initial_states=None, cu_seqlens=None):
    call = ScanCall(be, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
                    initial_states, cu_seqlens)
    out, last = call.forward()
    return (out, last) if return_last_state else out


# ------------------------------------------------------------------ Mamba-2 SSD


def sequences_of(seq_idx, cu_seqlens, batch, seqlen):
    """The sequences of an SSD call as offsets into the flattened `(b * L)` tokens.

    mamba_ssm separates sequences inside a row by `seq_idx` (the state resets
    where it changes); rows are always separate. Returns `(cu, first, last)`:
    `cu` the offsets (`num_seqs + 1`), `first[r]`/`last[r]` the index of the
    first/last sequence of row r, or `None` when every row is one sequence.
    With `cu_seqlens` and no `seq_idx`, `cu_seqlens` marks the boundaries
    (batch 1).
    """
    if seq_idx is None and cu_seqlens is None:
        return None, None, None
    if seq_idx is not None:
        si = np.asarray(seq_idx).reshape(batch, seqlen)
        starts = []
        for r in range(batch):
            row = si[r]
            change = np.nonzero(row[1:] != row[:-1])[0] + 1
            starts.append(np.concatenate(([0], change)) + r * seqlen)
        starts = np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)
        cu = np.concatenate((starts, [batch * seqlen])).astype(np.int64)
        if cu_seqlens is not None:
            given = np.asarray(cu_seqlens, dtype=np.int64).reshape(-1)
            if batch == 1 and not np.array_equal(given, cu):
                raise ValueError(
                    "argument `cu_seqlens`: does not match the sequence boundaries of `seq_idx`"
                )
    else:
        if batch != 1:
            raise ValueError(f"argument `cu_seqlens`: varlen input needs batch 1, got b={batch}")
        cu = np.asarray(cu_seqlens, dtype=np.int64).reshape(-1)
        if cu.size < 2 or cu[0] != 0 or cu[-1] != seqlen or np.any(np.diff(cu) < 0):
            raise ValueError(
                f"argument `cu_seqlens`: expected 0 = cu[0] <= ... <= cu[-1] = L = {seqlen}, got {cu.tolist()}"
            )
    row_starts = np.arange(batch) * seqlen
    first = np.searchsorted(cu[:-1], row_starts, side="right") - 1
    last = np.searchsorted(cu[:-1], row_starts + seqlen, side="left") - 1
    return cu, first, last


class SsdCall:
    """A validated mamba_chunk_scan_combined call."""

    def __init__(self, be, x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx,
                 cu_seqlens, dt_softplus, dt_limit, return_final_states, return_varlen_states):
        self.be = be
        S.expect_ndim("x", x, {4: "(b, L, H, P)"})
        batch, seqlen, heads, head_dim = (int(s) for s in x.shape)
        S.expect_ndim("B", B, {4: "(b, L, G, N)"})
        groups, d_state = int(B.shape[2]), int(B.shape[3])
        S.divides("B", groups, "H", heads)
        S.expect("B", B, ("b", "L", "G", "N"), (batch, seqlen, groups, d_state))
        S.expect("C", C, ("b", "L", "G", "N"), (batch, seqlen, groups, d_state))
        S.expect("dt", dt, ("b", "L", "H"), (batch, seqlen, heads))
        S.expect("A", A, ("H",), (heads,))
        if D is not None:
            S.expect_ndim("D", D, {1: "(H)", 2: "(H, P)"})
            if D.ndim == 1:
                S.expect("D", D, ("H",), (heads,))
            else:
                S.expect("D", D, ("H", "P"), (heads, head_dim))
        S.expect("z", z, ("b", "L", "H", "P"), (batch, seqlen, heads, head_dim))
        S.expect("dt_bias", dt_bias, ("H",), (heads,))
        S.expect("seq_idx", seq_idx, ("b", "L"), (batch, seqlen))
        positive("chunk_size", chunk_size)
        if return_varlen_states and cu_seqlens is None:
            raise ValueError("argument `cu_seqlens`: required with return_varlen_states=True")
        self.dtype = be.dtype_name("x", x)
        be.check_same_device(x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias,
                             initial_states=initial_states)
        host_seq = be.to_host(seq_idx) if seq_idx is not None else None
        host_cu = be.to_host(cu_seqlens) if cu_seqlens is not None else None
        cu, first, last = sequences_of(host_seq, host_cu, batch, seqlen)
        self.shape = (batch, seqlen, heads, head_dim, d_state, groups)
        self.cu = cu
        self.first, self.last = first, last
        self.num_seqs = batch if cu is None else int(cu.size - 1)
        # The native call: one row of b * L tokens when sequences are given.
        nb, nl = (batch, seqlen) if cu is None else (1, batch * seqlen)
        self.dims = (nb, nl, heads, head_dim, d_state, groups)
        # Initial states: mamba_ssm's (b, H, P, N) start each row's first
        # sequence (the others start from zero); ours may also be per sequence.
        self.init_mode = None
        init = None
        if initial_states is not None:
            state = (heads, head_dim, d_state)
            if cu is not None and int(initial_states.shape[0]) == self.num_seqs and self.num_seqs != batch:
                S.expect("initial_states", initial_states, ("seqs", "H", "P", "N"), (self.num_seqs,) + state)
                self.init_mode = "per_sequence"
                init = be.f32("initial_states", initial_states)
            else:
                S.expect("initial_states", initial_states, ("b", "H", "P", "N"), (batch,) + state)
                init = be.f32("initial_states", initial_states)
                if cu is not None and self.num_seqs != batch:
                    self.init_mode = "rows"
                    full = be.zeros((self.num_seqs,) + state, "float32")
                    be.scatter_rows(full, first, init)
                    init = full
                else:
                    self.init_mode = "per_sequence"
        self.has_initial = init is not None
        self.d_per_head_dim = D is not None and D.ndim == 2
        self.softplus = bool(dt_softplus)
        lo, hi = dt_limit
        self.dt_limit = (float(lo), float(hi))
        self.chunk_size = int(chunk_size)
        self.return_final_states = bool(return_final_states)
        self.return_varlen_states = bool(return_varlen_states)
        self.want_states = self.return_final_states or self.return_varlen_states
        flat = lambda t: None if t is None else t.reshape((nb, nl) + tuple(t.shape[2:]))  # noqa: E731
        self.inputs = dict(
            x=flat(be.contig("x", x, self.dtype)),
            dt=flat(be.contig("dt", dt, self.dtype)),
            A=be.f32("A", A),
            B=flat(be.contig("B", B, self.dtype)),
            C=flat(be.contig("C", C, self.dtype)),
            D=be.f32("D", D),
            z=flat(be.contig("z", z, self.dtype)),
            dt_bias=be.f32("dt_bias", dt_bias),
            initial_states=init,
        )

    def native_args(self):
        """The dtype and the native `SsdCall` (crates/python/src/lib.rs)."""
        cu = None if self.cu is None else [int(v) for v in self.cu]
        return (self.dtype, (self.dims, self.d_per_head_dim, self.softplus, self.dt_limit,
                             self.be.ssd_chunk(self.chunk_size), cu))

    def forward(self):
        """`(out, final_states, varlen_states)` in mamba_ssm's shapes (the last two
        `None` unless asked for)."""
        be = self.be
        batch, seqlen, heads, head_dim, d_state, _ = self.shape
        out = be.empty(self.dims[:2] + (heads, head_dim), self.dtype)
        states = (be.empty((self.num_seqs, heads, head_dim, d_state), "float32")
                  if self.want_states else None)
        t = raws(be, **self.inputs, out=out, final_states=states)
        be.call("ssd_fwd", *self.native_args(), tensors=t)
        out = out.reshape(batch, seqlen, heads, head_dim)
        final = varlen = None
        if states is not None:
            varlen = states
            final = states if self.cu is None else be.take_rows(states, self.last)
        return out, (final if self.return_final_states else None), (
            varlen if self.return_varlen_states else None)

    def backward(self, d_out, d_final, d_varlen):
        """Gradients (dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinitial_states) in the
        inputs' shapes."""
        be = self.be
        batch, seqlen, heads, head_dim, d_state, groups = self.shape
        inp = self.inputs
        nb, nl = self.dims[:2]
        d_out = be.contig("d_out", d_out, self.dtype).reshape(nb, nl, heads, head_dim)
        d_states = None
        if self.want_states and (d_final is not None or d_varlen is not None):
            d_states = be.zeros((self.num_seqs, heads, head_dim, d_state), "float32")
            if d_varlen is not None:
                d_states = d_states + be.f32("d_varlen_states", d_varlen)
            if d_final is not None:
                d_final = be.f32("d_final_states", d_final)
                if self.cu is None:
                    d_states = d_states + d_final
                else:
                    be.add_rows(d_states, self.last, d_final)
            d_states = be.f32("d_final_states", d_states)
        seq = self.dtype
        g = grad_outputs(be, inp, x=seq, dt=seq, A="float32", B=seq, C=seq, D="float32", z=seq,
                         dt_bias="float32", initial_states="float32")
        t = raws(be, **inp, d_out=d_out, d_final_states=d_states, **g)
        be.call("ssd_bwd", *self.native_args(), d_states is not None, tensors=t)
        unflat = lambda a: None if a is None else a.reshape((batch, seqlen) + tuple(a.shape[2:]))  # noqa: E731
        for k in ("dx", "ddt", "dB", "dC", "dz"):
            g[k] = unflat(g[k])
        if g["dinitial_states"] is not None and self.init_mode == "rows":
            g["dinitial_states"] = be.take_rows(g["dinitial_states"], self.first)
        return g


def positive(name, v):
    S.positive(name, v)


def chunk_scan_combined(be, x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None,
                        initial_states=None, seq_idx=None, cu_seqlens=None, dt_softplus=False,
                        dt_limit=(0.0, float("inf")), return_final_states=False,
                        return_varlen_states=False):
    call = SsdCall(be, x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx,
                   cu_seqlens, dt_softplus, dt_limit, return_final_states, return_varlen_states)
    out, final, varlen = call.forward()
    return pack_ssd(out, final, varlen, return_final_states, return_varlen_states)


def pack_ssd(out, final, varlen, return_final_states, return_varlen_states):
    """mamba_ssm's return convention."""
    if not return_varlen_states:
        return (out, final) if return_final_states else out
    return (out, final, varlen) if return_final_states else (out, varlen)


# ------------------------------------------------------------------ decode steps


def _tied(be, t, axes):
    """Whether `t` is broadcast (stride 0) along every axis in `axes`."""
    strides = be.strides_elems(t)
    return all(strides[a] == 0 or t.shape[a] == 1 for a in axes)


def state_update(be, state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                 state_batch_indices=None):
    """mamba_ssm's selective_state_update: `state` is updated in place, the output
    returned. A 3-D state is the Mamba-1 step; a 4-D state with dt, A and dt_bias
    broadcast over the head dimension (stride 0, as mamba_ssm's Mamba2 passes them)
    is the Mamba-2 step; any other 4-D state is the Mamba-1 step over H * P channels."""
    S.expect_ndim("state", state, {3: "(batch, dim, dstate)", 4: "(batch, nheads, dim, dstate)"})
    has_heads = state.ndim == 4
    if has_heads:
        cache_rows, heads, dim, d_state = (int(s) for s in state.shape)
    else:
        cache_rows, dim, d_state = (int(s) for s in state.shape)
        heads = 1
    xs = (heads, dim) if has_heads else (dim,)
    S.expect_ndim("x", x, {len(xs) + 1: "(batch, " + ("nheads, " if has_heads else "") + "dim)"})
    batch = int(x.shape[0])
    S.expect("x", x, ("batch",) + (("nheads", "dim") if has_heads else ("dim",)), (batch,) + xs)
    S.expect("dt", dt, ("batch",) + (("nheads", "dim") if has_heads else ("dim",)), (batch,) + xs)
    S.expect("A", A, (("nheads", "dim", "dstate") if has_heads else ("dim", "dstate")), xs + (d_state,))
    for name, t in (("B", B), ("C", C)):
        S.expect_ndim(name, t, {2: "(batch, dstate)", 3: "(batch, ngroups, dstate)"})
    groups = 1 if B.ndim == 2 else int(B.shape[1])
    S.divides("B", groups, "nheads" if has_heads else "dim", heads if has_heads else dim)
    for name, t in (("B", B), ("C", C)):
        if t.ndim == 2:
            S.expect(name, t, ("batch", "dstate"), (batch, d_state))
        else:
            S.expect(name, t, ("batch", "ngroups", "dstate"), (batch, groups, d_state))
    pshape = (("nheads", "dim") if has_heads else ("dim",))
    S.expect("D", D, pshape, xs)
    S.expect("z", z, ("batch",) + pshape, (batch,) + xs)
    S.expect("dt_bias", dt_bias, pshape, xs)
    if state_batch_indices is not None:
        S.expect("state_batch_indices", state_batch_indices, ("batch",), (batch,))
    elif cache_rows != batch:
        S.expect("state", state, ("batch",) + pshape + ("dstate",), (batch,) + xs + (d_state,))
    dtype = be.dtype_name("x", x)
    be.check_same_device(state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias,
                         state_batch_indices=state_batch_indices)
    st = be.state_f32(state)
    idx = be.i64("state_batch_indices", state_batch_indices)
    m2 = (has_heads and _tied(be, dt, (2,)) and _tied(be, A, (1, 2))
          and (dt_bias is None or _tied(be, dt_bias, (1,))))
    out = be.empty((batch,) + xs, dtype)
    if m2:
        d_per_head_dim = D is not None and not _tied(be, D, (1,))
        # `ins` holds the converted tensors (copies where they had to be made)
        # until the native call has returned: the native module only sees addresses.
        ins = dict(
            x=be.contig("x", x, dtype),
            dt=be.contig("dt", dt[:, :, 0], dtype),
            A=be.f32("A", A[:, 0, 0]),
            B=be.contig("B", B, dtype),
            C=be.contig("C", C, dtype),
            D=None if D is None else be.f32("D", D if d_per_head_dim else D[:, 0]),
            z=be.contig("z", z, dtype),
            dt_bias=None if dt_bias is None else be.f32("dt_bias", dt_bias[:, 0]),
            state_batch_indices=idx,
            state=st,
            out=out,
        )
        be.call("m2_step", dtype, (batch, heads, dim, d_state, groups, cache_rows), d_per_head_dim,
                bool(dt_softplus), (float("-inf"), float("inf")), tensors=raws(be, **ins))
    else:
        d_inner = heads * dim
        ins = dict(
            x=be.contig("x", x, dtype),
            dt=be.contig("dt", dt, dtype),
            A=be.f32("A", A),
            B=be.contig("B", B, dtype),
            C=be.contig("C", C, dtype),
            D=be.f32("D", D),
            z=be.contig("z", z, dtype),
            dt_bias=be.f32("dt_bias", dt_bias),
            state_batch_indices=idx,
            state=st,
            out=out,
        )
        be.call("m1_step", dtype, (batch, d_inner, d_state, groups, cache_rows), bool(dt_softplus),
                tensors=raws(be, **ins))
    del ins
    be.state_writeback(state, st)
    return out
