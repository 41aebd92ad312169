//! What a benchmark computes: the shape, element type and options of one call.
//!
//! A [`Problem`] is all the traffic model needs ([`crate::traffic`]) and is
//! stored in every result, so a result can be re-costed later and two results are
//! only compared when their problems are equal.

use serde::{Deserialize, Serialize};
use ssm_core::DType;

/// Mamba-1 selective scan (docs/DESIGN.md §1.1; layouts §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mamba1ScanShape {
    /// `b`.
    pub batch: usize,
    /// `D_in`, the channels.
    pub d_inner: usize,
    /// `N`, the state size per channel.
    pub d_state: usize,
    /// `L`.
    pub seqlen: usize,
    /// B/C groups (`(b, G, N, L)`); `None`: constant `(D_in, N)` B and C.
    pub groups: Option<usize>,
    /// Element type of u, delta, z, B, C and out.
    pub dtype: DType,
    /// The output is gated by `silu(z)` (z read).
    pub z: bool,
    /// The skip term `D` `(D_in)` is applied.
    pub d: bool,
    /// `delta_bias` `(D_in)` is added to delta.
    pub delta_bias: bool,
    /// Softplus is applied to the step size.
    pub softplus: bool,
    /// Initial states `(b, D_in, N)` f32 are read.
    pub initial_states: bool,
    /// Final states `(b, D_in, N)` f32 are written.
    pub final_states: bool,
}

/// The skip term `D` of SSD.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipKind {
    /// No skip term.
    None,
    /// `D` `(H)`.
    PerHead,
    /// `D` `(H, P)`.
    PerHeadDim,
}

impl SkipKind {
    /// Elements of `D`: none, one per head, or one per (head, head-dim column).
    pub fn len(self, heads: usize, head_dim: usize) -> usize {
        match self {
            SkipKind::None => 0,
            SkipKind::PerHead => heads,
            SkipKind::PerHeadDim => heads * head_dim,
        }
    }
}

/// Mamba-2 SSD forward (docs/DESIGN.md §1.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SsdShape {
    /// `b`.
    pub batch: usize,
    /// `L`.
    pub seqlen: usize,
    /// `H`, the heads.
    pub heads: usize,
    /// `P`, the head dimension.
    pub head_dim: usize,
    /// `N`, the state size.
    pub d_state: usize,
    /// `G`, the B/C groups.
    pub groups: usize,
    /// Chunk length Q of the chunked algorithm (sets the MMA work, not the bytes).
    pub chunk_size: usize,
    /// Element type of x, dt, B, C, z and out.
    pub dtype: DType,
    /// The output is gated by `silu(z)` (z read).
    pub z: bool,
    /// The skip term's shape.
    pub d: SkipKind,
    /// `dt_bias` `(H)` is added to dt.
    pub dt_bias: bool,
    /// Softplus is applied to the step size.
    pub softplus: bool,
    /// Initial states `(b, H, P, N)` f32 are read.
    pub initial_states: bool,
    /// Final states `(b, H, P, N)` f32 are written.
    pub final_states: bool,
}

/// One Mamba-1 decode step; the f32 state cache has `batch` live rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mamba1StepShape {
    /// `b`, tokens decoded at once.
    pub batch: usize,
    /// `D_in`, the channels.
    pub d_inner: usize,
    /// `N`, the state size per channel.
    pub d_state: usize,
    /// `G`, the B/C groups.
    pub groups: usize,
    /// Element type of x, dt, B, C, z and out.
    pub dtype: DType,
    /// The output is gated by `silu(z)`.
    pub z: bool,
    /// The skip term `D` `(D_in)` is applied.
    pub d: bool,
    /// `dt_bias` `(D_in)` is added to dt.
    pub dt_bias: bool,
    /// Softplus is applied to the step size.
    pub softplus: bool,
}

