"""The package on torch tensors: forward and gradients against the float64
torch recurrences of torch_ref.py, on CPU tensors (the CPU ports) and, where a
GPU is present, CUDA tensors (our kernels on torch's stream). Skipped (and
said so) without torch; CUDA cases skipped without a GPU unless
SSM_REQUIRE_GPU=1, which makes a missing GPU a failure (the device run)."""

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: the torch path is untested here")

import ssm_kernels as sk  # noqa: E402
import torch_ref  # noqa: E402
from ssm_kernels import compat  # noqa: E402

REQUIRE_GPU = os.environ.get("SSM_REQUIRE_GPU") == "1"
DEVICES = ["cpu"]
if torch.cuda.is_available():
    DEVICES.append("cuda")
elif REQUIRE_GPU:
    DEVICES.append("cuda")  # fails loudly below: SSM_REQUIRE_GPU=1 and no GPU

# Relative L2 budgets against the float64 recurrence fed the same rounded inputs.
OUT = {torch.float32: 2e-4, torch.bfloat16: 1.5e-2, torch.float16: 5e-3}
GRAD = {torch.float32: 2e-3, torch.bfloat16: 1.5e-2, torch.float16: 1e-2}


def dev(name):
    if name == "cuda" and not torch.cuda.is_available():
        pytest.fail("SSM_REQUIRE_GPU=1 but torch sees no CUDA device")
    return torch.device(name)


def rel(got, want):
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    assert got.shape == want.shape, (got.shape, want.shape)
    assert torch.isfinite(got).all(), "non-finite values"
    den = want.norm().item()
    return (got - want).norm().item() / (den if den > 0 else 1.0)


def leaf(t, device, dtype=None):
    return t.to(device=device, dtype=dtype or t.dtype).detach().requires_grad_()


def grads_match(ours, refs, dtype, names):
    bad = {}
    for name, a, b in zip(names, ours, refs):
        if b.grad is None:
            continue
        assert a.grad is not None, f"no gradient for {name}"
        e = rel(a.grad, b.grad)
        budget = GRAD[dtype] if a.dtype == dtype else GRAD[torch.float32] * (10 if dtype != torch.float32 else 1)
        if e > budget:
            bad[name] = e
    assert not bad, f"gradients over budget: {bad}"


def leaves(seq, par, device, dtype):
    """The sequence tensors `seq` in `dtype` and the parameters `par` (as they
    are) as leaves on `device`, and the oracle's float64 CPU leaves of the same
    rounded values: (ours_seq, ours_par, ref_seq, ref_par)."""
    ours_seq = [leaf(t, device, dtype) for t in seq]
    ours_par = [leaf(t, device) for t in par]
    # The oracle sees the same rounded inputs.
    ref_seq = [leaf(t.to(dtype), "cpu", torch.float64) for t in seq]
    ref_par = [leaf(t, "cpu", torch.float64) for t in par]
    return ours_seq, ours_par, ref_seq, ref_par


def outputs_and_gradients_match(g, device, dtype, got, want, inputs, names):
    """Ours `got = (out, states)` against the oracle's `want` from the same
    `inputs` (as `leaves` returns them, `names` in that order): the output
    within OUT, the final states within f32's output budget for f32 inputs
    (else 1e-3), then every input's gradient after a backward through both
    with the same random weights (drawn from `g`, the output's first), so that
    every element matters."""
    (out, states), (want_out, want_states) = got, want
    assert rel(out, want_out) < OUT[dtype]
    assert rel(states, want_states) < (OUT[torch.float32] if dtype == torch.float32 else 1e-3)
    w_out = torch.randn(out.shape, generator=g)
    w_states = torch.randn(states.shape, generator=g)
    ((out.float() * w_out.to(device)).sum() + (states * w_states.to(device)).sum()).backward()
    ((want_out * w_out.double()).sum() + (want_states * w_states.double()).sum()).backward()
    ours_seq, ours_par, ref_seq, ref_par = inputs
    grads_match(ours_seq + ours_par, ref_seq + ref_par, dtype, names)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bc", ["var", "grouped"])
