//! The HBM-traffic and work model: the fewest bytes each operation must move
//! through device memory (every input read once, every output written once, for
//! the given shape, element type and options), and the arithmetic it must do.
//!
//! This is the *minimum*, not a prediction: a kernel that re-reads B/C per
//! channel tile or spills moves more, which the measured DRAM bytes
//! ([`crate::ncu`]) show beside it.
//!
//! Work is split by the unit that does it, because each has its own ceiling
//! ([`crate::roofline::Ceilings`]):
//! - `mma_flops`: matrix-unit work (SSD's chunk matmuls), counted on full tiles
//!   (the causal mask saves no MMA instructions);
//! - `exps`: the state decays `exp(dt*A)` (Mamba-1: one per state element and
//!   step) and SSD's segment decays `exp(s_i - s_j)`; the per-token softplus and
//!   silu (1/N as many) are left out, as in docs/DESIGN.md §6;
//! - `simt_flops`: ordinary fp32 arithmetic (the recurrences), for information.
//!
//! [`cost`] is the forward; [`cost_of`] adds the backward models of the scan and
//! SSD and forward + backward (docs/BENCHMARKS.md §1).

use serde::{Deserialize, Serialize};

use crate::problem::{
    Mamba1ScanShape, Mamba1StepShape, Mamba2StepShape, Pass, Problem, SkipKind, SsdShape,
    StreamShape,
};

/// Whether a tensor is read, written, or read and written (a state updated in place).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Read once.
    Read,
    /// Written once.
    Write,
    /// Read and written (a state updated in place).
    ReadWrite,
}

/// The traffic of one tensor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorTraffic {
    /// The tensor's name (`x`, `state`, ...).
    pub name: String,
    /// Size of the tensor in bytes (moved once per direction of `access`).
    pub bytes: u64,
    /// Read, written, or both.
    pub access: Access,
}

/// The minimum cost of one call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    /// Each tensor the call must move.
    pub tensors: Vec<TensorTraffic>,
    /// Minimum bytes read.
    pub read_bytes: u64,
    /// Minimum bytes written.
    pub write_bytes: u64,
    /// Tensor-core (MMA) flops.
    pub mma_flops: f64,
    /// CUDA-core flops (not a floor term).
    pub simt_flops: f64,
    /// Exponentials.
    pub exps: f64,
}

impl Cost {
    /// Bytes read plus bytes written.
    pub fn bytes(&self) -> u64 {
        self.read_bytes + self.write_bytes
    }

    /// All floating-point work (matrix unit and ordinary).
    pub fn flops(&self) -> f64 {
        self.mma_flops + self.simt_flops
    }
}

/// Accumulates tensors into a [`Cost`].
struct Ledger {
    tensors: Vec<TensorTraffic>,
}

impl Ledger {
    fn new() -> Self {
        Ledger {
            tensors: Vec::new(),
        }
    }

    /// Record `elements` of `elem_bytes` each, when `present`.
    fn add(
        &mut self,
        present: bool,
        name: &str,
        elements: usize,
        elem_bytes: usize,
        access: Access,
    ) {
        if present && elements > 0 {
            self.tensors.push(TensorTraffic {
                name: name.to_string(),
                bytes: (elements as u64) * (elem_bytes as u64),
                access,
            });
        }
    }

    fn finish(self, mma_flops: f64, simt_flops: f64, exps: f64) -> Cost {
        let mut read_bytes = 0;
        let mut write_bytes = 0;
        for t in &self.tensors {
            match t.access {
                Access::Read => read_bytes += t.bytes,
                Access::Write => write_bytes += t.bytes,
                Access::ReadWrite => {
                    read_bytes += t.bytes;
                    write_bytes += t.bytes;
                }
            }
        }
        Cost {
            tensors: self.tensors,
            read_bytes,
            write_bytes,
            mma_flops,
            simt_flops,
            exps,
        }
    }
}

const F32: usize = 4;

