//! NVRTC: one translation unit in, a cubin and ptxas's resource log out.
//!
//! We compile straight to SASS (`-arch=sm_XX`, not `compute_XX`) so that the
//! driver has nothing left to JIT, and always pass `--ptxas-options=-v` so the
//! log carries registers, spills, stack and shared memory of every kernel
//! (parsed by [`crate::ptxas`]).

use std::ffi::{CStr, CString};
use std::os::raw::c_char;

use cudarc::nvrtc::sys::{self, nvrtcProgram, nvrtcResult};

use crate::GpuError;

/// Extra NVRTC options for every compile, space-separated (`-maxrregcount=128`,
/// `--use_fast_math`, ...). They are part of the cache key.
pub const EXTRA_FLAGS_ENV: &str = "SSM_NVRTC_FLAGS";
/// Overrides the target the [`crate::Gpu`] picks from the device (`sm_80`, `sm_90`, `sm_90a`).
pub const ARCH_ENV: &str = "SSM_CUDA_ARCH";

/// A GPU target NVRTC compiles SASS for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Arch {
    /// Ampere (A100); its cubin also runs on sm_86/sm_89.
    #[serde(rename = "sm_80")]
    Sm80,
    /// Hopper (H100, H200), the primary target.
    #[serde(rename = "sm_90")]
    Sm90,
    /// Hopper with the architecture-specific features (`wgmma`, `setmaxnreg`);
    /// runs on compute capability 9.0 only.
    #[serde(rename = "sm_90a")]
    Sm90a,
}

impl Arch {
    pub const ALL: [Arch; 3] = [Arch::Sm80, Arch::Sm90, Arch::Sm90a];

    pub fn name(self) -> &'static str {
        match self {
            Arch::Sm80 => "sm_80",
            Arch::Sm90 => "sm_90",
            Arch::Sm90a => "sm_90a",
        }
    }

    /// The NVRTC option selecting this target.
    pub fn flag(self) -> String {
        format!("-arch={}", self.name())
    }

    /// The best target whose cubin runs on a device of compute capability
    /// `major.minor`, or `None` for devices we do not build for.
    pub fn for_compute_capability(major: i32, minor: i32) -> Option<Arch> {
        match (major, minor) {
            (9, 0) => Some(Arch::Sm90),
            (8, _) => Some(Arch::Sm80),
            _ => None,
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase();
        Arch::ALL
            .into_iter()
            .find(|a| a.name() == wanted || a.name().replace('_', "") == wanted)
            .ok_or_else(|| format!("unknown CUDA arch `{s}` (expected sm_80, sm_90 or sm_90a)"))
    }
}

/// The NVRTC options for one compile, in a fixed order (they are hashed into the
/// cache key).
pub fn compile_options(
    arch: Arch,
    include_dir: &std::path::Path,
    defines: &[(&str, String)],
    extra: &[String],
) -> Result<Vec<String>, GpuError> {
    let mut options = vec![
        arch.flag(),
        "-std=c++17".to_string(),
        // Source lines in the cubin for profilers; costs no run time.
        "-lineinfo".to_string(),
        "--ptxas-options=-v".to_string(),
        format!("-I{}", include_dir.display()),
    ];
    for (name, value) in defines {
        if !is_identifier(name) {
            return Err(GpuError::InvalidArgument(format!(
                "define name `{name}` is not a C identifier"
            )));
        }
        if value.contains(['\n', '\r', '\0']) {
            return Err(GpuError::InvalidArgument(format!(
                "define {name}: value must be one line, got {value:?}"
            )));
        }
        options.push(format!("-D{name}={value}"));
    }
    options.extend(extra.iter().cloned());
    Ok(options)
}

