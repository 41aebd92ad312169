#!/usr/bin/env python3
"""Time the peers (mamba_ssm, flash-linear-attention) on the shapes of our suite.

Runs on the GPU machine, beside our own benchmark run, and writes a peer timing
file (schema `ssm-peer-timings`, version 1) that `ssmk bench --peers FILE` files
into the same result set as our kernels, with floors at the run's measured
ceilings (crates/telemetry/src/peers.rs reads it; docs/BENCHMARKS.md).

The problems written here are the serde form of `ssm_telemetry::problem::Problem`
for the workloads of `crates/telemetry/src/workloads.rs` (same names, same
options), so each peer row pairs with our row of the same workload.

What is timed (bf16 inputs, f32 A/D/biases/states, as in our suite):
- mamba_ssm Triton `mamba_chunk_scan_combined`: M2-2.7B, M2-long, M2-groups forward
  at chunk 128 and 256 (the best is kept as the peer's row; both are recorded),
  forward+backward at the best chunk, in its default and its deterministic mode
  (`MAMBA_DETERMINISTIC`, read per call through `use_deterministic_mode`), and
  M2-2.7B with `return_final_states`.
- mamba_ssm CUDA `selective_scan_fn` (the extension built here for sm_90 only):
  M1-2.8B and M1-small forward and forward+backward (z, D, delta_bias, softplus).
- mamba_ssm Triton `selective_state_update`: both families at b = 1 and b = 256
  (Mamba-2 with dt/A/D/dt_bias broadcast over the head dimension by stride 0, the
  "tie_hdim" path its Mamba2 module uses).
- fla `chunk_simple_gla`: the SSD shapes, forward and forward+backward. Simple GLA
  has no D, z, groups, dt bias or softplus: it computes
  `o_i = sum_{j<=i} (q_i . k_j) exp(g_i^cum - g_j^cum) v_j` with q = C, k = B (groups
  expanded to heads), v = dt * x and g = dt * A, i.e. the SSD core only.

Method: `triton.testing.do_bench` (CUDA events, L2 flushed before each call,
median and the 10th/90th percentiles). Every peer output is checked for
non-finite values before it is timed.

usage: python3 ci/peers/peers.py --mamba-src DIR [--fla-src DIR] --out FILE
          [--build-dir DIR] [--only ssd,scan,step,fla] [--quick]
"""

import argparse
import json
import os
import sys
import time
import types


