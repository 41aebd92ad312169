//! Parser for ptxas's verbose report (`--ptxas-options=-v`), as NVRTC returns it
//! in the program log:
//!
//! ```text
//! ptxas info    : Compiling entry function 'k' for 'sm_90'
//! ptxas info    : Function properties for k
//! ptxas         .     256 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
//! ptxas info    : Used 40 registers, used 1 barriers, 256 bytes cumulative stack size, 1024 bytes smem
//! ```
//!
//! "Function properties" blocks also appear for non-inlined device functions;
//! those are kept (their spills matter) but marked `entry: false`.

/// Resource use of one function, as ptxas reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PtxasFunction {
    /// The (possibly mangled) function name.
    pub name: String,
    /// True for `__global__` entry points.
    pub entry: bool,
    /// The target ptxas compiled for (`sm_90`), when the log names it.
    pub arch: Option<String>,
    /// Registers per thread.
    pub registers: u32,
    /// Named barriers used.
    pub barriers: u32,
    /// Stack-frame bytes per thread (local arrays, spills).
    pub stack_frame_bytes: u32,
    /// Bytes of register spill stores per thread.
    pub spill_store_bytes: u32,
    /// Bytes of register spill loads per thread.
    pub spill_load_bytes: u32,
    /// Stack bytes including called functions' frames (for non-entry functions).
    pub cumulative_stack_bytes: u32,
    /// Static shared memory (`__shared__` arrays); dynamic shared memory is a launch parameter.
    pub smem_bytes: u32,
    /// Constant bank 0 use (kernel parameters), when ptxas reports it.
    pub cmem0_bytes: u32,
}

impl PtxasFunction {
    /// Spill traffic of any kind (stores plus loads).
    pub fn spill_bytes(&self) -> u32 {
        self.spill_store_bytes + self.spill_load_bytes
    }
}

/// Every function in `log`, in the order ptxas reported them.
pub fn parse_log(log: &str) -> Vec<PtxasFunction> {
    let mut functions: Vec<PtxasFunction> = Vec::new();
    // Index into `functions` that the next "stack frame" / "Used" line belongs to.
    let mut properties_of: Option<usize> = None;
    let mut usage_of: Option<usize> = None;
    for line in log.lines() {
        let Some(body) = ptxas_body(line) else {
            continue;
        };
        if let Some(rest) = body.strip_prefix("Compiling entry function ") {
            let (name, arch) = parse_entry_header(rest);
            let index = find_or_add(&mut functions, &name);
            functions[index].entry = true;
            functions[index].arch = arch;
            usage_of = Some(index);
        } else if let Some(rest) = body.strip_prefix("Function properties for ") {
            properties_of = Some(find_or_add(&mut functions, rest.trim()));
        } else if body.contains("bytes stack frame") {
            if let Some(index) = properties_of.take() {
                apply_items(&mut functions[index], body);
            }
        } else if body.starts_with("Used ") {
            if let Some(index) = usage_of.take() {
                apply_items(&mut functions[index], body);
            }
        }
    }
    functions
}

/// The report of entry point `name`, if the log has one.
pub fn find_entry<'a>(functions: &'a [PtxasFunction], name: &str) -> Option<&'a PtxasFunction> {
    functions.iter().find(|f| f.entry && f.name == name)
}

/// The text after `ptxas info    :` or `ptxas         .`, or `None` for other lines.
fn ptxas_body(line: &str) -> Option<&str> {
    let rest = line.trim_start().strip_prefix("ptxas")?;
    let rest = rest.trim_start();
    let rest = rest
        .strip_prefix("info")
        .map(|r| r.trim_start().strip_prefix(':').unwrap_or(r))
        .or_else(|| rest.strip_prefix('.'))?;
    Some(rest.trim())
}

/// `'name' for 'sm_90'` -> (name, Some("sm_90")).
fn parse_entry_header(rest: &str) -> (String, Option<String>) {
    let mut quoted = rest.split('\'').skip(1).step_by(2);
    let name = quoted.next().unwrap_or(rest).to_string();
    let arch = quoted.next().map(str::to_string);
    (name, arch)
}

fn find_or_add(functions: &mut Vec<PtxasFunction>, name: &str) -> usize {
    if let Some(index) = functions.iter().position(|f| f.name == name) {
        return index;
    }
    functions.push(PtxasFunction {
        name: name.to_string(),
        ..PtxasFunction::default()
    });
    functions.len() - 1
}