/// `SSM_NVRTC_FLAGS` split on whitespace.
pub fn extra_flags_from_env() -> Vec<String> {
    std::env::var(EXTRA_FLAGS_ENV)
        .map(|flags| flags.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// What NVRTC produced for one translation unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledModule {
    pub cubin: Vec<u8>,
    /// NVRTC's program log: warnings and ptxas's `-v` resource report.
    pub log: String,
}

/// Compile `text` (already include-resolved) as program `name` with `options`.
/// The caller must have made NVRTC loadable through [`crate::toolkit::nvrtc`].
pub fn compile_cubin(
    name: &str,
    text: &str,
    options: &[String],
) -> Result<CompiledModule, GpuError> {
    let (program, log) = run_nvrtc(name, text, options)?;
    Ok(CompiledModule {
        cubin: program.cubin()?,
        log,
    })
}

/// NVRTC's front end only (`-fdevice-syntax-only`): parsing, templates and every
/// `static_assert` / `#error`, no code generation; about 30x faster than
/// [`compile_cubin`], for sweeping many define sets (the kernel selection grid
/// test). Returns the log (warnings).
pub fn check_syntax(name: &str, text: &str, options: &[String]) -> Result<String, GpuError> {
    let mut options: Vec<String> = options
        .iter()
        .filter(|o| !o.starts_with("--ptxas-options"))
        .cloned()
        .collect();
    options.push("-fdevice-syntax-only".to_string());
    run_nvrtc(name, text, &options).map(|(_, log)| log)
}

fn run_nvrtc(name: &str, text: &str, options: &[String]) -> Result<(Program, String), GpuError> {
    crate::toolkit::nvrtc()?;
    let invalid = |what: &str| GpuError::InvalidArgument(format!("{what} contains a NUL byte"));
    let c_text = CString::new(text).map_err(|_| invalid("kernel source"))?;
    let c_name = CString::new(name).map_err(|_| invalid("kernel name"))?;
    let c_options = options
        .iter()
        .map(|o| CString::new(o.as_str()).map_err(|_| invalid("an NVRTC option")))
        .collect::<Result<Vec<_>, _>>()?;
    let option_ptrs: Vec<*const c_char> = c_options.iter().map(|o| o.as_ptr()).collect();

    let program = Program::create(&c_text, &c_name)?;
    // SAFETY: the program is live; the option pointers outlive the call.
    let status = unsafe {
        sys::nvrtcCompileProgram(program.0, option_ptrs.len() as i32, option_ptrs.as_ptr())
    };
    let log = program.log()?;
    match status {
        nvrtcResult::NVRTC_SUCCESS => Ok((program, log)),
        nvrtcResult::NVRTC_ERROR_COMPILATION => Err(GpuError::Compile {
            file: name.to_string(),
            log,
        }),
        other => Err(GpuError::Compile {
            file: name.to_string(),
            log: format!(
                "{} (options: {})\n{log}",
                describe(other),
                options.join(" ")
            ),
        }),
    }
}

/// An NVRTC program, destroyed on drop.
struct Program(nvrtcProgram);

impl Program {
    fn create(text: &CStr, name: &CStr) -> Result<Self, GpuError> {
        let mut program: nvrtcProgram = std::ptr::null_mut();
        // SAFETY: valid C strings; no named headers (includes are resolved by us).
        let status = unsafe {
            sys::nvrtcCreateProgram(
                &mut program,
                text.as_ptr(),
                name.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        check(status, "nvrtcCreateProgram")?;
        Ok(Program(program))
    }

    fn log(&self) -> Result<String, GpuError> {
        let mut size = 0usize;
        // SAFETY: live program, valid out-pointer.
        check(
            unsafe { sys::nvrtcGetProgramLogSize(self.0, &mut size) },
            "nvrtcGetProgramLogSize",
        )?;
        let mut buffer = vec![0u8; size.max(1)];
        // SAFETY: the buffer holds `size` bytes, as NVRTC asked.
        check(
            unsafe { sys::nvrtcGetProgramLog(self.0, buffer.as_mut_ptr().cast()) },
            "nvrtcGetProgramLog",
        )?;
        let text = CStr::from_bytes_until_nul(&buffer)
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_else(|_| String::from_utf8_lossy(&buffer).into_owned());
        Ok(text)
    }

    fn cubin(&self) -> Result<Vec<u8>, GpuError> {
        let mut size = 0usize;
        // SAFETY: live, successfully compiled program; valid out-pointer.
        check(
            unsafe { sys::nvrtcGetCUBINSize(self.0, &mut size) },
            "nvrtcGetCUBINSize",
        )?;
        if size == 0 {
            return Err(GpuError::Compile {
                file: "(nvrtc)".to_string(),
                log: "NVRTC produced no cubin: was a virtual arch (compute_XX) requested?".into(),
            });
        }
        let mut cubin = vec![0u8; size];
        // SAFETY: the buffer holds `size` bytes, as NVRTC asked.
        check(
            unsafe { sys::nvrtcGetCUBIN(self.0, cubin.as_mut_ptr().cast()) },
            "nvrtcGetCUBIN",
        )?;
        Ok(cubin)
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: created by nvrtcCreateProgram, destroyed once. A failure here
        // can only leak the program, so it is ignored.
        unsafe {
            let _ = sys::nvrtcDestroyProgram(&mut self.0);
        }
    }
}

fn check(status: nvrtcResult, call: &str) -> Result<(), GpuError> {
    if status == nvrtcResult::NVRTC_SUCCESS {
        Ok(())
    } else {
        Err(GpuError::Compile {
            file: "(nvrtc)".to_string(),
            log: format!("{call} failed: {}", describe(status)),
        })
    }
}

fn describe(status: nvrtcResult) -> String {
    // SAFETY: NVRTC returns a static string for every status.
    let text = unsafe { sys::nvrtcGetErrorString(status) };
    if text.is_null() {
        format!("{status:?}")
    } else {
        // SAFETY: non-null, NUL-terminated, static.
        unsafe { CStr::from_ptr(text) }
            .to_string_lossy()
            .into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn arch_parses_and_names() {
        assert_eq!("sm_90".parse::<Arch>(), Ok(Arch::Sm90));
        assert_eq!("SM80".parse::<Arch>(), Ok(Arch::Sm80));
        assert_eq!("sm_90a".parse::<Arch>(), Ok(Arch::Sm90a));
        assert!("sm_70".parse::<Arch>().is_err());
        assert_eq!(Arch::Sm90.flag(), "-arch=sm_90");
        assert_eq!(Arch::for_compute_capability(9, 0), Some(Arch::Sm90));
        assert_eq!(Arch::for_compute_capability(8, 9), Some(Arch::Sm80));
        assert_eq!(Arch::for_compute_capability(7, 5), None);
    }

    #[test]
    fn options_carry_arch_includes_defines_in_order() {
        let options = compile_options(
            Arch::Sm90,
            Path::new("/inc"),
            &[("N", "16".into()), ("DTYPE", "__nv_bfloat16".into())],
            &["-maxrregcount=64".into()],
        )
        .unwrap();
        assert_eq!(options[0], "-arch=sm_90");
        assert!(options.contains(&"--ptxas-options=-v".to_string()));
        assert!(options.contains(&"-I/inc".to_string()));
        let n = options.iter().position(|o| o == "-DN=16").unwrap();
        let d = options
            .iter()
            .position(|o| o == "-DDTYPE=__nv_bfloat16")
            .unwrap();
        assert!(n < d);
        assert_eq!(options.last().unwrap(), "-maxrregcount=64");
    }

    #[test]
    fn rejects_bad_defines() {
        let inc = Path::new("/inc");
        assert!(compile_options(Arch::Sm90, inc, &[("1N", "1".into())], &[]).is_err());
        assert!(compile_options(Arch::Sm90, inc, &[("N M", "1".into())], &[]).is_err());
        assert!(compile_options(Arch::Sm90, inc, &[("N", "1\n#define X".into())], &[]).is_err());
    }
}