def log(msg):
    print(f"[peers {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def import_mamba(src):
    """Import mamba_ssm's kernels from `src` without its top-level __init__
    (which pulls in model code and optional dependencies)."""
    pkg = types.ModuleType("mamba_ssm")
    pkg.__path__ = [os.path.join(src, "mamba_ssm")]
    sys.modules["mamba_ssm"] = pkg
    sys.path.insert(0, src)


def build_selective_scan(src, build_dir):
    """Build (or load, when `build_dir` already holds it) the CUDA selective_scan
    extension for sm_90 only, with the flags of mamba_ssm's setup.py."""
    import importlib.machinery
    import importlib.util

    from torch.utils.cpp_extension import load

    prebuilt = os.path.join(build_dir, "selective_scan_cuda.so")
    if os.path.exists(prebuilt):
        # A build carried from an earlier call: load it as it is (ninja would
        # rebuild on the carried files' new timestamps).
        loader = importlib.machinery.ExtensionFileLoader("selective_scan_cuda", prebuilt)
        spec = importlib.util.spec_from_file_location("selective_scan_cuda", prebuilt, loader=loader)
        mod = importlib.util.module_from_spec(spec)
        loader.exec_module(mod)
        sys.modules["selective_scan_cuda"] = mod
        log(f"selective_scan_cuda loaded from {prebuilt}")
        return mod
    csrc = os.path.join(src, "csrc", "selective_scan")
    sources = [os.path.join(csrc, "selective_scan.cpp")]
    for kind in ("fwd_fp32", "fwd_fp16", "fwd_bf16"):
        sources.append(os.path.join(csrc, f"selective_scan_{kind}.cu"))
    for dt in ("fp32", "fp16", "bf16"):
        for cplx in ("real", "complex"):
            sources.append(os.path.join(csrc, f"selective_scan_bwd_{dt}_{cplx}.cu"))
    os.makedirs(build_dir, exist_ok=True)
    os.environ.setdefault("MAX_JOBS", "14")
    flags = [
        "-O3", "-std=c++17", "--use_fast_math", "--expt-relaxed-constexpr",
        "--expt-extended-lambda", "-lineinfo",
        "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
        "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
        "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
        "-gencode", "arch=compute_90,code=sm_90",
    ]
    t0 = time.time()
    mod = load(
        name="selective_scan_cuda",
        sources=sources,
        extra_cflags=["-O3", "-std=c++17"],
        extra_cuda_cflags=flags,
        extra_include_paths=[csrc],
        build_directory=build_dir,
        verbose=False,
    )
    sys.modules["selective_scan_cuda"] = mod
    log(f"selective_scan_cuda ready in {time.time() - t0:.0f} s ({build_dir})")
    return mod


# ---------------------------------------------------------------- problems
# The serde form of ssm_telemetry::problem::Problem (crates/telemetry/src/problem.rs)
# for the workloads of crates/telemetry/src/workloads.rs.

def ssd_problem(batch, seqlen, heads, head_dim, d_state, groups, chunk, final=False):
    return {
        "op": "ssd", "batch": batch, "seqlen": seqlen, "heads": heads,
        "head_dim": head_dim, "d_state": d_state, "groups": groups,
        "chunk_size": chunk, "dtype": "bf16", "z": False, "d": "per_head",
        "dt_bias": True, "softplus": True, "initial_states": False,
        "final_states": final,
    }


def scan_problem(batch, d_inner, d_state, seqlen):
    return {
        "op": "mamba1_scan", "batch": batch, "d_inner": d_inner, "d_state": d_state,
        "seqlen": seqlen, "groups": 1, "dtype": "bf16", "z": True, "d": True,
        "delta_bias": True, "softplus": True, "initial_states": False,
        "final_states": False,
    }


def m1_step_problem(batch, d_inner, d_state):
    return {
        "op": "mamba1_step", "batch": batch, "d_inner": d_inner, "d_state": d_state,
        "groups": 1, "dtype": "bf16", "z": False, "d": True, "dt_bias": True,
        "softplus": True,
    }


def m2_step_problem(batch, heads, head_dim, d_state):
    return {
        "op": "mamba2_step", "batch": batch, "heads": heads, "head_dim": head_dim,
        "d_state": d_state, "groups": 1, "dtype": "bf16", "z": False,
        "d": "per_head", "dt_bias": True, "softplus": True,
    }


SSD_WORKLOADS = [
    ("M2-2.7B", dict(batch=4, seqlen=4096, heads=80, head_dim=64, d_state=128, groups=1)),
    ("M2-long", dict(batch=1, seqlen=65536, heads=32, head_dim=64, d_state=128, groups=1)),
    ("M2-groups", dict(batch=4, seqlen=4096, heads=32, head_dim=128, d_state=128, groups=8)),
]
SCAN_WORKLOADS = [
    ("M1-2.8B", dict(batch=4, d_inner=5120, d_state=16, seqlen=4096)),
    ("M1-small", dict(batch=8, d_inner=2048, d_state=16, seqlen=2048)),
]
# (workload name in our suite, batch): b = 256 is the reference workload, b = 1 the decode-b1 sweep point.
STEP_BATCHES = [("M1-decode", "M2-decode", 256), ("decode-b1", "decode-b1", 1)]

# Set from the command line (--workloads, --no-chunk-sweep).
WORKLOADS = None
SSD_CHUNKS = (128, 256)


def wanted(*names):
    return WORKLOADS is None or any(n in WORKLOADS for n in names)


def seeded(workloads, keys):
    """The wanted workloads as `(name, sizes in the order of keys)`, torch's
    generator reseeded before each, so every peer draws the same inputs."""
    import torch

    for name, s in workloads:
        if not wanted(name):
            continue
        torch.manual_seed(0)
        yield name, tuple(s[k] for k in keys)


SSD_KEYS = ("batch", "seqlen", "heads", "head_dim", "d_state", "groups")


# ---------------------------------------------------------------- timing

class Recorder:
    def __init__(self, out_path, device, software):
        self.out_path = out_path
        self.doc = {
            "schema": "ssm-peer-timings", "version": 1, "device": device,
            "created_unix_s": int(time.time()), "software": software,
            "notes": [], "results": [],
        }

    def note(self, text):
        log("NOTE " + text)
        self.doc["notes"].append(text)
        self.flush()

    def add(self, implementation, workload, pw, problem, config, stats, note=None):
        row = {
            "implementation": implementation, "workload": workload, "pass": pw,
            "problem": problem, "config": config, "timing": stats,
        }
        if note:
            row["note"] = note
        self.doc["results"].append(row)
        log(f"{implementation:48s} {workload:10s} {pw:16s} {stats['median_ms']:.4f} ms {config}")
        self.flush()

    def flush(self):
        # Written after every row: a timed-out call still returns what was measured.
        tmp = self.out_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.doc, f, indent=1)
            f.write("\n")
        os.replace(tmp, self.out_path)