def test_selective_scan_forward_and_gradients(device, dtype, bc):
    device = dev(device)
    g = torch.Generator().manual_seed(1)
    b, d, n, L = 2, 16, 8, 40
    u = torch.randn(b, d, L, generator=g)
    delta = torch.rand(b, d, L, generator=g) * 0.5
    A = -torch.exp(torch.randn(d, n, generator=g) * 0.5)
    shape = (b, n, L) if bc == "var" else (b, 2, n, L)
    B, C = torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)
    D, z, bias = torch.randn(d, generator=g), torch.randn(b, d, L, generator=g), torch.randn(d, generator=g) * 0.3
    h0 = torch.randn(b, d, n, generator=g)
    inputs = leaves([u, delta, B, C, z], [A, D, bias, h0], device, dtype)
    (uu, dd, BB, CC, zz), (AA, DD, bb, hh), (ru, rd, rB, rC, rz), (rA, rD, rb, rh) = inputs
    got = sk.selective_scan_fn(uu, dd, AA, BB, CC, DD, zz, bb, delta_softplus=True,
                               return_last_state=True, initial_states=hh)
    want = torch_ref.selective_scan(ru, rd, rA, rB, rC, rD, rz, rb, True, initial_states=rh)
    assert got[0].dtype == dtype and got[0].device.type == device.type
    outputs_and_gradients_match(g, device, dtype, got, want, inputs,
                                ["u", "delta", "B", "C", "z", "A", "D", "delta_bias", "initial_states"])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d_shape", ["H", "HP"])
def test_chunk_scan_forward_and_gradients(device, dtype, d_shape):
    device = dev(device)
    g = torch.Generator().manual_seed(2)
    b, L, h, p, n, G = 2, 70, 4, 16, 16, 2
    x = torch.randn(b, L, h, p, generator=g)
    dt = torch.randn(b, L, h, generator=g) * 0.5
    A = -torch.exp(torch.randn(h, generator=g) * 0.5)
    B, C = torch.randn(b, L, G, n, generator=g), torch.randn(b, L, G, n, generator=g)
    z = torch.randn(b, L, h, p, generator=g)
    D = torch.randn(h, generator=g) if d_shape == "H" else torch.randn(h, p, generator=g)
    bias = torch.randn(h, generator=g) * 0.3
    h0 = torch.randn(b, h, p, n, generator=g)
    inputs = leaves([x, dt, B, C, z], [A, D, bias, h0], device, dtype)
    (xx, tt, BB, CC, zz), (AA, DD, bb, hh), (rx, rt, rB, rC, rz), (rA, rD, rb, rh) = inputs
    got = sk.mamba_chunk_scan_combined(xx, tt, AA, BB, CC, 64, D=DD, z=zz, dt_bias=bb,
                                       initial_states=hh, dt_softplus=True,
                                       return_final_states=True)
    want = torch_ref.ssd(rx, rt, rA, rB, rC, rD, rz, rb, True, initial_states=rh)
    assert got[0].dtype == dtype
    outputs_and_gradients_match(g, device, dtype, got, want, inputs,
                                ["x", "dt", "B", "C", "z", "A", "D", "dt_bias", "initial_states"])


