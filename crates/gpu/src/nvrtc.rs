//! NVRTC: one translation unit in, a cubin (or PTX) and ptxas's resource log out.
//!
//! For the real targets we compile straight to SASS (`-arch=sm_XX`) so that the
//! driver has nothing left to JIT, and always pass `--ptxas-options=-v` so the
//! log carries registers, spills, stack and shared memory of every kernel
//! (parsed by [`crate::ptxas`]). For devices newer than the newest real target
//! we build PTX for the virtual `compute_90` instead ([`Arch::Compute90`]),
//! which the driver JIT-compiles for the device when the module is loaded.

use std::ffi::{CStr, CString};
use std::os::raw::c_char;

use cudarc::nvrtc::sys::{self, nvrtcProgram, nvrtcResult};

use crate::GpuError;

/// Extra NVRTC options for every compile, space-separated (`-maxrregcount=128`,
/// `--use_fast_math`, ...). They are part of the cache key.
pub const EXTRA_FLAGS_ENV: &str = "SSM_NVRTC_FLAGS";
/// Overrides the target the [`crate::Gpu`] picks from the device (`sm_80`,
/// `sm_86`, `sm_89`, `sm_90`, `sm_90a`, `compute_90`).
pub const ARCH_ENV: &str = "SSM_CUDA_ARCH";

/// A GPU target NVRTC compiles for: SASS for one architecture, or PTX for the
/// virtual `compute_90`.
///
/// No kernel branches on the target (`__CUDA_ARCH__`): every target runs the
/// same code, and what differs between devices (shared memory per block and per
/// SM, threads and blocks per SM) is read from the device at plan time
/// ([`crate::DeviceLimits`]) and reaches the kernels as defines.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Arch {
    /// Ampere A100 (compute capability 8.0).
    #[serde(rename = "sm_80")]
    Sm80,
    /// Ampere GA10x (RTX 30, A10, A40: 8.6); its cubin also runs on 8.7 and 8.9.
    #[serde(rename = "sm_86")]
    Sm86,
    /// Ada (RTX 40, L4, L40S: 8.9).
    #[serde(rename = "sm_89")]
    Sm89,
    /// Hopper (H100, H200), the primary target.
    #[serde(rename = "sm_90")]
    Sm90,
    /// Hopper with the architecture-specific features (`wgmma`, `setmaxnreg`);
    /// runs on compute capability 9.0 only.
    #[serde(rename = "sm_90a")]
    Sm90a,
    /// PTX for the virtual architecture 9.0, JIT-compiled by the driver at load
    /// time: how devices newer than Hopper (Blackwell, 10.x and 12.x) run.
    #[serde(rename = "compute_90")]
    Compute90,
}

impl Arch {
    /// Every target, SASS and PTX.
    pub const ALL: [Arch; 6] = [
        Arch::Sm80,
        Arch::Sm86,
        Arch::Sm89,
        Arch::Sm90,
        Arch::Sm90a,
        Arch::Compute90,
    ];

    /// The targets a kernel pack is built for by default: SASS for every
    /// supported architecture, and PTX for the newer ones.
    pub const PACK_DEFAULT: [Arch; 5] = [
        Arch::Sm80,
        Arch::Sm86,
        Arch::Sm89,
        Arch::Sm90,
        Arch::Compute90,
    ];

    /// The NVRTC `--gpu-architecture` name (`sm_90`, `compute_90`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Arch::Sm80 => "sm_80",
            Arch::Sm86 => "sm_86",
            Arch::Sm89 => "sm_89",
            Arch::Sm90 => "sm_90",
            Arch::Sm90a => "sm_90a",
            Arch::Compute90 => "compute_90",
        }
    }

    /// The NVRTC option selecting this target.
    pub fn flag(self) -> String {
        format!("-arch={}", self.name())
    }

    /// True for a virtual architecture: NVRTC produces PTX, not a cubin, and
    /// ptxas (with its resource report) runs only in the driver.
    pub fn is_virtual(self) -> bool {
        self == Arch::Compute90
    }

    /// The best target whose module runs on a device of compute capability
    /// `major.minor`, or `None` for devices older than sm_80 (the kernels need
    /// `cp.async` and the sm_80 tensor-core instructions).
    pub fn for_compute_capability(major: i32, minor: i32) -> Option<Arch> {
        match (major, minor) {
            // A cubin runs on its major version's later minor versions.
            (8, 0..=5) => Some(Arch::Sm80),
            (8, 6..=8) => Some(Arch::Sm86),
            (8, _) => Some(Arch::Sm89),
            (9, _) => Some(Arch::Sm90),
            // Newer majors cannot run an sm_90 cubin; the driver JITs PTX.
            (10.., _) => Some(Arch::Compute90),
            _ => None,
        }
    }

    /// [`Arch::for_compute_capability`] as a typed error naming the device.
    pub fn for_device(device: &str, major: i32, minor: i32) -> Result<Arch, GpuError> {
        Arch::for_compute_capability(major, minor).ok_or_else(|| {
            GpuError::NoDevice(format!(
                "{device} has compute capability {major}.{minor}; the kernels need sm_80 or newer \
                 (built for sm_80, sm_86, sm_89 and sm_90, and as compute_90 PTX for newer devices)"
            ))
        })
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
            .ok_or_else(|| {
                format!(
                    "unknown CUDA arch `{s}` (expected one of {})",
                    Arch::ALL.map(Arch::name).join(", ")
                )
            })
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
    compile_options_with(arch, include_dir, defines, extra, true)
}