def bench(fn, grad_to_none=None, quick=False):
    import triton

    warmup, rep = (10, 40) if quick else (25, 200)
    qs = triton.testing.do_bench(
        fn, warmup=warmup, rep=rep, grad_to_none=grad_to_none,
        quantiles=[0.5, 0.1, 0.9], return_mode="median",
    )
    median, p10, p90 = (float(q) for q in qs)
    # do_bench repeats for `rep` ms; the count is its estimate, recorded for the record.
    samples = max(1, int(rep / max(median, 1e-3)))
    return {"method": "triton_do_bench", "median_ms": median, "p10_ms": p10,
            "p90_ms": p90, "samples": samples}


def check_finite(name, *tensors):
    import torch

    for t in tensors:
        if t is not None and not torch.isfinite(t).all():
            raise RuntimeError(f"{name}: non-finite output")


def randn(*shape, dtype=None, scale=1.0, device="cuda"):
    import torch

    return (torch.randn(*shape, device=device, dtype=torch.float32) * scale).to(dtype or torch.bfloat16)


# ---------------------------------------------------------------- peers

def time_ssd(rec, quick):
    import torch
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    from mamba_ssm.utils import determinism

    impl = "mamba_ssm.triton.mamba_chunk_scan_combined"
    for name, (b, l, h, p, n, g) in seeded(SSD_WORKLOADS, SSD_KEYS):
        x = randn(b, l, h, p)
        dt = randn(b, l, h, scale=1.0) - 4.0  # softplus(dt - 4): small steps, as in trained models
        dt = dt.to(torch.bfloat16)
        a = -torch.exp(torch.rand(h, device="cuda") * 2.0)
        bm = randn(b, l, g, n)
        cm = randn(b, l, g, n)
        d = torch.randn(h, device="cuda")
        dt_bias = torch.rand(h, device="cuda") - 0.5
        best = None
        for chunk in SSD_CHUNKS:
            def fwd(chunk=chunk):
                return mamba_chunk_scan_combined(x, dt, a, bm, cm, chunk, D=d, dt_bias=dt_bias, dt_softplus=True)
            check_finite(f"{name} fwd", fwd())
            stats = bench(fwd, quick=quick)
            rec.add(impl + f"@chunk{chunk}", name, "forward", ssd_problem(b, l, h, p, n, g, chunk),
                    {"chunk_size": chunk}, stats)
            if best is None or stats["median_ms"] < best[1]["median_ms"]:
                best = (chunk, stats)
        chunk, stats = best
        rec.add(impl, name, "forward", ssd_problem(b, l, h, p, n, g, chunk),
                {"chunk_size": chunk, "best_of": list(SSD_CHUNKS)}, stats)
        if name == "M2-2.7B":
            def fwd_final():
                return mamba_chunk_scan_combined(x, dt, a, bm, cm, chunk, D=d, dt_bias=dt_bias,
                                                 dt_softplus=True, return_final_states=True)
            out, fin = fwd_final()
            check_finite(f"{name} fwd final", out, fin)
            rec.add(impl, name + "+final", "forward", ssd_problem(b, l, h, p, n, g, chunk, final=True),
                    {"chunk_size": chunk}, bench(fwd_final, quick=quick))
        # forward + backward: gradients of x, dt, B, C (and A, D, dt_bias) from a random d_out.
        leaves = [t.detach().clone().requires_grad_(True) for t in (x, dt, a, bm, cm, d, dt_bias)]
        dout = randn(b, l, h, p)
        for deterministic in (False, True):
            determinism.set_deterministic_mode(deterministic)

            def fwd_bwd():
                xx, dd, aa, bb, cc, d_, db = leaves
                out = mamba_chunk_scan_combined(xx, dd, aa, bb, cc, chunk, D=d_, dt_bias=db, dt_softplus=True)
                out.backward(dout)

            fwd_bwd()
            check_finite(f"{name} bwd", *(t.grad for t in leaves))
            stats = bench(fwd_bwd, grad_to_none=leaves, quick=quick)
            suffix = ".deterministic" if deterministic else ""
            rec.add(impl + suffix, name, "forward_backward", ssd_problem(b, l, h, p, n, g, chunk),
                    {"chunk_size": chunk, "deterministic": deterministic}, stats,
                    note="MAMBA_DETERMINISTIC=1 mode" if deterministic else None)
        determinism.set_deterministic_mode(None)
        del x, dt, bm, cm, leaves, dout
        torch.cuda.empty_cache()