/// The minimum cost of `problem`.
pub fn cost(problem: &Problem) -> Cost {
    match problem {
        Problem::Mamba1Scan(s) => mamba1_scan(s),
        Problem::Ssd(s) => ssd(s),
        Problem::Mamba1Step(s) => mamba1_step(s),
        Problem::Mamba2Step(s) => mamba2_step(s),
        Problem::Stream(s) => stream(s),
    }
}

/// The minimum cost of `pass` over `problem`: the forward is [`cost`]; the
/// backward models are below (docs/BENCHMARKS.md §1); forward + backward is the
/// sum of the two (tensors listed once per pass). Decode steps and the stream
/// kernel have no backward (inference only): their backward costs nothing, so a
/// result claiming one has a zero floor (see [`backward_modelled`]).
pub fn cost_of(problem: &Problem, pass: Pass) -> Cost {
    let backward = || match problem {
        Problem::Mamba1Scan(s) => mamba1_scan_backward(s),
        Problem::Ssd(s) => ssd_backward(s),
        Problem::Mamba1Step(_) | Problem::Mamba2Step(_) | Problem::Stream(_) => {
            Ledger::new().finish(0.0, 0.0, 0.0)
        }
    };
    match pass {
        Pass::Forward => cost(problem),
        Pass::Backward => backward(),
        Pass::ForwardBackward => cost(problem).plus(backward()),
    }
}

/// Whether `problem` has a backward model (the scan and SSD; not decode steps or streams).
pub fn backward_modelled(problem: &Problem) -> bool {
    matches!(problem, Problem::Mamba1Scan(_) | Problem::Ssd(_))
}

impl Cost {
    /// The cost of doing `self` then `other` (a forward then its backward).
    fn plus(mut self, other: Cost) -> Cost {
        self.tensors.extend(other.tensors);
        self.read_bytes += other.read_bytes;
        self.write_bytes += other.write_bytes;
        self.mma_flops += other.mma_flops;
        self.simt_flops += other.simt_flops;
        self.exps += other.exps;
        self
    }
}

/// The traffic of a backward whose forward moved `forward`: it reads every
/// input the forward read, then `d_out` (`out_elems` of `elem_bytes`) and, with
/// `final_states`, `d_final_states` (`states` f32), and writes one gradient
/// `d_<name>` per input, of the input's shape and type (so the same bytes).
fn backward_ledger(
    forward: &Cost,
    out_elems: usize,
    elem_bytes: usize,
    final_states: bool,
    states: usize,
) -> Ledger {
    let inputs: Vec<&TensorTraffic> = forward
        .tensors
        .iter()
        .filter(|t| t.access == Access::Read)
        .collect();
    let mut l = Ledger::new();
    l.tensors.extend(inputs.iter().map(|&t| t.clone()));
    l.add(true, "d_out", out_elems, elem_bytes, Access::Read);
    l.add(final_states, "d_final_states", states, F32, Access::Read);
    l.tensors.extend(inputs.iter().map(|t| TensorTraffic {
        name: format!("d_{}", t.name),
        bytes: t.bytes,
        access: Access::Write,
    }));
    l
}

/// Mamba-1 backward: read every forward input and `d_out` (and `d_final_states`
/// when the forward returned final states), write the gradient of every input.
/// The adjoint recurrence needs each forward decay again, so it recomputes every
/// exp of the forward (nothing is stored between the passes); the arithmetic is
/// the forward recurrence replayed plus its adjoint, twice the forward's.
fn mamba1_scan_backward(s: &Mamba1ScanShape) -> Cost {
    let forward = mamba1_scan(s);
    let e = s.dtype.size_bytes();
    let bdl = s.batch * s.d_inner * s.seqlen;
    let states = s.batch * s.d_inner * s.d_state;
    let l = backward_ledger(&forward, bdl, e, s.final_states, states);
    l.finish(0.0, 2.0 * forward.simt_flops, forward.exps)
}

