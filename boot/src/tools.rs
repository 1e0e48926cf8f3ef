//! The bwrap a run uses: `FIM_BWRAP` when set, else the image's embedded static bwrap,
//! else `bwrap` from `PATH`. The embedded one runs from a sealed memfd: it is checked
//! against its digest, written to anonymous memory that nothing else can reach or change,
//! and executed through `/proc/self/fd/N`; nothing is written to a shared place.

use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::PathBuf;

use anyhow::{Context, bail};
use fim_image::Image;

use crate::debug;

/// Where the bwrap in use comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Environment,
    Embedded,
    Host,
}

/// A bwrap ready to execute; for the embedded one, holds its memfd open.
pub struct Bwrap {
    pub path: PathBuf,
    pub origin: Origin,
    _memfd: Option<File>,
}

pub fn bwrap(image: &Image) -> anyhow::Result<Bwrap> {
    if let Some(path) = std::env::var_os("FIM_BWRAP").filter(|p| !p.is_empty()) {
        return Ok(Bwrap {
            path: PathBuf::from(path),
            origin: Origin::Environment,
            _memfd: None,
        });
    }
    if let Some(bytes) = image.tool("bwrap")? {
        match sealed_memfd("bwrap", bytes) {
            Ok(file) => {
                return Ok(Bwrap {
                    path: PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd())),
                    origin: Origin::Embedded,
                    _memfd: Some(file),
                });
            }
            Err(e) => debug::log(format!(
                "cannot run the embedded bwrap from memory ({e:#}); looking in PATH"
            )),
        }
    }
    let found = crate::places::find_program("bwrap").context("bubblewrap is not available: the image embeds none and there is no bwrap in PATH; install the bubblewrap package, or set FIM_BWRAP")?;
    Ok(Bwrap {
        path: found,
        origin: Origin::Host,
        _memfd: None,
    })
}

/// A setuid-root bwrap (`FIM_BWRAP`, else `bwrap` from `PATH`), for hosts that refuse
/// user namespaces: the only way to build the sandbox there.
pub fn setuid_bwrap() -> anyhow::Result<Bwrap> {
    use std::os::unix::fs::MetadataExt;
    let (path, origin) = match std::env::var_os("FIM_BWRAP").filter(|p| !p.is_empty()) {
        Some(path) => (PathBuf::from(path), Origin::Environment),
        None => (
            crate::places::find_program("bwrap").unwrap_or_else(|| PathBuf::from("bwrap")),
            Origin::Host,
        ),
    };
    let setuid = std::fs::metadata(&path).is_ok_and(|m| m.uid() == 0 && m.mode() & 0o4000 != 0);
    if !setuid {
        bail!(
            "user namespaces are refused here, so the sandbox needs a setuid-root bwrap, and {} is not one: allow unprivileged user namespaces, or install a setuid bwrap and point FIM_BWRAP at it",
            path.display()
        );
    }
    Ok(Bwrap {
        path,
        origin,
        _memfd: None,
    })
}

/// An executable, sealed, close-on-exec memfd holding `bytes`.
fn sealed_memfd(name: &str, bytes: &[u8]) -> anyhow::Result<File> {
    let cname = CString::new(name)?;
    // MFD_EXEC (Linux 6.3) asks for an executable memfd where vm.memfd_noexec would
    // otherwise refuse one; older kernels reject the flag, so retry without it.
    const MFD_EXEC: libc::c_uint = 0x0010;
    let base = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    let mut fd = -1;
    for flags in [base | MFD_EXEC, base] {
        // SAFETY: a valid C string and flags; the result is checked.
        fd = unsafe { libc::memfd_create(cname.as_ptr(), flags) };
        if fd >= 0 {
            break;
        }
    }
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("memfd_create");
    }
    // SAFETY: a fresh descriptor owned by nothing else.
    let mut file = unsafe { File::from_raw_fd(fd) };
    file.write_all(bytes).context("writing the memfd")?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl on a descriptor we own.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(std::io::Error::last_os_error()).context("sealing the memfd");
    }
    // A memfd on a noexec mount or under vm.memfd_noexec=2 cannot be executed: find out
    // now, while falling back is still possible.
    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
    // SAFETY: access(2) with a valid C string.
    let executable = unsafe { libc::access(CString::new(path)?.as_ptr(), libc::X_OK) } == 0;
    if !executable {
        bail!("the memfd is not executable here");
    }
    Ok(file)
}

/// `fim-version deps`: the embedded tools, with their versions.
pub fn describe(image: &Image) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    for tool in image.tool_entries() {
        let version = match (tool.name.as_str(), image.tool(&tool.name)?) {
            ("bwrap", Some(bytes)) => {
                let memfd = sealed_memfd("bwrap", bytes)?;
                let out =
                    std::process::Command::new(format!("/proc/self/fd/{}", memfd.as_raw_fd()))
                        .arg("--version")
                        .output()
                        .context("running the embedded bwrap")?;
                String::from_utf8_lossy(&out.stdout).trim().to_string()
            }
            _ => tool.name.clone(),
        };
        lines.push(format!(
            "{}: {version} (embedded, {} bytes, blake3 {})",
            tool.name,
            tool.size,
            fim_layers::hex(&tool.digest)
        ));
    }
    Ok(lines)
}