def time_scan(rec, quick):
    import torch
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    impl = "mamba_ssm.cuda.selective_scan_fn"
    for name, (b, dim, n, l) in seeded(SCAN_WORKLOADS, ("batch", "d_inner", "d_state", "seqlen")):
        u = randn(b, dim, l)
        delta = (randn(b, dim, l) - 4.0).to(torch.bfloat16)
        a = -torch.exp(torch.rand(dim, n, device="cuda") * 2.0)
        bm = randn(b, 1, n, l)
        cm = randn(b, 1, n, l)
        d = torch.randn(dim, device="cuda")
        z = randn(b, dim, l)
        delta_bias = torch.rand(dim, device="cuda") - 0.5

        def fwd():
            return selective_scan_fn(u, delta, a, bm, cm, D=d, z=z, delta_bias=delta_bias, delta_softplus=True)

        check_finite(f"{name} fwd", fwd())
        rec.add(impl, name, "forward", scan_problem(b, dim, n, l), {}, bench(fwd, quick=quick))
        leaves = [t.detach().clone().requires_grad_(True) for t in (u, delta, a, bm, cm, d, z, delta_bias)]
        dout = randn(b, dim, l)

        def fwd_bwd():
            uu, dl, aa, bb, cc, d_, zz, db = leaves
            out = selective_scan_fn(uu, dl, aa, bb, cc, D=d_, z=zz, delta_bias=db, delta_softplus=True)
            out.backward(dout)

        fwd_bwd()
        check_finite(f"{name} bwd", *(t.grad for t in leaves))
        rec.add(impl, name, "forward_backward", scan_problem(b, dim, n, l), {"deterministic": False},
                bench(fwd_bwd, grad_to_none=leaves, quick=quick),
                note="float atomics in dA/dB/dC/dD reductions; no deterministic mode")
        del u, delta, bm, cm, z, leaves, dout
        torch.cuda.empty_cache()


def time_steps(rec, quick):
    import torch
    from mamba_ssm.ops.triton.selective_state_update import selective_state_update

    impl_base = "mamba_ssm.triton.selective_state_update"
    for m1_name, m2_name, b in STEP_BATCHES:
        if not wanted(m1_name, m2_name):
            continue
        torch.manual_seed(0)
        # Mamba-1: state (b, D, N), x/dt (b, D), A (D, N), B/C (b, N).
        dim, n = 5120, 16
        state = torch.randn(b, dim, n, device="cuda")
        x = randn(b, dim)
        dt = (randn(b, dim) - 4.0).to(torch.bfloat16)
        a = -torch.exp(torch.rand(dim, n, device="cuda"))
        bm, cm = randn(b, n), randn(b, n)
        d = torch.randn(dim, device="cuda")
        dt_bias = torch.rand(dim, device="cuda") - 0.5

        def m1():
            return selective_state_update(state, x, dt, a, bm, cm, D=d, dt_bias=dt_bias, dt_softplus=True)

        check_finite("M1 step", m1())
        # One implementation name per family: both run at decode-b1, and ids must differ.
        rec.add(impl_base + ".mamba1", m1_name, "forward", m1_step_problem(b, dim, n), {"family": "mamba1"},
                bench(m1, quick=quick))
        # Mamba-2 as its module calls it: (b, H, P, N) state, per-head dt/A/D/dt_bias expanded over P.
        h, p, n = 80, 64, 128
        state2 = torch.randn(b, h, p, n, device="cuda")
        x2 = randn(b, h, p)
        dt2 = (randn(b, h) - 4.0).to(torch.bfloat16)[:, :, None].expand(b, h, p)
        a2 = (-torch.exp(torch.rand(h, device="cuda")))[:, None, None].expand(h, p, n)
        b2, c2 = randn(b, 1, n), randn(b, 1, n)
        d2 = torch.randn(h, device="cuda")[:, None].expand(h, p)
        dtb2 = (torch.rand(h, device="cuda") - 0.5)[:, None].expand(h, p)

        def m2():
            return selective_state_update(state2, x2, dt2, a2, b2, c2, D=d2, dt_bias=dtb2, dt_softplus=True)

        check_finite("M2 step", m2())
        rec.add(impl_base + ".mamba2", m2_name, "forward", m2_step_problem(b, h, p, n),
                {"family": "mamba2", "tie_hdim": True}, bench(m2, quick=quick))
        del state, state2
        torch.cuda.empty_cache()