/// SSD backward: read every forward input and `d_out` (and `d_final_states`),
/// write the gradient of every input. Compulsory MMA work, with T = batch x
/// seqlen tokens and Q the chunk length:
/// - `8 T H P N`: the state path's four products per head (d_x and d_B through
///   the chunk states, d_C and the state gradient through the inter-chunk
///   output), 2 P N flops per token each;
/// - `2 T H Q P`: the intra-chunk `(Q x Q)` scores against `d_out` per head;
/// - `4 T G Q N`: `d_C` and `d_B` through the `C B^T` scores, once per group.
///
/// Exps: the forward's decays are recomputed (nothing is stored between the
/// passes). Ordinary flops: twice the forward's, for information.
fn ssd_backward(s: &SsdShape) -> Cost {
    let forward = ssd(s);
    let e = s.dtype.size_bytes();
    let blhp = s.batch * s.seqlen * s.heads * s.head_dim;
    let states = s.batch * s.heads * s.head_dim * s.d_state;
    let l = backward_ledger(&forward, blhp, e, s.final_states, states);
    let t = (s.batch * s.seqlen) as f64;
    let (h, g, q) = (s.heads as f64, s.groups as f64, s.chunk_size.max(1) as f64);
    let (p, n) = (s.head_dim as f64, s.d_state as f64);
    let mma = 8.0 * t * h * p * n + 2.0 * t * h * q * p + 4.0 * t * g * q * n;
    l.finish(mma, 2.0 * forward.simt_flops, forward.exps)
}

fn mamba1_scan(s: &Mamba1ScanShape) -> Cost {
    use Access::*;
    let e = s.dtype.size_bytes();
    let bdl = s.batch * s.d_inner * s.seqlen;
    let bc = match s.groups {
        Some(g) => s.batch * g * s.d_state * s.seqlen,
        None => s.d_inner * s.d_state,
    };
    let states = s.batch * s.d_inner * s.d_state;
    let mut l = Ledger::new();
    l.add(true, "u", bdl, e, Read);
    l.add(true, "delta", bdl, e, Read);
    l.add(true, "A", s.d_inner * s.d_state, F32, Read);
    l.add(true, "B", bc, e, Read);
    l.add(true, "C", bc, e, Read);
    l.add(s.d, "D", s.d_inner, F32, Read);
    l.add(s.z, "z", bdl, e, Read);
    l.add(s.delta_bias, "delta_bias", s.d_inner, F32, Read);
    l.add(s.initial_states, "initial_states", states, F32, Read);
    l.add(true, "out", bdl, e, Write);
    l.add(s.final_states, "final_states", states, F32, Write);
    let state_steps = (bdl * s.d_state) as f64;
    // Per state element and step: dt*A, (dt*u)*B, the h update (FMA), the C*h sum (FMA).
    l.finish(0.0, 6.0 * state_steps, state_steps)
}

/// Sums over the chunks of a length-`len` sequence cut into chunks of `q`.
struct ChunkSums {
    chunks: f64,
    /// sum of q_c^2: the size of the intra-chunk (Q x Q) products.
    squares: f64,
    /// sum of q_c (q_c + 1) / 2: the causal decay entries.
    triangles: f64,
}

fn chunk_sums(len: usize, q: usize) -> ChunkSums {
    let q = q.max(1);
    let (full, rest) = ((len / q) as f64, (len % q) as f64);
    let qf = q as f64;
    ChunkSums {
        chunks: full + if rest > 0.0 { 1.0 } else { 0.0 },
        squares: full * qf * qf + rest * rest,
        triangles: full * qf * (qf + 1.0) / 2.0 + rest * (rest + 1.0) / 2.0,
    }
}

