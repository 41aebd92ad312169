#!/usr/bin/env python3
"""ssm_kernels on the GPU machine (issue 18): correctness, the peer, timings and
transformers' Mamba models. Run by ci/python-device.sh; prints a table last and
writes $OUT/python-gpu.json (rewritten after every row, so a call that runs out
of time still returns what was measured).

Sections (--sections, comma-separated; default all):
  oracle   our CUDA forward against the float64 NumPy oracle (tests/oracle.py) and
           against our CPU port on the same inputs (torch CPU tensors), bf16 and f32
  peer     outputs and gradients against mamba_ssm (when --mamba-src is given) on
           the suite's workloads: M2-2.7B, M2-groups, M1-2.8B, both decode steps
  timing   forward, forward+backward and decode (b = 1, 256), ours and mamba_ssm's,
           triton.testing.do_bench medians with the L2 flushed (as ci/peers/peers.py)
  long     the SSD past 2^31 elements of x (b1 L 2^21 H32 P64): the whole run against
           two halves joined by the final state; mamba_ssm on the same
  models   transformers MambaForCausalLM / Mamba2ForCausalLM, random init: logits and
           parameter gradients with the kernel calls pointed at ssm_kernels
           (ssm_kernels.compat.patch_module) against transformers' torch fallback,
           eval and train mode; a forward+backward step timed for ours, mamba_ssm's
           SSM (same torch convolution) and the fallback
"""

import argparse
import importlib.util
import json
import math
import os
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import oracle  # noqa: E402
import ssm_kernels as sk  # noqa: E402
from ssm_kernels import compat  # noqa: E402

BF16 = torch.bfloat16
# --device cpu --smoke runs every section on CPU tensors and small shapes: a check
# of this script itself on a machine without a GPU (no timings, no peer).
DEV = "cuda"
SMOKE = False
SHAPES = {
    "M2-2.7B": (4, 4096, 80, 64, 128, 1),
    "M2-groups": (4, 4096, 32, 128, 128, 8),
    "M1-2.8B": (4, 5120, 16, 4096),
    "m1-step": (5120, 16),
    "m2-step": (80, 64, 128),
}
SMOKE_SHAPES = {
    "M2-2.7B": (1, 96, 4, 64, 32, 1),
    "M2-groups": (1, 96, 4, 32, 32, 2),
    "M1-2.8B": (1, 64, 16, 96),
    "m1-step": (64, 16),
    "m2-step": (4, 16, 32),
}


def shape(name):
    return (SMOKE_SHAPES if SMOKE else SHAPES)[name]


def empty_cache():
    if DEV == "cuda":
        torch.cuda.empty_cache()


def log(msg):
    print(f"[python-gpu {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Report:
    def __init__(self, path):
        self.path = path
        self.rows = []
        self.doc = {"schema": "ssm-python-gpu", "version": 1, "rows": self.rows, "software": {}}

    def add(self, section, case, metric, value, budget=None, ok=None, note=None):
        if ok is None and budget is not None and value is not None:
            ok = bool(value <= budget)
        row = {"section": section, "case": case, "metric": metric, "value": value,
               "budget": budget, "ok": ok, "note": note}
        self.rows.append(row)
        shown = "-" if value is None else (f"{value:.3e}" if isinstance(value, float) else str(value))
        log(f"{section:7s} {case:40s} {metric:28s} {shown:>11s} {'' if budget is None else f'<= {budget:g}'} "
            f"{'' if ok is None else ('ok' if ok else 'FAIL')} {note or ''}")
        self.flush()

    def fail(self, section, case, err):
        self.add(section, case, "error", None, ok=False, note=str(err)[:300])

    def flush(self):
        if not self.path:
            return
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.doc, f, indent=1, default=str)
        os.replace(tmp, self.path)

    def table(self):
        print("\n=== ssm_kernels on the GPU: summary ===")
        print(f"{'section':8s} {'case':40s} {'metric':28s} {'value':>11s} {'budget':>9s} verdict")
        for r in self.rows:
            v = r["value"]
            shown = "-" if v is None else (f"{v:.3e}" if isinstance(v, float) else str(v))
            b = "" if r["budget"] is None else f"{r['budget']:g}"
            verdict = "" if r["ok"] is None else ("ok" if r["ok"] else "FAIL")
            print(f"{r['section']:8s} {r['case'][:40]:40s} {r['metric'][:28]:28s} {shown:>11s} {b:>9s} {verdict}")
        fails = sum(1 for r in self.rows if r["ok"] is False)
        checks = sum(1 for r in self.rows if r["ok"] is not None)
        print(f"{checks - fails} passed, {fails} failed")
        return fails


