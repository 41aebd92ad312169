"""The package on NumPy arrays (the CPU ports) against the float64 oracle of
oracle.py, on fresh random inputs; plus the errors that name the argument.
Runs without torch (.ci/run)."""

import subprocess
import sys

import numpy as np
import pytest

import ssm_kernels as sk
import oracle

# Relative L2 budgets (docs/TOLERANCES.md: f32 base 1e-5 plus accumulation;
# f16 outputs 4e-3 plus accumulation).
BUDGET = {np.float32: 2e-4, np.float16: 1e-2}


def rng(seed):
    return np.random.default_rng(seed)


def randn(r, *shape, dtype=np.float32, scale=1.0):
    return (r.standard_normal(shape) * scale).astype(dtype)


def test_importable_without_torch():
    code = "import sys; sys.modules['torch'] = None; import ssm_kernels; print(sorted(ssm_kernels.__all__))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "selective_scan_fn" in res.stdout


# ---------------------------------------------------------------- selective scan


def scan_inputs(r, batch=2, d_inner=8, d_state=4, seqlen=37, bc="grouped", groups=2,
                dtype=np.float32):
    u = randn(r, batch, d_inner, seqlen, dtype=dtype)
    delta = (r.random((batch, d_inner, seqlen)) * 0.5).astype(dtype)
    A = -np.exp(randn(r, d_inner, d_state) * 0.5)
    shape = {"const": (d_inner, d_state), "var": (batch, d_state, seqlen),
             "grouped": (batch, groups, d_state, seqlen)}[bc]
    B = randn(r, *shape, dtype=dtype)
    C = randn(r, *shape, dtype=dtype)
    return u, delta, A, B, C


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("bc", ["const", "var", "grouped"])
def test_selective_scan_matches_oracle(dtype, bc):
    r = rng(1)
    u, delta, A, B, C = scan_inputs(r, bc=bc, dtype=dtype)
    d_inner = u.shape[1]
    D = randn(r, d_inner)
    z = randn(r, *u.shape, dtype=dtype)
    bias = randn(r, d_inner, scale=0.3)
    out, last = sk.selective_scan_fn(u, delta, A, B, C, D, z, bias, delta_softplus=True,
                                     return_last_state=True)
    assert out.dtype == dtype and out.shape == u.shape
    assert last.dtype == np.float32 and last.shape == (2, d_inner, A.shape[1])
    want, want_last = oracle.selective_scan(u, delta, A, B, C, D, z, bias, True)
    assert oracle.rel_err(out, want) < BUDGET[dtype]
    assert oracle.rel_err(last, want_last) < BUDGET[np.float32] * (50 if dtype == np.float16 else 1)


def test_selective_scan_plain_returns_one_array():
    r = rng(2)
    u, delta, A, B, C = scan_inputs(r, bc="var")
    out = sk.selective_scan_fn(u, delta, A, B, C)
    assert isinstance(out, np.ndarray)
    want, _ = oracle.selective_scan(u, delta, A, B, C)
    assert oracle.rel_err(out, want) < BUDGET[np.float32]


def test_selective_scan_initial_states_and_varlen():
    r = rng(3)
    u, delta, A, B, C = scan_inputs(r, batch=1, seqlen=50, bc="grouped")
    cu = np.array([0, 7, 7, 31, 50], dtype=np.int64)
    h0 = randn(r, 4, u.shape[1], A.shape[1])
    out, last = sk.selective_scan_fn(u, delta, A, B, C, return_last_state=True,
                                     initial_states=h0, cu_seqlens=cu)
    want, want_last = oracle.selective_scan(u, delta, A, B, C, initial_states=h0, cu_seqlens=cu)
    assert oracle.rel_err(out, want) < BUDGET[np.float32]
    assert oracle.rel_err(last, want_last) < BUDGET[np.float32]