@pytest.mark.parametrize("device", DEVICES)
def test_backward_is_deterministic(device):
    device = dev(device)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 300, 4, 32, generator=g).to(device, torch.bfloat16).requires_grad_()
    dt = (torch.randn(1, 300, 4, generator=g) * 0.5).to(device, torch.bfloat16).requires_grad_()
    A = (-torch.rand(4, generator=g) - 0.5).to(device).requires_grad_()
    B = torch.randn(1, 300, 1, 32, generator=g).to(device, torch.bfloat16).requires_grad_()
    C = torch.randn(1, 300, 1, 32, generator=g).to(device, torch.bfloat16).requires_grad_()
    w = torch.randn(1, 300, 4, 32, generator=g).to(device)
    runs = []
    for _ in range(2):
        for t in (x, dt, A, B, C):
            t.grad = None
        out = sk.mamba_chunk_scan_combined(x, dt, A, B, C, 64, dt_softplus=True)
        (out.float() * w).sum().backward()
        runs.append([t.grad.clone() for t in (x, dt, A, B, C)])
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_decode_steps_match_the_recurrence(device):
    device = dev(device)
    g = torch.Generator().manual_seed(4)
    # Mamba-2 as transformers calls it: dt, A, dt_bias, D expanded over head_dim.
    b, h, p, n, G = 3, 8, 16, 32, 2
    state = torch.randn(b, h, p, n, generator=g)
    x = torch.randn(b, h, p, generator=g)
    dt = (torch.randn(b, h, generator=g) * 0.5)[:, :, None].expand(-1, -1, p)
    A = (-torch.exp(torch.randn(h, generator=g) * 0.5))[:, None, None].expand(-1, p, n)
    bias = (torch.randn(h, generator=g) * 0.3)[:, None].expand(-1, p)
    D = torch.randn(h, generator=g)[:, None].expand(-1, p)
    B, C = torch.randn(b, G, n, generator=g), torch.randn(b, G, n, generator=g)
    ref_state = state.double().clone()
    # The step is the SSD recurrence on one token with that initial state.
    want, want_state = torch_ref.ssd(x[:, None].double(), dt[:, None, :, 0].double(), A[:, 0, 0].double(),
                                     B[:, None].double(), C[:, None].double(), D[:, 0].double(),
                                     None, bias[:, 0].double(), True, initial_states=ref_state)
    st = state.to(device)
    out = sk.selective_state_update(st, x.to(device), dt.to(device), A.to(device), B.to(device),
                                    C.to(device), D.to(device), None, bias.to(device), dt_softplus=True)
    assert rel(out, want[:, 0]) < OUT[torch.float32]
    assert rel(st, want_state) < OUT[torch.float32]
    # Mamba-1, bf16 state cache (transformers' model dtype): converted and written back.
    d1, n1 = 32, 16
    state1 = torch.randn(b, d1, n1, generator=g).to(torch.bfloat16)
    x1, dt1, z1 = (torch.randn(b, d1, generator=g) for _ in range(3))
    A1 = -torch.exp(torch.randn(d1, n1, generator=g) * 0.5)
    B1, C1 = torch.randn(b, n1, generator=g), torch.randn(b, n1, generator=g)
    D1 = torch.randn(d1, generator=g)
    want1, want_state1 = torch_ref.selective_scan(
        x1[:, :, None].double(), dt1[:, :, None].double(), A1.double(), B1[:, :, None].double(),
        C1[:, :, None].double(), D1.double(), z1[:, :, None].double(), None, True,
        initial_states=state1.double())
    st1 = state1.to(device)
    out1 = sk.selective_state_update(st1, x1.to(device), dt1.to(device), A1.to(device), B1.to(device),
                                     C1.to(device), D1.to(device), z1.to(device), dt_softplus=True)
    assert rel(out1, want1[:, :, 0]) < 1e-2
    assert st1.dtype == torch.bfloat16
    assert rel(st1, want_state1) < 1e-2


def test_errors_name_the_argument():
    x = torch.randn(1, 8, 2, 4)
    dt = torch.randn(1, 8, 2)
    A = -torch.ones(2)
    B = torch.randn(1, 8, 1, 4)
    with pytest.raises(ValueError, match="`C`"):
        sk.mamba_chunk_scan_combined(x, dt, A, B, B[:, :7], 64)
    with pytest.raises(TypeError, match="`x`"):
        sk.mamba_chunk_scan_combined(x.double(), dt, A, B, B, 64)
    with pytest.raises(TypeError, match="`C`"):
        sk.mamba_chunk_scan_combined(x, dt, A, B, B.numpy(), 64)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="`dt`"):
            sk.mamba_chunk_scan_combined(x.cuda(), dt, A.cuda(), B.cuda(), B.cuda(), 64)