def rel(got, want):
    got = got.detach().double()
    want = want.detach().double().to(got.device)
    if not torch.isfinite(got).all():
        return float("inf")
    den = want.norm().item()
    return (got - want).norm().item() / (den if den > 0 else 1.0)


def bench(fn, grad_to_none=None, quick=False):
    if DEV != "cuda":
        fn()
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    try:
        import triton

        warmup, rep = (10, 40) if quick else (25, 200)
        return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, grad_to_none=grad_to_none,
                                             return_mode="median"))
    except ImportError:
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(20):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        return float(np.median(times))


def randn(*shape, scale=1.0, dtype=BF16):
    return (torch.randn(*shape, device=DEV) * scale).to(dtype)


# ---------------------------------------------------------------- peers


class Peer:
    """mamba_ssm 2.3.2.post1 from the carried sources (ci/peers), or nothing."""

    def __init__(self, src, build_dir):
        self.ok = False
        self.why = "no --mamba-src given"
        if not src:
            return
        try:
            spec = importlib.util.spec_from_file_location("ssm_peers", os.path.join(REPO, "ci", "peers", "peers.py"))
            peers = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(peers)
            peers.import_mamba(src)
            from mamba_ssm.ops.triton.selective_state_update import selective_state_update
            from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

            self.ssd = mamba_chunk_scan_combined
            self.step = selective_state_update
            self.scan = None
            try:
                # Only a finished build is loaded (ci/python-device.sh builds it in
                # the background; never a second build here).
                if not os.path.exists(os.path.join(build_dir, "selective_scan_cuda.so")):
                    raise RuntimeError(f"no finished build in {build_dir}")
                peers.build_selective_scan(src, build_dir)
                from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

                self.scan = selective_scan_fn
            except Exception as e:  # noqa: BLE001 - recorded, the rest still runs
                self.scan_why = f"selective_scan_cuda unavailable: {e}"
            self.ok = True
        except Exception as e:  # noqa: BLE001
            self.why = f"mamba_ssm import failed: {e}"


# ---------------------------------------------------------------- inputs


def ssd_inputs(b, L, h, p, n, g, dtype=BF16, seed=0):
    torch.manual_seed(seed)
    return dict(
        x=randn(b, L, h, p, dtype=dtype),
        dt=(randn(b, L, h, dtype=torch.float32) - 4.0).to(dtype),
        A=-torch.exp(torch.rand(h, device=DEV) * 2.0),
        B=randn(b, L, g, n, dtype=dtype),
        C=randn(b, L, g, n, dtype=dtype),
        D=torch.randn(h, device=DEV),
        dt_bias=torch.rand(h, device=DEV) - 0.5,
    )


def scan_inputs(b, d, n, L, dtype=BF16, seed=0):
    torch.manual_seed(seed)
    return dict(
        u=randn(b, d, L, dtype=dtype),
        delta=(randn(b, d, L, dtype=torch.float32) - 4.0).to(dtype),
        A=-torch.exp(torch.rand(d, n, device=DEV) * 2.0),
        B=randn(b, 1, n, L, dtype=dtype),
        C=randn(b, 1, n, L, dtype=dtype),
        D=torch.randn(d, device=DEV),
        z=randn(b, d, L, dtype=dtype),
        delta_bias=torch.rand(d, device=DEV) - 0.5,
    )