fn ssd(s: &SsdShape) -> Cost {
    use Access::*;
    let e = s.dtype.size_bytes();
    let blhp = s.batch * s.seqlen * s.heads * s.head_dim;
    let blgn = s.batch * s.seqlen * s.groups * s.d_state;
    let states = s.batch * s.heads * s.head_dim * s.d_state;
    let d_len = s.d.len(s.heads, s.head_dim);
    let mut l = Ledger::new();
    l.add(true, "x", blhp, e, Read);
    l.add(true, "dt", s.batch * s.seqlen * s.heads, e, Read);
    l.add(true, "A", s.heads, F32, Read);
    l.add(true, "B", blgn, e, Read);
    l.add(true, "C", blgn, e, Read);
    l.add(s.dt_bias, "dt_bias", s.heads, F32, Read);
    l.add(s.d != SkipKind::None, "D", d_len, F32, Read);
    l.add(s.z, "z", blhp, e, Read);
    l.add(s.initial_states, "initial_states", states, F32, Read);
    l.add(true, "out", blhp, e, Write);
    l.add(s.final_states, "final_states", states, F32, Write);

    let c = chunk_sums(s.seqlen, s.chunk_size);
    let (b, h, g) = (s.batch as f64, s.heads as f64, s.groups as f64);
    let (p, n, len) = (s.head_dim as f64, s.d_state as f64, s.seqlen as f64);
    // Per group: C B^T over each chunk (q x q x N). Per head: the masked (q x q) x
    // (q x P) product, the chunk state x^T B (P x N over q) and the inter-chunk
    // output C S (q x N x P).
    let mma = b * (g * 2.0 * n * c.squares + h * (2.0 * p * c.squares + 4.0 * p * n * len));
    // Per head: state passing (P x N FMAs per chunk) and the decay products.
    let simt = b * h * (2.0 * p * n * c.chunks + 2.0 * c.squares);
    // Per head: exp(s_i - s_j) for j <= i, exp(s_i) and exp(s_Q - s_j) per position.
    let exps = b * h * (c.triangles + 2.0 * len);
    l.finish(mma, simt, exps)
}

fn mamba1_step(s: &Mamba1StepShape) -> Cost {
    use Access::*;
    let e = s.dtype.size_bytes();
    let bd = s.batch * s.d_inner;
    let bgn = s.batch * s.groups * s.d_state;
    let mut l = Ledger::new();
    l.add(true, "x", bd, e, Read);
    l.add(true, "dt", bd, e, Read);
    l.add(true, "A", s.d_inner * s.d_state, F32, Read);
    l.add(true, "B", bgn, e, Read);
    l.add(true, "C", bgn, e, Read);
    l.add(s.d, "D", s.d_inner, F32, Read);
    l.add(s.z, "z", bd, e, Read);
    l.add(s.dt_bias, "dt_bias", s.d_inner, F32, Read);
    l.add(true, "state", bd * s.d_state, F32, ReadWrite);
    l.add(true, "out", bd, e, Write);
    let state_elems = (bd * s.d_state) as f64;
    l.finish(0.0, 6.0 * state_elems, state_elems)
}

fn mamba2_step(s: &Mamba2StepShape) -> Cost {
    use Access::*;
    let e = s.dtype.size_bytes();
    let bhp = s.batch * s.heads * s.head_dim;
    let bgn = s.batch * s.groups * s.d_state;
    let d_len = s.d.len(s.heads, s.head_dim);
    let mut l = Ledger::new();
    l.add(true, "x", bhp, e, Read);
    l.add(true, "dt", s.batch * s.heads, e, Read);
    l.add(true, "A", s.heads, F32, Read);
    l.add(true, "B", bgn, e, Read);
    l.add(true, "C", bgn, e, Read);
    l.add(s.d != SkipKind::None, "D", d_len, F32, Read);
    l.add(s.z, "z", bhp, e, Read);
    l.add(s.dt_bias, "dt_bias", s.heads, F32, Read);
    l.add(true, "state", bhp * s.d_state, F32, ReadWrite);
    l.add(true, "out", bhp, e, Write);
    let state_elems = (bhp * s.d_state) as f64;
    // Per state element: decay multiply, the dt x B FMA, the C dot FMA.
    l.finish(0.0, 5.0 * state_elems, (s.batch * s.heads) as f64)
}