@pytest.mark.parametrize("device", DEVICES)
def test_compat_blocks_match_their_composition(device):
    device = dev(device)
    g = torch.Generator().manual_seed(5)
    b, d, L, w = 2, 16, 20, 4
    x = torch.randn(b, d, L, generator=g).to(device)
    weight = torch.randn(d, w, generator=g).to(device)
    bias = torch.randn(d, generator=g).to(device)
    out = compat.causal_conv1d_fn(x, weight, bias, activation="silu")
    # Step by step with causal_conv1d_update gives the same outputs.
    state = torch.zeros(b, d, w, device=device)
    steps = torch.stack([compat.causal_conv1d_update(x[:, :, t], state, weight, bias, "silu")
                         for t in range(L)], dim=-1)
    assert rel(steps, out) < 1e-5
    # mamba_inner_fn against its pieces.
    n, rank = 8, 4
    xz = torch.randn(b, 2 * d, L, generator=g).to(device)
    x_proj = torch.randn(rank + 2 * n, d, generator=g).to(device) * 0.2
    dt_proj = torch.randn(d, rank, generator=g).to(device) * 0.2
    out_proj = torch.randn(12, d, generator=g).to(device) * 0.2
    A = -torch.exp(torch.randn(d, n, generator=g)).to(device)
    Dp = torch.randn(d, generator=g).to(device)
    dbias = torch.randn(d, generator=g).to(device)
    y = compat.mamba_inner_fn(xz, weight[:, None, :], bias, x_proj, dt_proj, out_proj, None, A,
                              D=Dp, delta_bias=dbias, delta_softplus=True)
    xs, zs = xz.chunk(2, dim=1)
    xs = torch.nn.functional.silu(torch.nn.functional.conv1d(xs, weight[:, None, :], bias, padding=w - 1, groups=d)[..., :L])
    dbl = torch.einsum("bdl,rd->blr", xs, x_proj)
    delta = torch.einsum("dr,blr->bdl", dt_proj, dbl[..., :rank])
    Bv, Cv = dbl[..., rank:rank + n].transpose(1, 2), dbl[..., rank + n:].transpose(1, 2)
    ys, _ = torch_ref.selective_scan(*(t.double().cpu() for t in (xs, delta, A, Bv, Cv, Dp, zs, dbias)), True)
    want = torch.nn.functional.linear(ys.transpose(1, 2), out_proj.double().cpu())
    assert rel(y, want) < 1e-4


def test_transformers_models_match_their_torch_path():
    tf = pytest.importorskip("transformers", reason="transformers is not installed")
    from transformers.models.mamba import modeling_mamba
    from transformers.models.mamba2 import modeling_mamba2

    specs = [
        (modeling_mamba, tf.MambaForCausalLM,
         tf.MambaConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, state_size=8, expand=2,
                        conv_kernel=4, use_mambapy=False)),
        (modeling_mamba2, tf.Mamba2ForCausalLM,
         tf.Mamba2Config(vocab_size=100, hidden_size=64, num_heads=4, head_dim=32, state_size=16,
                         n_groups=1, expand=2, num_hidden_layers=2, chunk_size=16)),
    ]
    for module, cls, cfg in specs:
        torch.manual_seed(0)
        model = cls(cfg)
        ids = torch.randint(0, 100, (2, 40))

        def step(train):
            model.train(train)
            model.zero_grad(set_to_none=True)
            out = model(input_ids=ids, labels=ids, use_cache=False)
            out.loss.backward()
            return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

        saved = compat.patch_module(module)
        try:
            ours = [step(False), step(True)]
            model.eval()
            prompt = torch.randint(0, 100, (2, 8))
            with torch.no_grad():
                gen = model.generate(prompt, max_new_tokens=6, do_sample=False)
        finally:
            compat.unpatch_module(module, saved)
        saved = compat.torch_path(module)
        try:
            ref = step(False)
            model.eval()
            with torch.no_grad():
                gen_ref = model.generate(prompt, max_new_tokens=6, do_sample=False)
        finally:
            compat.unpatch_module(module, saved)
        for logits, grads in ours:
            assert rel(logits, ref[0]) < 1e-5
            for name, g in ref[1].items():
                assert rel(grads[name], g) < 1e-4, name
        assert torch.equal(gen, gen_ref)