def time_fla(rec, quick):
    import torch
    from fla.ops.simple_gla import chunk_simple_gla

    impl = "fla.chunk_simple_gla"
    note = ("simple GLA: the SSD core only (q=C, k=B expanded to heads, v=dt*x, g=dt*A, scale 1); "
            "no D, z, groups, dt_bias or softplus")
    refused = False
    for name, (b, l, h, p, n, g) in seeded(SSD_WORKLOADS, SSD_KEYS):
        q = randn(b, l, h, n)
        k = randn(b, l, h, n)
        v = randn(b, l, h, p)
        gate = -torch.rand(b, l, h, device="cuda") * 0.1  # log decay per step, fp32

        def fwd():
            return chunk_simple_gla(q, k, v, g=gate, scale=1.0)[0]

        check_finite(f"{name} fla fwd", fwd())
        rec.add(impl, name, "forward", ssd_problem(b, l, h, p, n, g, 64), {"chunk_size": 64}, bench(fwd, quick=quick), note)
        leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v, gate)]
        dout = randn(b, l, h, p)

        def fwd_bwd():
            qq, kk, vv, gg = leaves
            chunk_simple_gla(qq, kk, vv, g=gg, scale=1.0)[0].backward(dout)

        try:
            fwd_bwd()
        except RuntimeError as e:
            # fla 0.6.0 refuses its gated backward on Hopper with Triton 3.4-3.7.0
            # (wrong results, its issue #640): recorded once, forwards still timed.
            if not refused:
                rec.note(f"fla forward+backward not timed: {e}")
            refused = True
        else:
            check_finite(f"{name} fla bwd", *(t.grad for t in leaves))
            rec.add(impl, name, "forward_backward", ssd_problem(b, l, h, p, n, g, 64), {"chunk_size": 64},
                    bench(fwd_bwd, grad_to_none=leaves, quick=quick), note)
        del q, k, v, gate, leaves, dout
        torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mamba-src", required=True, help="folder holding mamba_ssm/ and csrc/selective_scan/")
    ap.add_argument("--fla-src", help="folder holding fla/ (an unpacked fla-core wheel)")
    ap.add_argument("--build-dir", default="/tmp/ssm-peers-build", help="selective_scan extension build folder")
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", default="ssd,scan,step,fla")
    ap.add_argument("--build-only", action="store_true", help="build the extension and stop")
    ap.add_argument("--quick", action="store_true", help="shorter timing windows")
    ap.add_argument("--workloads", help="comma-separated workload names to time (default: all)")
    ap.add_argument("--no-chunk-sweep", action="store_true",
                    help="time the SSD forward at chunk 256 only (Triton's best on these shapes)")
    args = ap.parse_args()

    import torch
    import triton

    only = set(args.only.split(","))
    global WORKLOADS, SSD_CHUNKS
    if args.workloads:
        WORKLOADS = set(args.workloads.split(","))
    if args.no_chunk_sweep:
        SSD_CHUNKS = (256,)
    import_mamba(args.mamba_src)
    if args.fla_src:
        sys.path.insert(0, args.fla_src)
    if "scan" in only or args.build_only:
        build_selective_scan(args.mamba_src, args.build_dir)
    if args.build_only:
        return 0
    software = {"torch": torch.__version__, "triton": triton.__version__, "python": sys.version.split()[0]}
    try:
        sys.path.insert(0, args.mamba_src)
        with open(os.path.join(args.mamba_src, "mamba_ssm", "__init__.py")) as f:
            for line in f:
                if line.startswith("__version__"):
                    software["mamba_ssm"] = line.split("=")[1].strip().strip('"')
    except OSError:
        pass
    if args.fla_src:
        try:
            import fla
            software["fla"] = getattr(fla, "__version__", "unknown")
        except Exception as e:  # noqa: BLE001 - recorded, and fla rows are then skipped
            software["fla"] = f"import failed: {e}"
    rec = Recorder(args.out, torch.cuda.get_device_name(0), software)
    sections = [("ssd", time_ssd), ("scan", time_scan), ("step", time_steps), ("fla", time_fla)]
    failures = 0
    for key, fn in sections:
        if key not in only or (key == "fla" and not args.fla_src):
            continue
        t0 = time.time()
        try:
            fn(rec, args.quick)
        except Exception as e:  # noqa: BLE001 - one failing peer must not lose the others
            failures += 1
            rec.note(f"{key}: FAILED: {type(e).__name__}: {e}")
        log(f"section {key}: {time.time() - t0:.0f} s")
    rec.flush()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