/// One Mamba-2 decode step; the f32 state cache has `batch` live rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mamba2StepShape {
    /// `b`, tokens decoded at once.
    pub batch: usize,
    /// `H`, the heads.
    pub heads: usize,
    /// `P`, the head dimension.
    pub head_dim: usize,
    /// `N`, the state size.
    pub d_state: usize,
    /// `G`, the B/C groups.
    pub groups: usize,
    /// Element type of x, dt, B, C, z and out.
    pub dtype: DType,
    /// The output is gated by `silu(z)`.
    pub z: bool,
    /// The skip term's shape.
    pub d: SkipKind,
    /// `dt_bias` `(H)` is added to dt.
    pub dt_bias: bool,
    /// Softplus is applied to the step size.
    pub softplus: bool,
}

/// A streaming kernel over `elements` items that reads `read_bytes_per_element`
/// and writes `write_bytes_per_element` (the runtime's self-test axpy: the
/// bandwidth ceiling and the telemetry path's own check).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamShape {
    /// Items processed.
    pub elements: usize,
    /// Bytes read per item.
    pub read_bytes_per_element: usize,
    /// Bytes written per item.
    pub write_bytes_per_element: usize,
    /// Floating-point operations per element.
    pub flops_per_element: usize,
}

/// Which pass of an operation a result timed.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Pass {
    /// The forward (every result before passes were recorded).
    #[default]
    Forward,
    /// The gradients alone, given the forward's inputs and `d_out`.
    Backward,
    /// A forward then its backward, timed as one.
    ForwardBackward,
}

impl Pass {
    /// The suffix of a result id: none for the forward, `bwd`, `fwd+bwd`.
    pub fn id_suffix(self) -> Option<&'static str> {
        match self {
            Pass::Forward => None,
            Pass::Backward => Some("bwd"),
            Pass::ForwardBackward => Some("fwd+bwd"),
        }
    }
}

impl std::fmt::Display for Pass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Pass::Forward => "fwd",
            Pass::Backward => "bwd",
            Pass::ForwardBackward => "fwd+bwd",
        })
    }
}

/// Any benchmarked operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Problem {
    /// The Mamba-1 selective scan.
    Mamba1Scan(Mamba1ScanShape),
    /// The Mamba-2 SSD.
    Ssd(SsdShape),
    /// A Mamba-1 decode step.
    Mamba1Step(Mamba1StepShape),
    /// A Mamba-2 decode step.
    Mamba2Step(Mamba2StepShape),
    /// A streaming kernel (the bandwidth probe).
    Stream(StreamShape),
}