def _compile_inputs(device, scan):
    g = torch.Generator().manual_seed(6)
    if scan:
        b, d, n, L = 2, 16, 8, 24
        seq = [torch.randn(b, d, L, generator=g), torch.rand(b, d, L, generator=g) * 0.5,
               torch.randn(b, n, L, generator=g), torch.randn(b, n, L, generator=g),
               torch.randn(b, d, L, generator=g)]
        par = [-torch.exp(torch.randn(d, n, generator=g) * 0.5), torch.randn(d, generator=g),
               torch.randn(d, generator=g) * 0.3]
    else:
        b, L, h, p, n = 2, 40, 4, 16, 16
        seq = [torch.randn(b, L, h, p, generator=g), torch.randn(b, L, h, generator=g) * 0.5,
               torch.randn(b, L, 2, n, generator=g), torch.randn(b, L, 2, n, generator=g),
               torch.randn(b, L, h, p, generator=g)]
        par = [-torch.exp(torch.randn(h, generator=g) * 0.5), torch.randn(h, generator=g),
               torch.randn(h, generator=g) * 0.3]
    return [leaf(t, device) for t in seq + par]


@pytest.mark.parametrize("device", DEVICES)
def test_custom_ops_pass_opcheck(device):
    from ssm_kernels import _library

    device = dev(device)
    u, delta, B, C, z, A, D, bias = _compile_inputs(device, True)
    torch.library.opcheck(_library.selective_scan_fwd, (u, delta, A, B, C, D, z, bias, None, True, True))
    x, dt, Bm, Cm, zm, Am, Dm, bm = _compile_inputs(device, False)
    torch.library.opcheck(_library.chunk_scan_fwd,
                          (x, dt, Am, Bm, Cm, Dm, zm, bm, None, True, 0.0, float("inf"), True))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_traces_through_the_scans(device):
    device = dev(device)
    u, delta, B, C, z, A, D, bias = _compile_inputs(device, True)
    x, dt, Bm, Cm, zm, Am, Dm, bm = _compile_inputs(device, False)
    scan_in = [u, delta, B, C, z, A, D, bias]
    ssd_in = [x, dt, Bm, Cm, zm, Am, Dm, bm]

    def loss():
        out, last = sk.selective_scan_fn(u, delta, A, B, C, D, z, bias, delta_softplus=True,
                                         return_last_state=True)
        y, fin = sk.mamba_chunk_scan_combined(x, dt, Am, Bm, Cm, 64, D=Dm, z=zm, dt_bias=bm,
                                              dt_softplus=True, return_final_states=True)
        return (out.sin().sum() + last.square().sum() + y.cos().sum() + fin.square().sum())

    results = []
    for fn in (loss, torch.compile(loss, backend="aot_eager", fullgraph=True)):
        for t in scan_in + ssd_in:
            t.grad = None
        value = fn()
        value.backward()
        results.append((value.detach(), [t.grad.clone() for t in scan_in + ssd_in]))
    (v0, g0), (v1, g1) = results
    assert rel(v1, v0) < 1e-6
    for a, b in zip(g1, g0):
        assert rel(a, b) < 1e-6