def test_selective_scan_errors_name_the_argument():
    r = rng(4)
    u, delta, A, B, C = scan_inputs(r, bc="var")
    with pytest.raises(ValueError, match="`delta`"):
        sk.selective_scan_fn(u, delta[:, :, 1:], A, B, C)
    with pytest.raises(ValueError, match="`C`"):
        sk.selective_scan_fn(u, delta, A, B, C[:, 1:])
    with pytest.raises(ValueError, match="`D`"):
        sk.selective_scan_fn(u, delta, A, B, C, D=np.ones(3, np.float32))
    with pytest.raises(ValueError, match="`B`"):
        sk.selective_scan_fn(u, delta, A, np.ones((2, 3, 4, 37), np.float32), C)
    with pytest.raises(TypeError, match="`u`"):
        sk.selective_scan_fn(u.astype(np.float64), delta, A, B, C)
    with pytest.raises(ValueError, match="`cu_seqlens`"):
        sk.selective_scan_fn(u, delta, A, B, C, cu_seqlens=np.array([0, 37]))


# ---------------------------------------------------------------- SSD


def ssd_inputs(r, batch=2, seqlen=45, heads=4, head_dim=8, d_state=6, groups=2, dtype=np.float32):
    x = randn(r, batch, seqlen, heads, head_dim, dtype=dtype)
    dt = randn(r, batch, seqlen, heads, dtype=dtype, scale=0.5)
    A = -np.exp(randn(r, heads, scale=0.5))
    B = randn(r, batch, seqlen, groups, d_state, dtype=dtype)
    C = randn(r, batch, seqlen, groups, d_state, dtype=dtype)
    return x, dt, A, B, C


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("d_shape", ["H", "HP", None])
def test_chunk_scan_matches_oracle(dtype, d_shape):
    r = rng(5)
    x, dt, A, B, C = ssd_inputs(r, dtype=dtype)
    heads, head_dim = x.shape[2], x.shape[3]
    D = {"H": randn(r, heads), "HP": randn(r, heads, head_dim), None: None}[d_shape]
    z = randn(r, *x.shape, dtype=dtype)
    bias = randn(r, heads, scale=0.3)
    h0 = randn(r, 2, heads, head_dim, 6)
    out, final = sk.mamba_chunk_scan_combined(
        x, dt, A, B, C, 16, D=D, z=z, dt_bias=bias, initial_states=h0, dt_softplus=True,
        return_final_states=True)
    want, want_final, _ = oracle.ssd(x, dt, A, B, C, D, z, bias, True, initial_states=h0)
    assert out.dtype == dtype and out.shape == x.shape
    assert oracle.rel_err(out, want) < BUDGET[dtype]
    assert oracle.rel_err(final, want_final) < BUDGET[np.float32] * (50 if dtype == np.float16 else 1)


def test_chunk_scan_dt_limit_and_plain_return():
    r = rng(6)
    x, dt, A, B, C = ssd_inputs(r)
    out = sk.mamba_chunk_scan_combined(x, dt, A, B, C, 64, dt_softplus=True, dt_limit=(0.1, 0.6))
    want, _, _ = oracle.ssd(x, dt, A, B, C, dt_softplus=True, dt_limit=(0.1, 0.6))
    assert isinstance(out, np.ndarray)
    assert oracle.rel_err(out, want) < BUDGET[np.float32]


def test_chunk_scan_seq_idx_resets_state_per_row():
    r = rng(7)
    x, dt, A, B, C = ssd_inputs(r, batch=2, seqlen=40)
    seq_idx = np.zeros((2, 40), dtype=np.int32)
    seq_idx[0, 13:] = 1
    seq_idx[0, 29:] = 2
    seq_idx[1, 5:] = 1
    h0 = randn(r, 2, 4, 8, 6)
    out, final = sk.mamba_chunk_scan_combined(x, dt, A, B, C, 16, initial_states=h0,
                                              seq_idx=seq_idx, return_final_states=True)
    want, want_final, _ = oracle.ssd(x, dt, A, B, C, initial_states=h0, seq_idx=seq_idx)
    assert oracle.rel_err(out, want) < BUDGET[np.float32]
    assert oracle.rel_err(final, want_final) < BUDGET[np.float32]