/// Apply comma-separated items such as `Used 40 registers`, `used 1 barriers`,
/// `256 bytes stack frame`, `1024 bytes smem`, `372 bytes cmem[0]`. Items we do
/// not know (ptxas adds some between versions) are ignored.
fn apply_items(function: &mut PtxasFunction, body: &str) {
    for item in body.split(',') {
        let words: Vec<&str> = item.split_whitespace().collect();
        let number_at = |i: usize| words.get(i).and_then(|w| w.parse::<u32>().ok());
        match words.as_slice() {
            [used, _, "registers"] if used.eq_ignore_ascii_case("used") => {
                function.registers = number_at(1).unwrap_or(0)
            }
            [used, _, "barriers"] if used.eq_ignore_ascii_case("used") => {
                function.barriers = number_at(1).unwrap_or(0)
            }
            [_, "bytes", rest @ ..] => {
                let bytes = number_at(0).unwrap_or(0);
                match rest {
                    ["stack", "frame"] => function.stack_frame_bytes = bytes,
                    ["spill", "stores"] => function.spill_store_bytes = bytes,
                    ["spill", "loads"] => function.spill_load_bytes = bytes,
                    ["cumulative", "stack", "size"] => function.cumulative_stack_bytes = bytes,
                    ["smem"] => function.smem_bytes = bytes,
                    ["cmem[0]"] => function.cmem0_bytes = bytes,
                    _ => {}
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Verbatim NVRTC 13.0 output for sm_80 with `-maxrregcount=16` (two
    /// kernels, one non-inlined device function).
    const SM80_LOG: &str = "\
ptxas warning : For profile sm_80 adjusting per thread register count of 16 to lower bound of 24
ptxas info    : Overriding maximum register limit 256 for 'k2' with  24 of maxrregcount option
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'k2' for 'sm_80'
ptxas info    : Function properties for k2
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 11 registers, used 0 barriers, 264 bytes smem, 360 bytes cmem[0]
ptxas info    : Compile time = 2.192 ms
ptxas info    : Function properties for _Z1gf
ptxas         .     8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas info    : Compiling entry function 'k' for 'sm_80'
ptxas info    : Function properties for k
ptxas         .     256 bytes stack frame, 12 bytes spill stores, 16 bytes spill loads
ptxas info    : Used 24 registers, used 1 barriers, 256 bytes cumulative stack size, 1024 bytes smem, 372 bytes cmem[0]
ptxas info    : Compile time = 32.122 ms
";

    /// Verbatim NVRTC 13.0 output for sm_90 (no cmem line).
    const SM90_LOG: &str = "\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'k2' for 'sm_90'
ptxas info    : Function properties for k2
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 8 registers, used 0 barriers
ptxas info    : Compile time = 3.875 ms
";

    #[test]
    fn parses_entries_and_device_functions() {
        let functions = parse_log(SM80_LOG);
        assert_eq!(functions.len(), 3);
        let k = find_entry(&functions, "k").unwrap();
        assert_eq!(
            *k,
            PtxasFunction {
                name: "k".into(),
                entry: true,
                arch: Some("sm_80".into()),
                registers: 24,
                barriers: 1,
                stack_frame_bytes: 256,
                spill_store_bytes: 12,
                spill_load_bytes: 16,
                cumulative_stack_bytes: 256,
                smem_bytes: 1024,
                cmem0_bytes: 372,
            }
        );
        assert_eq!(k.spill_bytes(), 28);
        let k2 = find_entry(&functions, "k2").unwrap();
        assert_eq!(
            (k2.registers, k2.smem_bytes, k2.cmem0_bytes),
            (11, 264, 360)
        );
        let device_fn = functions.iter().find(|f| f.name == "_Z1gf").unwrap();
        assert!(!device_fn.entry);
        assert_eq!(device_fn.spill_bytes(), 8);
        assert_eq!(find_entry(&functions, "_Z1gf"), None);
    }

    #[test]
    fn parses_the_sm90_format() {
        let functions = parse_log(SM90_LOG);
        let k2 = find_entry(&functions, "k2").unwrap();
        assert_eq!(k2.arch.as_deref(), Some("sm_90"));
        assert_eq!((k2.registers, k2.barriers, k2.smem_bytes), (8, 0, 0));
    }

    #[test]
    fn ignores_foreign_lines_and_empty_logs() {
        assert!(parse_log("").is_empty());
        assert!(parse_log("k.cu(3): warning: unused variable\n").is_empty());
    }
}