fn stream(s: &StreamShape) -> Cost {
    let mut l = Ledger::new();
    l.add(
        true,
        "inputs",
        s.elements,
        s.read_bytes_per_element,
        Access::Read,
    );
    l.add(
        true,
        "outputs",
        s.elements,
        s.write_bytes_per_element,
        Access::Write,
    );
    l.finish(0.0, (s.elements * s.flops_per_element) as f64, 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssm_core::DType;

    fn tiny_scan() -> Mamba1ScanShape {
        Mamba1ScanShape {
            batch: 2,
            d_inner: 3,
            d_state: 4,
            seqlen: 5,
            groups: Some(1),
            dtype: DType::F16,
            z: false,
            d: false,
            delta_bias: false,
            softplus: false,
            initial_states: false,
            final_states: false,
        }
    }

    #[test]
    fn scan_bytes_count_each_tensor_once() {
        let s = tiny_scan();
        let c = cost(&Problem::Mamba1Scan(s));
        // u, delta: 2*3*5 halfs each; A: 3*4 f32; B, C: 2*1*4*5 halfs each.
        assert_eq!(c.read_bytes, 2 * 30 * 2 + 12 * 4 + 2 * 40 * 2);
        assert_eq!(c.write_bytes, 30 * 2);
        assert_eq!(c.exps, (30 * 4) as f64);
        // Every option adds exactly its tensor.
        let all = Mamba1ScanShape {
            z: true,
            d: true,
            delta_bias: true,
            initial_states: true,
            final_states: true,
            groups: None,
            ..s
        };
        let c2 = cost(&Problem::Mamba1Scan(all));
        let bc_const = 2 * 12 * 2;
        let expected_read = 2 * 30 * 2 + 12 * 4 + bc_const + 3 * 4 + 30 * 2 + 3 * 4 + 2 * 3 * 4 * 4;
        assert_eq!(c2.read_bytes, expected_read as u64);
        assert_eq!(c2.write_bytes, 30 * 2 + 2 * 3 * 4 * 4);
    }

    #[test]
    fn ssd_chunk_sums_handle_a_partial_last_chunk() {
        let c = chunk_sums(10, 4);
        assert_eq!(c.chunks, 3.0);
        assert_eq!(c.squares, 16.0 + 16.0 + 4.0);
        assert_eq!(c.triangles, 10.0 + 10.0 + 3.0);
        let one = chunk_sums(3, 100);
        assert_eq!((one.chunks, one.squares), (1.0, 9.0));
    }

    #[test]
    fn ssd_mma_work_grows_with_the_chunk_but_bytes_do_not() {
        let Problem::Ssd(block) =
            crate::workloads::mamba2_block_ssd(1, 1024, 4, 64, 128, 1, DType::Bf16)
        else {
            unreachable!("an SSD workload")
        };
        let base = SsdShape {
            chunk_size: 64,
            ..block
        };
        let small = cost(&Problem::Ssd(base));
        let large = cost(&Problem::Ssd(SsdShape {
            chunk_size: 256,
            ..base
        }));
        assert_eq!(small.bytes(), large.bytes());
        assert!(large.mma_flops > small.mma_flops);
    }

    #[test]
    fn decode_state_is_read_and_written() {
        let s = Mamba2StepShape {
            batch: 2,
            heads: 3,
            head_dim: 4,
            d_state: 8,
            groups: 1,
            dtype: DType::F32,
            z: false,
            d: SkipKind::None,
            dt_bias: false,
            softplus: false,
        };
        let c = cost(&Problem::Mamba2Step(s));
        let state = (2 * 3 * 4 * 8 * 4) as u64;
        let state_row = c.tensors.iter().find(|t| t.name == "state").unwrap();
        assert_eq!(
            (state_row.bytes, state_row.access),
            (state, Access::ReadWrite)
        );
        assert_eq!(c.write_bytes, state + 2 * 3 * 4 * 4);
    }
    fn m2_27b(final_states: bool) -> SsdShape {
        SsdShape {
            batch: 4,
            seqlen: 4096,
            heads: 80,
            head_dim: 64,
            d_state: 128,
            groups: 1,
            chunk_size: 256,
            dtype: DType::Bf16,
            z: false,
            d: SkipKind::PerHead,
            dt_bias: true,
            softplus: true,
            initial_states: false,
            final_states,
        }
    }

    #[test]
    fn ssd_backward_reads_inputs_and_d_out_and_writes_every_gradient() {
        let s = m2_27b(false);
        let fwd = cost(&Problem::Ssd(s));
        let bwd = cost_of(&Problem::Ssd(s), Pass::Backward);
        let out = (4 * 4096 * 80 * 64 * 2) as u64;
        // Reads: the forward's reads plus d_out (the size of out).
        assert_eq!(bwd.read_bytes, fwd.read_bytes + out);
        // Writes: one gradient per input, each the size of its input.
        assert_eq!(bwd.write_bytes, fwd.read_bytes);
        let t = 4.0 * 4096.0;
        let mma =
            8.0 * t * 80.0 * 64.0 * 128.0 + 2.0 * t * 80.0 * 256.0 * 64.0 + 4.0 * t * 256.0 * 128.0;
        assert_eq!(bwd.mma_flops, mma);
        assert_eq!(bwd.exps, fwd.exps, "the decays are recomputed");
        // Final states add their gradient as an input of the backward.
        let with_final = cost_of(&Problem::Ssd(m2_27b(true)), Pass::Backward);
        assert_eq!(
            with_final.read_bytes,
            bwd.read_bytes + 4 * 80 * 64 * 128 * 4
        );
    }

    #[test]
    fn scan_backward_recomputes_every_exp() {
        let s = Mamba1ScanShape {
            z: true,
            d: true,
            delta_bias: true,
            ..tiny_scan()
        };
        let fwd = cost(&Problem::Mamba1Scan(s));
        let bwd = cost_of(&Problem::Mamba1Scan(s), Pass::Backward);
        assert_eq!(bwd.exps, fwd.exps);
        assert_eq!(bwd.mma_flops, 0.0);
        assert_eq!(bwd.read_bytes, fwd.read_bytes + 30 * 2, "inputs and d_out");
        assert_eq!(bwd.write_bytes, fwd.read_bytes, "a gradient per input");
        let names: Vec<&str> = bwd.tensors.iter().map(|t| t.name.as_str()).collect();
        for g in [
            "d_u",
            "d_delta",
            "d_A",
            "d_B",
            "d_C",
            "d_D",
            "d_z",
            "d_delta_bias",
        ] {
            assert!(names.contains(&g), "{g} in {names:?}");
        }
    }

    #[test]
    fn forward_backward_is_the_sum_and_steps_have_no_backward() {
        let p = Problem::Ssd(m2_27b(false));
        let (f, b) = (cost_of(&p, Pass::Forward), cost_of(&p, Pass::Backward));
        let fb = cost_of(&p, Pass::ForwardBackward);
        assert_eq!(f, cost(&p));
        assert_eq!(fb.bytes(), f.bytes() + b.bytes());
        assert_eq!(fb.mma_flops, f.mma_flops + b.mma_flops);
        assert_eq!(fb.exps, f.exps + b.exps);
        assert!(backward_modelled(&p));
        let step = Problem::Mamba1Step(Mamba1StepShape {
            batch: 1,
            d_inner: 8,
            d_state: 4,
            groups: 1,
            dtype: DType::F32,
            z: false,
            d: false,
            dt_bias: false,
            softplus: false,
        });
        assert!(!backward_modelled(&step));
        assert_eq!(cost_of(&step, Pass::Backward).bytes(), 0);
        assert_eq!(cost_of(&step, Pass::ForwardBackward), cost(&step));
    }
}