def test_chunk_scan_varlen_states():
    r = rng(8)
    x, dt, A, B, C = ssd_inputs(r, batch=1, seqlen=60)
    cu = np.array([0, 11, 40, 60], dtype=np.int64)
    seq_idx = np.repeat(np.arange(3), np.diff(cu))[None].astype(np.int32)
    out, final, varlen = sk.mamba_chunk_scan_combined(
        x, dt, A, B, C, 16, seq_idx=seq_idx, cu_seqlens=cu, return_final_states=True,
        return_varlen_states=True)
    want, want_final, seq_finals = oracle.ssd(x, dt, A, B, C, seq_idx=seq_idx)
    assert oracle.rel_err(out, want) < BUDGET[np.float32]
    assert oracle.rel_err(final, want_final) < BUDGET[np.float32]
    assert varlen.shape == (3, 4, 8, 6)
    assert oracle.rel_err(varlen, np.stack(seq_finals)) < BUDGET[np.float32]
    # cu_seqlens alone separates the sequences the same way.
    out2, varlen2 = sk.mamba_chunk_scan_combined(x, dt, A, B, C, 16, cu_seqlens=cu,
                                                 return_varlen_states=True)
    np.testing.assert_array_equal(out2, out)
    np.testing.assert_array_equal(varlen2, varlen)


def test_chunk_scan_errors_name_the_argument():
    r = rng(9)
    x, dt, A, B, C = ssd_inputs(r)
    with pytest.raises(ValueError, match="`dt`"):
        sk.mamba_chunk_scan_combined(x, dt[:, :, :3], A, B, C, 64)
    with pytest.raises(ValueError, match="`B`"):
        sk.mamba_chunk_scan_combined(x, dt, A, B[:, :, :, :1].repeat(3, axis=2), C, 64)
    with pytest.raises(ValueError, match="`D`"):
        sk.mamba_chunk_scan_combined(x, dt, A, B, C, 64, D=np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match="`dt_limit`"):
        sk.mamba_chunk_scan_combined(x, dt, A, B, C, 64, dt_limit=(1.0, 0.5))
    with pytest.raises(ValueError, match="`cu_seqlens`"):
        sk.mamba_chunk_scan_combined(x, dt, A, B, C, 64, return_varlen_states=True)
    with pytest.raises(ValueError, match="`initial_states`"):
        sk.mamba_chunk_scan_combined(x, dt, A, B, C, 64, initial_states=np.zeros((2, 4, 8, 5)))


# ---------------------------------------------------------------- decode steps


def test_state_update_mamba1_matches_oracle():
    r = rng(10)
    b, d, n = 3, 16, 8
    state = randn(r, b, d, n)
    x, dt, z = randn(r, b, d), randn(r, b, d, scale=0.5), randn(r, b, d)
    A = -np.exp(randn(r, d, n, scale=0.5))
    B, C = randn(r, b, n), randn(r, b, n)
    D, bias = randn(r, d), randn(r, d, scale=0.3)
    want, want_state = oracle.state_update(state, x, dt, A, B, C, D, z, bias, True)
    out = sk.selective_state_update(state, x, dt, A, B, C, D, z, bias, dt_softplus=True)
    assert oracle.rel_err(out, want) < BUDGET[np.float32]
    assert oracle.rel_err(state, want_state) < BUDGET[np.float32]