def ssd_call(fn, t, chunk=256, **kw):
    return fn(t["x"], t["dt"], t["A"], t["B"], t["C"], chunk, D=t["D"], dt_bias=t["dt_bias"],
              dt_softplus=True, **kw)


def scan_call(fn, t, **kw):
    return fn(t["u"], t["delta"], t["A"], t["B"], t["C"], D=t["D"], z=t["z"],
              delta_bias=t["delta_bias"], delta_softplus=True, **kw)


def np64(t):
    return t.detach().float().cpu().numpy().astype(np.float64)


# ---------------------------------------------------------------- sections


def section_oracle(rep, args):
    for dtype, budget in ((torch.float32, 2e-4), (BF16, 1.5e-2)):
        tag = "f32" if dtype == torch.float32 else "bf16"
        # SSD, every option, groups, two sequences per row via seq_idx.
        case = f"ssd b2 L1000 H8 P64 N64 G2 {tag}"
        try:
            t = ssd_inputs(2, 1000, 8, 64, 64, 2, dtype=dtype, seed=1)
            t["dt"] = (torch.randn_like(t["dt"], dtype=torch.float32) * 0.5).to(dtype)
            z = randn(2, 1000, 8, 64, dtype=dtype)
            h0 = torch.randn(2, 8, 64, 64, device=DEV)
            seq_idx = torch.zeros(2, 1000, dtype=torch.int32, device=DEV)
            seq_idx[0, 377:] = 1
            out, fin = ssd_call(sk.mamba_chunk_scan_combined, t, z=z, initial_states=h0, seq_idx=seq_idx,
                                return_final_states=True)
            want, want_fin, _ = oracle.ssd(np64(t["x"]), np64(t["dt"]), np64(t["A"]), np64(t["B"]), np64(t["C"]),
                                           np64(t["D"]), np64(z), np64(t["dt_bias"]), True,
                                           initial_states=np64(h0), seq_idx=seq_idx.cpu().numpy())
            rep.add("oracle", case, "out rel L2 vs f64", rel(out, torch.from_numpy(want)), budget)
            rep.add("oracle", case, "final_states rel L2 vs f64", rel(fin, torch.from_numpy(want_fin)),
                    2e-4 if dtype == torch.float32 else 1e-3)
            cpu = {k: v.cpu() for k, v in t.items()}
            out_cpu = ssd_call(sk.mamba_chunk_scan_combined, cpu, z=z.cpu(), initial_states=h0.cpu(),
                               seq_idx=seq_idx.cpu())
            rep.add("oracle", case, "out rel L2 CUDA vs CPU port", rel(out, out_cpu.to(DEV)), budget)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            rep.fail("oracle", case, e)
        case = f"scan b2 D256 N16 L1000 G2 {tag}"
        try:
            t = scan_inputs(2, 256, 16, 1000, dtype=dtype, seed=2)
            t["B"] = randn(2, 2, 16, 1000, dtype=dtype)
            t["C"] = randn(2, 2, 16, 1000, dtype=dtype)
            t["delta"] = (torch.rand(2, 256, 1000, device=DEV) * 0.3).to(dtype)
            h0 = torch.randn(2, 256, 16, device=DEV)
            out, last = scan_call(sk.selective_scan_fn, t, return_last_state=True, initial_states=h0)
            want, want_last = oracle.selective_scan(*(np64(t[k]) for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")),
                                                    True, initial_states=np64(h0))
            rep.add("oracle", case, "out rel L2 vs f64", rel(out, torch.from_numpy(want)), budget)
            rep.add("oracle", case, "last_state rel L2 vs f64", rel(last, torch.from_numpy(want_last)),
                    2e-4 if dtype == torch.float32 else 1e-3)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            rep.fail("oracle", case, e)
    # Decode steps, both families, with state_batch_indices and padding.
    case = "decode m2 b64 H{} P{} N{} bf16 +idx".format(*shape("m2-step"))
    try:
        torch.manual_seed(3)
        b, (h, p, n) = 64, shape("m2-step")
        cache = torch.randn(80, h, p, n, device=DEV)
        idx = torch.randperm(80, device=DEV)[:b].to(torch.int32)
        idx[5] = -1
        x = randn(b, h, p)
        dt = randn(b, h, scale=0.5)[:, :, None].expand(b, h, p)
        A = (-torch.exp(torch.rand(h, device=DEV)))[:, None, None].expand(h, p, n)
        B, C = randn(b, 1, n), randn(b, 1, n)
        D = torch.randn(h, device=DEV)[:, None].expand(h, p)
        bias = (torch.rand(h, device=DEV) - 0.5)[:, None].expand(h, p)
        want, want_state = oracle.state_update(cache.cpu().numpy(), np64(x), np64(dt), np64(A), np64(B), np64(C),
                                               np64(D), None, np64(bias), True, idx.cpu().numpy())
        st = cache.clone()
        out = sk.selective_state_update(st, x, dt, A, B, C, D, None, bias, dt_softplus=True,
                                        state_batch_indices=idx)
        keep = torch.arange(b) != 5
        rep.add("oracle", case, "out rel L2 vs f64", rel(out[keep.to(DEV)], torch.from_numpy(want)[keep]), 1.5e-2)
        rep.add("oracle", case, "state rel L2 vs f64", rel(st, torch.from_numpy(want_state)), 1e-4)
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        rep.fail("oracle", case, e)


def grads_vs_peer(rep, case, fns, call, t, dout, names):
    """The forward and backward (incoming gradient `dout`) of ours and
    mamba_ssm's (`fns`: (label, function) pairs, ours first) on the same leaves
    made from the inputs `t` through `call`; the output and the gradient of each
    input in `names` compared as peer rows of `case`."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in t.items()}
    res = {}
    for label, fn in fns:
        for v in leaves.values():
            v.grad = None
        out = call(fn, leaves)
        out.backward(dout)
        res[label] = (out.detach(), {k: v.grad.clone() for k, v in leaves.items()})
    rep.add("peer", case, "out rel diff vs mamba_ssm", rel(res["ours"][0], res["mamba_ssm"][0]), 3e-2)
    for k in names:
        rep.add("peer", case, f"d{k} rel diff vs mamba_ssm", rel(res["ours"][1][k], res["mamba_ssm"][1][k]), 5e-2)


def section_peer(rep, args, peer):
    if not peer.ok:
        rep.add("peer", "mamba_ssm", "available", None, ok=None, note=f"SKIPPED: {peer.why}")
        return
    for name in ("M2-2.7B", "M2-groups"):
        shp = shape(name)
        try:
            t = ssd_inputs(*shp)
            fns = (("ours", sk.mamba_chunk_scan_combined), ("mamba_ssm", peer.ssd))
            grads_vs_peer(rep, f"{name} bf16", fns, ssd_call, t, randn(*shp[:4]),
                          ("x", "dt", "A", "B", "C", "D", "dt_bias"))
            del t
            empty_cache()
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            rep.fail("peer", name, e)
    name = "M1-2.8B"
    if peer.scan is None:
        rep.add("peer", name, "available", None, note=f"SKIPPED: {getattr(peer, 'scan_why', '')}")
    else:
        try:
            b, d, n, L = shape("M1-2.8B")
            t = scan_inputs(b, d, n, L)
            fns = (("ours", sk.selective_scan_fn), ("mamba_ssm", peer.scan))
            grads_vs_peer(rep, f"{name} bf16", fns, scan_call, t, randn(b, d, L),
                          ("u", "delta", "A", "B", "C", "D", "z", "delta_bias"))
            del t
            empty_cache()
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            rep.fail("peer", name, e)
    for b in (1, 256):
        try:
            m1, m2 = step_inputs(b)
            s_ours, s_peer = m1["state"].clone(), m1["state"].clone()
            o = step(sk.selective_state_update, m1, s_ours)
            w = step(peer.step, m1, s_peer)
            rep.add("peer", f"decode m1 b{b} D5120 N16", "out rel diff vs mamba_ssm", rel(o, w), 3e-2)
            rep.add("peer", f"decode m1 b{b} D5120 N16", "state rel diff vs mamba_ssm", rel(s_ours, s_peer), 1e-3)
            s_ours, s_peer = m2["state"].clone(), m2["state"].clone()
            o = step(sk.selective_state_update, m2, s_ours)
            w = step(peer.step, m2, s_peer)
            rep.add("peer", f"decode m2 b{b} H80 P64 N128", "out rel diff vs mamba_ssm", rel(o, w), 3e-2)
            rep.add("peer", f"decode m2 b{b} H80 P64 N128", "state rel diff vs mamba_ssm", rel(s_ours, s_peer), 1e-3)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            rep.fail("peer", f"decode b{b}", e)


def step_inputs(b):
    torch.manual_seed(4)
    dim, n = shape("m1-step")
    m1 = dict(state=torch.randn(b, dim, n, device=DEV), x=randn(b, dim),
              dt=(randn(b, dim, dtype=torch.float32) - 4.0).to(BF16),
              A=-torch.exp(torch.rand(dim, n, device=DEV)), B=randn(b, n), C=randn(b, n),
              D=torch.randn(dim, device=DEV), dt_bias=torch.rand(dim, device=DEV) - 0.5)
    h, p, n = shape("m2-step")
    m2 = dict(state=torch.randn(b, h, p, n, device=DEV), x=randn(b, h, p),
              dt=(randn(b, h, dtype=torch.float32) - 4.0).to(BF16)[:, :, None].expand(b, h, p),
              A=(-torch.exp(torch.rand(h, device=DEV)))[:, None, None].expand(h, p, n),
              B=randn(b, 1, n), C=randn(b, 1, n),
              D=torch.randn(h, device=DEV)[:, None].expand(h, p),
              dt_bias=(torch.rand(h, device=DEV) - 0.5)[:, None].expand(h, p))
    return m1, m2


def step(fn, t, state):
    """One decode step of either family (`t` from step_inputs) through `fn`,
    ours or mamba_ssm's selective_state_update: both families take the same
    arguments, and the state's shape tells them apart."""
    return fn(state, t["x"], t["dt"], t["A"], t["B"], t["C"], D=t["D"], dt_bias=t["dt_bias"], dt_softplus=True)


def section_timing(rep, args, peer):
    q = args.quick

    def speedup(case, pw, ours_ms, peer_fn, grad=None):
        rep.add("timing", case, f"{pw} ours ms", ours_ms)
        if peer_fn is None:
            return
        try:
            pm = bench(peer_fn, grad, q)
            rep.add("timing", case, f"{pw} mamba_ssm ms", pm)
            rep.add("timing", case, f"{pw} speedup (mamba/ours)", pm / ours_ms, ok=pm > ours_ms,
                    note="ok = faster than mamba_ssm")
        except Exception as e:  # noqa: BLE001
            rep.fail("timing", case + " mamba_ssm", e)

    def fwd_and_fwd_bwd(case, call, ours_fn, peer_fn, make_inputs, dout_shape):
        """The forward, then forward+backward (incoming gradient of `dout_shape`),
        of `ours_fn` and, when given, `peer_fn`, on the inputs `make_inputs()`
        passed through `call`."""
        try:
            t = make_inputs()
            ours = bench(lambda: call(ours_fn, t), quick=q)
            speedup(case, "fwd", ours, (lambda: call(peer_fn, t)) if peer_fn else None)
            leaves = {k: v.detach().clone().requires_grad_() for k, v in t.items()}
            lv = list(leaves.values())
            dout = randn(*dout_shape)

            def fb(fn):
                return lambda: call(fn, leaves).backward(dout)

            ours = bench(fb(ours_fn), lv, q)
            speedup(case, "fwd+bwd", ours, fb(peer_fn) if peer_fn else None, lv)
            del t, leaves, lv, dout
            empty_cache()
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            rep.fail("timing", case, e)

    for name in ("M2-2.7B", "M2-groups"):
        shp = shape(name)
        fwd_and_fwd_bwd(f"{name} bf16", ssd_call, sk.mamba_chunk_scan_combined, peer.ssd if peer.ok else None,
                        lambda: ssd_inputs(*shp), shp[:4])
    b, d, n, L = shape("M1-2.8B")
    fwd_and_fwd_bwd("M1-2.8B bf16", scan_call, sk.selective_scan_fn, peer.scan if peer.ok else None,
                    lambda: scan_inputs(b, d, n, L), (b, d, L))
    for b in (1, 256):
        try:
            m1, m2 = step_inputs(b)
            s1, s2 = m1["state"].clone(), m2["state"].clone()
            ours = bench(lambda: step(sk.selective_state_update, m1, s1), quick=q)
            speedup(f"decode m1 b{b} D5120 N16", "step", ours,
                    (lambda: step(peer.step, m1, s1)) if peer.ok else None)
            ours = bench(lambda: step(sk.selective_state_update, m2, s2), quick=q)
            speedup(f"decode m2 b{b} H80 P64 N128", "step", ours,
                    (lambda: step(peer.step, m2, s2)) if peer.ok else None)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            rep.fail("timing", f"decode b{b}", e)


def section_long(rep, args, peer):
    L = args.long_len
    case = f"ssd b1 L{L} H32 P64 N128 bf16"
    try:
        t = ssd_inputs(1, L, 32, 64, 128, 1)
        rep.add("long", case, "x elements / 2^31", t["x"].numel() / 2**31)
        out, fin = ssd_call(sk.mamba_chunk_scan_combined, t, return_final_states=True)
        half = L // 2
        first = {k: (v[:, :half].contiguous() if v.dim() > 1 else v) for k, v in t.items()}
        second = {k: (v[:, half:].contiguous() if v.dim() > 1 else v) for k, v in t.items()}
        o1, f1 = ssd_call(sk.mamba_chunk_scan_combined, first, return_final_states=True)
        o2, f2 = ssd_call(sk.mamba_chunk_scan_combined, second, initial_states=f1, return_final_states=True)
        rep.add("long", case, "first half: whole vs split", rel(out[:, :half], o1), 1.5e-2)
        rep.add("long", case, "second half: whole vs split", rel(out[:, half:], o2), 1.5e-2)
        rep.add("long", case, "final state: whole vs split", rel(fin, f2), 1e-3)
        del first, second, o1, o2
        if peer.ok:
            try:
                po = ssd_call(peer.ssd, t)
                tail = slice(L - 4096, L)
                rep.add("long", case, "mamba_ssm tail vs ours (info)", rel(po[:, tail], out[:, tail]),
                        note="mamba_ssm's 32-bit offsets: expected to disagree past 2^31")
            except Exception as e:  # noqa: BLE001
                rep.add("long", case, "mamba_ssm", None, note=f"mamba_ssm failed: {str(e)[:200]}")
        del t, out
        empty_cache()
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        rep.fail("long", case, e)


def disable_kernels(module):
    """transformers' own path without kernels (its torch code)."""
    return compat.torch_path(module)


def section_models(rep, args, peer):
    try:
        import transformers
        from transformers import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM
        from transformers.models.mamba import modeling_mamba
        from transformers.models.mamba2 import modeling_mamba2
    except Exception as e:  # noqa: BLE001
        rep.add("models", "transformers", "available", None, note=f"SKIPPED: {e}")
        return
    rep.doc["software"]["transformers"] = transformers.__version__
    specs = [
        ("Mamba", modeling_mamba, MambaForCausalLM,
         MambaConfig(vocab_size=1024, hidden_size=768, num_hidden_layers=4, state_size=16, expand=2,
                     conv_kernel=4, use_mambapy=False),
         dict(selective_scan_fn=peer.scan) if (peer.ok and peer.scan) else None),
        ("Mamba2", modeling_mamba2, Mamba2ForCausalLM,
         Mamba2Config(vocab_size=1024, hidden_size=768, num_heads=24, head_dim=64, state_size=128,
                      n_groups=1, expand=2, num_hidden_layers=4, chunk_size=256),
         dict(mamba_chunk_scan_combined=peer.ssd) if peer.ok else None),
    ]
    batch, seqlen = (2, 48) if SMOKE else (2, 512)
    if SMOKE:
        for spec in specs:
            spec[3].num_hidden_layers = 1
    for name, module, cls, cfg, peer_over in specs:
        for dtype in (torch.float32, BF16):
            tag = "f32" if dtype == torch.float32 else "bf16"
            case = f"{name}ForCausalLM {cfg.num_hidden_layers}x{cfg.hidden_size} b{batch} L{seqlen} {tag}"
            try:
                torch.manual_seed(0)
                model = cls(cfg).to(DEV, dtype)
                ids = torch.randint(0, cfg.vocab_size, (batch, seqlen), device=DEV)

                def step(train):
                    model.train(train)
                    model.zero_grad(set_to_none=True)
                    out = model(input_ids=ids, labels=ids, use_cache=False)
                    out.loss.backward()
                    return out.logits.detach().float(), {n: p.grad.detach().float().clone()
                                                         for n, p in model.named_parameters() if p.grad is not None}

                saved = compat.patch_module(module)
                try:
                    ours = {m: step(m == "train") for m in ("eval", "train")}
                finally:
                    compat.unpatch_module(module, saved)
                saved = disable_kernels(module)
                try:
                    ref = step(False)
                finally:
                    compat.unpatch_module(module, saved)
                lb, gb = (2e-4, 5e-3) if dtype == torch.float32 else (3e-2, 1e-1)
                for mode in ("eval", "train"):
                    logits, grads = ours[mode]
                    rep.add("models", case, f"{mode}: logits rel diff vs torch path", rel(logits, ref[0]), lb)
                    worst = max(((rel(grads[n], g), n) for n, g in ref[1].items()), default=(0.0, "-"))
                    missing = sorted(set(ref[1]) - set(grads))
                    rep.add("models", case, f"{mode}: worst param grad rel diff", worst[0], gb,
                            ok=(worst[0] <= gb and not missing), note=f"{worst[1]}" + (f" missing {missing}" if missing else ""))
                # A forward+backward step (eval mode: the same composition for every SSM).
                model.train(False)

                def timed():
                    model.zero_grad(set_to_none=True)
                    model(input_ids=ids, labels=ids, use_cache=False).loss.backward()

                saved = compat.patch_module(module)
                try:
                    ours_ms = bench(timed, quick=True)
                finally:
                    compat.unpatch_module(module, saved)
                rep.add("models", case, "fwd+bwd step ours ms", ours_ms)
                if peer_over:
                    saved = compat.patch_module(module, **peer_over)
                    try:
                        pm = bench(timed, quick=True)
                        rep.add("models", case, "fwd+bwd step mamba_ssm ms", pm,
                                note="mamba_ssm's scan, our torch causal conv")
                        rep.add("models", case, "step speedup (mamba/ours)", pm / ours_ms, ok=pm > ours_ms)
                    except Exception as e:  # noqa: BLE001
                        rep.fail("models", case + " mamba_ssm", e)
                    finally:
                        compat.unpatch_module(module, saved)
                saved = disable_kernels(module)
                try:
                    rep.add("models", case, "fwd+bwd step torch path ms", bench(timed, quick=True))
                finally:
                    compat.unpatch_module(module, saved)
                del model
                empty_cache()
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                rep.fail("models", case, e)
        # Generation: prefill and decode through the cache (selective_state_update,
        # causal_conv1d_update) give the same greedy tokens as the torch path.
        case = f"{name}ForCausalLM generate 16 tokens f32"
        try:
            torch.manual_seed(0)
            model = cls(cfg).to(DEV).eval()
            prompt = torch.randint(0, cfg.vocab_size, (2, 64), device=DEV)
            saved = compat.patch_module(module)
            try:
                with torch.no_grad():
                    ours = model.generate(prompt, max_new_tokens=16, do_sample=False)
            finally:
                compat.unpatch_module(module, saved)
            saved = disable_kernels(module)
            try:
                with torch.no_grad():
                    ref = model.generate(prompt, max_new_tokens=16, do_sample=False)
            finally:
                compat.unpatch_module(module, saved)
            same = int((ours == ref).all().item())
            rep.add("models", case, "greedy tokens equal", same, ok=bool(same))
            del model
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            rep.fail("models", case, e)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", default="oracle,peer,timing,long,models")
    ap.add_argument("--mamba-src", default=None)
    ap.add_argument("--build-dir", default="/tmp/ssm-peers/build")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--long-len", type=int, default=2**21)
    ap.add_argument("--pytest-summary", default=None, help="the pytest step's last line, for the table")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                    help="cpu: check this script without a GPU (with --smoke)")
    ap.add_argument("--smoke", action="store_true", help="small shapes (with --device cpu)")
    args = ap.parse_args()
    global DEV, SMOKE
    DEV, SMOKE = args.device, args.smoke
    os.makedirs(args.out, exist_ok=True)
    rep = Report(os.path.join(args.out, "python-gpu.json"))
    if DEV == "cuda" and not torch.cuda.is_available():
        rep.add("setup", "cuda", "available", None, ok=False, note="torch sees no CUDA device")
        return 1 if rep.table() else 0
    rep.doc["software"].update(torch=torch.__version__, ssm_kernels=sk.build_info(),
                               device=torch.cuda.get_device_name() if DEV == "cuda" else "cpu (smoke)")
    if args.pytest_summary:
        passed = "failed" not in args.pytest_summary and "error" not in args.pytest_summary \
            and "exit 0" in args.pytest_summary
        rep.add("pytest", "crates/python/tests (CPU + CUDA)", "summary", None, ok=passed,
                note=args.pytest_summary)
    # transformers resolves its kernels when its modeling modules are imported
    # (later 5.x): import them before mamba_ssm is made importable, so that
    # their own functions are the torch path.
    try:
        from transformers.models.mamba import modeling_mamba  # noqa: F401
        from transformers.models.mamba2 import modeling_mamba2  # noqa: F401
    except Exception as e:  # noqa: BLE001
        log(f"transformers not importable: {e}")
    peer = Peer(args.mamba_src if DEV == "cuda" else None, args.build_dir)
    log(f"peer: {'mamba_ssm loaded' if peer.ok else peer.why}")
    sections = args.sections.split(",")
    for name in sections:
        t0 = time.time()
        try:
            if name == "oracle":
                section_oracle(rep, args)
            elif name == "peer":
                section_peer(rep, args, peer)
            elif name == "timing":
                section_timing(rep, args, peer)
            elif name == "long":
                section_long(rep, args, peer)
            elif name == "models":
                section_models(rep, args, peer)
            else:
                rep.add("setup", name, "section", None, ok=False, note="unknown section")
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            rep.fail(name, "section", e)
        log(f"section {name}: {time.time() - t0:.0f} s")
    fails = rep.table()
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