/// [`compile_options`], with or without `-lineinfo`: source lines in the
/// cubin for profilers cost no run time but make the cubin about four times
/// larger, so kernel packs leave them out.
pub fn compile_options_with(
    arch: Arch,
    include_dir: &std::path::Path,
    defines: &[(&str, String)],
    extra: &[String],
    line_info: bool,
) -> Result<Vec<String>, GpuError> {
    let mut options = vec![arch.flag(), "-std=c++17".to_string()];
    if line_info {
        options.push("-lineinfo".to_string());
    }
    // ptxas only runs for a real target; for PTX it runs in the driver.
    if !arch.is_virtual() {
        options.push("--ptxas-options=-v".to_string());
    }
    options.push(format!("-I{}", include_dir.display()));
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
    /// The module image: a cubin for a real target, NUL-terminated PTX text for
    /// a virtual one ([`Arch::is_virtual`]); `cuModuleLoadData` takes either.
    pub cubin: Vec<u8>,
    /// NVRTC's program log: warnings and ptxas's `-v` resource report.
    pub log: String,
}

impl CompiledModule {
    /// True when the image is PTX text rather than an ELF cubin.
    pub fn is_ptx(&self) -> bool {
        !self.cubin.starts_with(b"\x7fELF")
    }
}

/// Compile `text` (already include-resolved) as program `name` with `options`
/// to a cubin. The caller must have made NVRTC loadable through
/// [`crate::toolkit::nvrtc`].
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