@pytest.mark.parametrize("tied", [True, False])
def test_state_update_mamba2_matches_oracle(tied):
    r = rng(11)
    b, h, p, n, g = 4, 4, 8, 16, 2
    cache = 6
    state = randn(r, cache, h, p, n)
    x = randn(r, b, h, p)
    if tied:
        # mamba_ssm's Mamba2 passes dt, A, dt_bias broadcast over the head dimension.
        dt = np.broadcast_to(randn(r, b, h, 1, scale=0.5), (b, h, p))
        A = np.broadcast_to(-np.exp(randn(r, h, 1, 1, scale=0.5)), (h, p, n))
        bias = np.broadcast_to(randn(r, h, 1, scale=0.3), (h, p))
        D = np.broadcast_to(randn(r, h, 1), (h, p))
    else:
        dt = randn(r, b, h, p, scale=0.5)
        A = -np.exp(randn(r, h, p, n, scale=0.5))
        bias = randn(r, h, p, scale=0.3)
        D = randn(r, h, p)
    B, C = randn(r, b, g, n), randn(r, b, g, n)
    idx = np.array([5, -1, 0, 2], dtype=np.int32)
    want, want_state = oracle.state_update(state, x, dt, A, B, C, D, None, bias, True, idx)
    out = sk.selective_state_update(state, x, dt, A, B, C, D, None, bias, dt_softplus=True,
                                    state_batch_indices=idx)
    rows = [0, 2, 3]  # row 1 is padding: its output is unspecified
    assert oracle.rel_err(out[rows], want[rows]) < BUDGET[np.float32]
    assert oracle.rel_err(state, want_state) < BUDGET[np.float32]


def test_state_update_converts_a_non_f32_state_in_place():
    r = rng(12)
    b, d, n = 2, 8, 4
    state = randn(r, b, d, n).astype(np.float16)
    x, dt = randn(r, b, d), randn(r, b, d, scale=0.5)
    A = -np.exp(randn(r, d, n, scale=0.5))
    B, C = randn(r, b, n), randn(r, b, n)
    want, want_state = oracle.state_update(state, x, dt, A, B, C)
    sk.selective_state_update(state, x, dt, A, B, C)
    assert state.dtype == np.float16
    assert oracle.rel_err(state, want_state) < BUDGET[np.float16]


def test_state_update_errors_name_the_argument():
    r = rng(13)
    state = randn(r, 2, 8, 4)
    x, dt = randn(r, 2, 8), randn(r, 2, 8)
    A = randn(r, 8, 4)
    B, C = randn(r, 2, 4), randn(r, 2, 4)
    with pytest.raises(ValueError, match="`A`"):
        sk.selective_state_update(state, x, dt, A[:, :3], B, C)
    with pytest.raises(ValueError, match="`dt_bias`"):
        sk.selective_state_update(state, x, dt, A, B, C, dt_bias=np.ones(3, np.float32))
    with pytest.raises(ValueError, match="`state_batch_indices`"):
        sk.selective_state_update(state, x, dt, A, B, C, state_batch_indices=np.array([0, 7]))
    with pytest.raises(ValueError, match="`state`"):
        sk.selective_state_update(state[:, :, :, None, None], x, dt, A, B, C)


def test_strided_views_are_copied_and_kept_alive():
    # Inputs that must be made contiguous (slices of larger arrays, broadcasts)
    # become temporaries; each must outlive the native call that reads it.
    r = rng(14)
    b, d, n = 4, 32, 8
    big = randn(r, b, 3 * n + 2 * d)
    B, C = big[:, 1:1 + n], big[:, 2 * n:3 * n]
    z = big[:, 3 * n + 1:3 * n + 1 + d]
    x, dt = randn(r, b, d), randn(r, b, d, scale=0.5)
    A = np.broadcast_to(-np.exp(randn(r, 1, n, scale=0.5)), (d, n))
    D = np.broadcast_to(randn(r, 1), (d,))
    for _ in range(3):
        state = randn(r, b, d, n)
        want, want_state = oracle.state_update(state, x, dt, A, B, C, D, z, None, True)
        out = sk.selective_state_update(state, x, dt, A, B, C, D, z, dt_softplus=True)
        assert oracle.rel_err(out, want) < BUDGET[np.float32]
        assert oracle.rel_err(state, want_state) < BUDGET[np.float32]