impl Problem {
    /// Short family name: `mamba1_scan`, `ssd`, `mamba1_step`, `mamba2_step`, `stream`.
    pub fn op_name(&self) -> &'static str {
        match self {
            Problem::Mamba1Scan(_) => "mamba1_scan",
            Problem::Ssd(_) => "ssd",
            Problem::Mamba1Step(_) => "mamba1_step",
            Problem::Mamba2Step(_) => "mamba2_step",
            Problem::Stream(_) => "stream",
        }
    }

    /// Tokens one call processes (batch x length; a decode step is one token per row).
    pub fn tokens(&self) -> u64 {
        let t = match *self {
            Problem::Mamba1Scan(s) => s.batch * s.seqlen,
            Problem::Ssd(s) => s.batch * s.seqlen,
            Problem::Mamba1Step(s) => s.batch,
            Problem::Mamba2Step(s) => s.batch,
            Problem::Stream(s) => s.elements,
        };
        t as u64
    }

    /// Sequence length, for plots against L (`None` for decode steps and streams).
    pub fn seqlen(&self) -> Option<usize> {
        match *self {
            Problem::Mamba1Scan(s) => Some(s.seqlen),
            Problem::Ssd(s) => Some(s.seqlen),
            _ => None,
        }
    }

    /// Input element type (f32 for the stream kernel, whose inputs are mixed).
    pub fn dtype(&self) -> DType {
        match *self {
            Problem::Mamba1Scan(s) => s.dtype,
            Problem::Ssd(s) => s.dtype,
            Problem::Mamba1Step(s) => s.dtype,
            Problem::Mamba2Step(s) => s.dtype,
            Problem::Stream(_) => DType::F32,
        }
    }

    /// The same problem with sequence length `seqlen` (decode steps and streams are unchanged).
    pub fn with_seqlen(mut self, seqlen: usize) -> Self {
        match &mut self {
            Problem::Mamba1Scan(s) => s.seqlen = seqlen,
            Problem::Ssd(s) => s.seqlen = seqlen,
            _ => {}
        }
        self
    }

    /// The same problem with its input element type changed.
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        match &mut self {
            Problem::Mamba1Scan(s) => s.dtype = dtype,
            Problem::Ssd(s) => s.dtype = dtype,
            Problem::Mamba1Step(s) => s.dtype = dtype,
            Problem::Mamba2Step(s) => s.dtype = dtype,
            Problem::Stream(_) => {}
        }
        self
    }

    /// A compact label such as `b4 D5120 N16 L4096 bf16 +z+D+softplus`.
    pub fn label(&self) -> String {
        let flags = |pairs: &[(bool, &str)]| -> String {
            pairs
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, name)| format!("+{name}"))
                .collect()
        };
        match *self {
            Problem::Mamba1Scan(s) => {
                let bc = s.groups.map_or("const".to_string(), |g| format!("G{g}"));
                format!(
                    "b{} D{} N{} L{} {} {} {}",
                    s.batch,
                    s.d_inner,
                    s.d_state,
                    s.seqlen,
                    bc,
                    s.dtype,
                    flags(&[
                        (s.z, "z"),
                        (s.d, "D"),
                        (s.delta_bias, "bias"),
                        (s.softplus, "softplus"),
                        (s.initial_states, "h0"),
                        (s.final_states, "hT"),
                    ])
                )
            }
            Problem::Ssd(s) => format!(
                "b{} L{} H{} P{} N{} G{} Q{} {} {}",
                s.batch,
                s.seqlen,
                s.heads,
                s.head_dim,
                s.d_state,
                s.groups,
                s.chunk_size,
                s.dtype,
                flags(&[
                    (s.z, "z"),
                    (s.d != SkipKind::None, "D"),
                    (s.dt_bias, "bias"),
                    (s.softplus, "softplus"),
                    (s.initial_states, "h0"),
                    (s.final_states, "hT"),
                ])
            ),
            Problem::Mamba1Step(s) => format!(
                "step b{} D{} N{} G{} {} {}",
                s.batch,
                s.d_inner,
                s.d_state,
                s.groups,
                s.dtype,
                flags(&[
                    (s.z, "z"),
                    (s.d, "D"),
                    (s.dt_bias, "bias"),
                    (s.softplus, "softplus")
                ])
            ),
            Problem::Mamba2Step(s) => format!(
                "step b{} H{} P{} N{} G{} {} {}",
                s.batch,
                s.heads,
                s.head_dim,
                s.d_state,
                s.groups,
                s.dtype,
                flags(&[
                    (s.z, "z"),
                    (s.d != SkipKind::None, "D"),
                    (s.dt_bias, "bias"),
                    (s.softplus, "softplus")
                ])
            ),
            Problem::Stream(s) => format!(
                "stream n{} r{}B w{}B",
                s.elements, s.read_bytes_per_element, s.write_bytes_per_element
            ),
        }
        .trim_end()
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan() -> Problem {
        Problem::Mamba1Scan(Mamba1ScanShape {
            batch: 2,
            d_inner: 64,
            d_state: 16,
            seqlen: 512,
            groups: Some(1),
            dtype: DType::Bf16,
            z: true,
            d: true,
            delta_bias: false,
            softplus: true,
            initial_states: false,
            final_states: false,
        })
    }

    #[test]
    fn json_round_trip_is_tagged_by_op() {
        let p = scan();
        let json = serde_json::to_string(&p).unwrap();
        assert!(json.contains("\"op\":\"mamba1_scan\""), "{json}");
        assert!(json.contains("\"dtype\":\"bf16\""), "{json}");
        let back: Problem = serde_json::from_str(&json).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn tokens_seqlen_and_relabelling() {
        let p = scan();
        assert_eq!(p.tokens(), 1024);
        assert_eq!(p.with_seqlen(4096).seqlen(), Some(4096));
        assert_eq!(p.with_dtype(DType::F32).dtype(), DType::F32);
        assert_eq!(p.label(), "b2 D64 N16 L512 G1 bf16 +z+D+softplus");
    }
}