/// Compile for `arch`: a cubin for a real target, PTX for a virtual one.
/// `options` must be [`compile_options`] for the same `arch`.
pub fn compile_for(
    arch: Arch,
    name: &str,
    text: &str,
    options: &[String],
) -> Result<CompiledModule, GpuError> {
    if !arch.is_virtual() {
        return compile_cubin(name, text, options);
    }
    let (program, log) = run_nvrtc(name, text, options)?;
    Ok(CompiledModule {
        cubin: program.ptx()?,
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

    /// The byte count NVRTC's `get_size` (named `call` in errors) reports for
    /// one of this program's outputs.
    ///
    /// # Safety
    /// `get_size` must be one of NVRTC's `nvrtcGet*Size` calls for an output
    /// this program has (the log always; the PTX and cubin once compiled).
    unsafe fn output_size(
        &self,
        get_size: unsafe fn(nvrtcProgram, *mut usize) -> nvrtcResult,
        call: &str,
    ) -> Result<usize, GpuError> {
        let mut size = 0usize;
        // SAFETY: live program, valid out-pointer; the output per the contract.
        check(unsafe { get_size(self.0, &mut size) }, call)?;
        Ok(size)
    }

    /// One of this program's outputs, copied by NVRTC's `get` (named `call` in
    /// errors) into a buffer of `len` bytes.
    ///
    /// # Safety
    /// `get` must be the `nvrtcGet*` call of the output whose size call gave
    /// at most `len` bytes.
    unsafe fn output(
        &self,
        get: unsafe fn(nvrtcProgram, *mut c_char) -> nvrtcResult,
        call: &str,
        len: usize,
    ) -> Result<Vec<u8>, GpuError> {
        let mut buffer = vec![0u8; len];
        // SAFETY: the buffer holds `len` bytes, at least what NVRTC asked for.
        check(unsafe { get(self.0, buffer.as_mut_ptr().cast()) }, call)?;
        Ok(buffer)
    }

    fn log(&self) -> Result<String, GpuError> {
        // SAFETY: every program has a log; the buffer is as long as it asks
        // (at least one byte, for the NUL of an empty log).
        let buffer = unsafe {
            let size = self.output_size(sys::nvrtcGetProgramLogSize, "nvrtcGetProgramLogSize")?;
            self.output(sys::nvrtcGetProgramLog, "nvrtcGetProgramLog", size.max(1))?
        };
        let text = CStr::from_bytes_until_nul(&buffer)
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_else(|_| String::from_utf8_lossy(&buffer).into_owned());
        Ok(text)
    }

    fn cubin(&self) -> Result<Vec<u8>, GpuError> {
        // SAFETY: a successfully compiled program (the caller's) has a cubin size.
        let size = unsafe { self.output_size(sys::nvrtcGetCUBINSize, "nvrtcGetCUBINSize")? };
        if size == 0 {
            return Err(GpuError::Compile {
                file: "(nvrtc)".to_string(),
                log: "NVRTC produced no cubin: was a virtual arch (compute_XX) requested?".into(),
            });
        }
        // SAFETY: the buffer is as long as NVRTC asked.
        unsafe { self.output(sys::nvrtcGetCUBIN, "nvrtcGetCUBIN", size) }
    }
}

impl Program {
    /// The PTX text, with its terminating NUL (what `cuModuleLoadData` needs).
    fn ptx(&self) -> Result<Vec<u8>, GpuError> {
        // SAFETY: a successfully compiled program (the caller's) has PTX; the
        // buffer is as long as NVRTC asks (at least one byte).
        let mut ptx = unsafe {
            let size = self.output_size(sys::nvrtcGetPTXSize, "nvrtcGetPTXSize")?;
            self.output(sys::nvrtcGetPTX, "nvrtcGetPTX", size.max(1))?
        };
        if ptx.last() != Some(&0) {
            ptx.push(0);
        }
        Ok(ptx)
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
        assert_eq!("sm_86".parse::<Arch>(), Ok(Arch::Sm86));
        assert_eq!("sm89".parse::<Arch>(), Ok(Arch::Sm89));
        assert_eq!("sm_90a".parse::<Arch>(), Ok(Arch::Sm90a));
        assert_eq!("compute_90".parse::<Arch>(), Ok(Arch::Compute90));
        let err = "sm_70".parse::<Arch>().unwrap_err();
        assert!(err.contains("sm_86") && err.contains("compute_90"), "{err}");
        assert_eq!(Arch::Sm90.flag(), "-arch=sm_90");
        assert_eq!(Arch::Compute90.flag(), "-arch=compute_90");
        for arch in Arch::ALL {
            assert_eq!(arch.name().parse::<Arch>(), Ok(arch));
            let json = serde_json::to_string(&arch).unwrap();
            assert_eq!(json, format!("\"{}\"", arch.name()));
        }
    }

    #[test]
    fn each_device_gets_a_target_that_runs_on_it() {
        let pick = Arch::for_compute_capability;
        assert_eq!(pick(8, 0), Some(Arch::Sm80));
        assert_eq!(pick(8, 6), Some(Arch::Sm86));
        // Orin (8.7) runs sm_86 cubins; Ada has its own.
        assert_eq!(pick(8, 7), Some(Arch::Sm86));
        assert_eq!(pick(8, 9), Some(Arch::Sm89));
        assert_eq!(pick(9, 0), Some(Arch::Sm90));
        // Blackwell (10.0, 12.0) and later: PTX, JIT-compiled by the driver.
        assert_eq!(pick(10, 0), Some(Arch::Compute90));
        assert_eq!(pick(12, 0), Some(Arch::Compute90));
        assert_eq!(pick(7, 5), None);
        let err = Arch::for_device("Tesla T4", 7, 5).unwrap_err();
        assert!(matches!(err, GpuError::NoDevice(_)), "{err}");
        assert!(err.to_string().contains("Tesla T4") && err.to_string().contains("7.5"));
    }

    #[test]
    fn line_info_is_optional() {
        let with = compile_options(Arch::Sm86, Path::new("/inc"), &[], &[]).unwrap();
        let without = compile_options_with(Arch::Sm86, Path::new("/inc"), &[], &[], false).unwrap();
        assert!(with.contains(&"-lineinfo".to_string()));
        assert!(!without.contains(&"-lineinfo".to_string()));
        assert_eq!(with.len(), without.len() + 1);
    }

    #[test]
    fn ptx_targets_skip_the_ptxas_report() {
        let options = compile_options(Arch::Compute90, Path::new("/inc"), &[], &[]).unwrap();
        assert_eq!(options[0], "-arch=compute_90");
        assert!(!options.iter().any(|o| o.starts_with("--ptxas-options")));
        let elf = CompiledModule {
            cubin: b"\x7fELF...".to_vec(),
            log: String::new(),
        };
        let ptx = CompiledModule {
            cubin: b".version 9.0\0".to_vec(),
            log: String::new(),
        };
        assert!(!elf.is_ptx() && ptx.is_ptx());
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
