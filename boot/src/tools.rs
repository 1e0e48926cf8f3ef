//! The programs a run needs beside the launcher: bwrap for the sandbox, fuse-overlayfs
//! and unionfs for the FUSE overlay backends. For each, the variable naming a path
//! (`FIM_BWRAP`, `FIM_FUSE_OVERLAYFS`, `FIM_UNIONFS`) beats the copy embedded in the image,
//! which beats the host's `PATH`. An embedded one runs from a sealed memfd: decompressed
//! and checked against its digest (`fim_image`), written to anonymous memory that nothing
//! else can reach or change, and executed through `/proc/self/fd/N`; nothing is written
//! to a shared place. A session daemon makes the memfd of bwrap once and holds it; each
//! launcher of the session opens that one (`/proc/PID/fd/N` of the daemon, same user)
//! instead of decompressing and hashing its own copy on every launch.

use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::PathBuf;

use anyhow::{Context, bail};
use fim_image::{Image, ToolEntry};

use crate::debug;

/// A program the launcher may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Bwrap,
    FuseOverlayfs,
    Unionfs,
}

impl Tool {
    pub const ALL: [Tool; 3] = [Tool::Bwrap, Tool::FuseOverlayfs, Tool::Unionfs];

    /// Its name, in the image's tool table and in `PATH`.
    pub fn name(self) -> &'static str {
        match self {
            Tool::Bwrap => "bwrap",
            Tool::FuseOverlayfs => "fuse-overlayfs",
            Tool::Unionfs => "unionfs",
        }
    }

    /// The variable that names a path to use instead.
    pub fn variable(self) -> &'static str {
        match self {
            Tool::Bwrap => "FIM_BWRAP",
            Tool::FuseOverlayfs => "FIM_FUSE_OVERLAYFS",
            Tool::Unionfs => "FIM_UNIONFS",
        }
    }

    /// The Debian package that installs it on a host.
    pub fn package(self) -> &'static str {
        match self {
            Tool::Bwrap => "bubblewrap",
            Tool::FuseOverlayfs => "fuse-overlayfs",
            Tool::Unionfs => "unionfs-fuse",
        }
    }

    /// Its entry in the image's tool table, if the image embeds it.
    fn entry(self, image: &Image) -> Option<&ToolEntry> {
        image.tool_entries().iter().find(|t| t.name == self.name())
    }

    /// Whether its variable names a program to use.
    fn named_by_variable(self) -> bool {
        std::env::var_os(self.variable()).is_some_and(|p| !p.is_empty())
    }

    fn named(name: &str) -> Option<Tool> {
        Tool::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// Where the program in use comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Environment,
    Embedded,
    Host,
}

/// A program ready to execute; for an embedded one, holds its memfd open.
pub struct Program {
    pub path: PathBuf,
    pub origin: Origin,
    _memfd: Option<File>,
}

/// `tool` by the rule above; `None` when neither the variable, the image nor `PATH` has it.
pub fn find(image: &Image, tool: Tool) -> anyhow::Result<Option<Program>> {
    if let Some(path) = std::env::var_os(tool.variable()).filter(|p| !p.is_empty()) {
        return Ok(Some(Program {
            path: PathBuf::from(path),
            origin: Origin::Environment,
            _memfd: None,
        }));
    }
    if let Some(bytes) = image.tool(tool.name())? {
        match sealed_memfd(tool.name(), &bytes) {
            Ok(file) => {
                return Ok(Some(Program {
                    path: PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd())),
                    origin: Origin::Embedded,
                    _memfd: Some(file),
                }));
            }
            Err(e) => debug::log(format!(
                "cannot run the embedded {} from memory ({e:#}); looking in PATH",
                tool.name()
            )),
        }
    }
    Ok(
        crate::places::find_program(tool.name()).map(|path| Program {
            path,
            origin: Origin::Host,
            _memfd: None,
        }),
    )
}

/// The image's bwrap in a sealed memfd, for a session daemon to hold for its launchers,
/// with the digest the image's tool table gives it; `None` where `FIM_BWRAP` names another
/// program, the image embeds none, or the memfd cannot be made (each launcher then finds
/// its own, as `find` says).
pub fn held_bwrap(image: &Image) -> Option<(File, [u8; 32])> {
    if Tool::Bwrap.named_by_variable() {
        return None;
    }
    let entry = Tool::Bwrap.entry(image)?;
    let made = image
        .tool(Tool::Bwrap.name())
        .map_err(anyhow::Error::from)
        .and_then(|bytes| match bytes {
            Some(bytes) => sealed_memfd(Tool::Bwrap.name(), &bytes).map(Some),
            None => Ok(None),
        });
    match made {
        Ok(file) => file.map(|file| (file, entry.digest)),
        Err(e) => {
            debug::log(format!("daemon: no bwrap held for the launchers: {e:#}"));
            None
        }
    }
}

/// How a greeting names a program's BLAKE3: its first 8 bytes, in hex.
pub fn short_digest(digest: &[u8; 32]) -> String {
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Where a session daemon holds the image's bwrap: its pid, the descriptor there, and
/// the first 8 bytes of the program's BLAKE3 in hex.
pub struct Held<'a> {
    pub pid: i32,
    pub fd: i32,
    pub digest: &'a str,
}

/// The bwrap the session's daemon holds, if `FIM_BWRAP` names no other and it is this
/// image's; `None` sends the launcher to `bwrap`. Opened through the host's `/proc`, so
/// before the launcher joins the session's namespaces.
pub fn open_held_bwrap(image: &Image, held: Held<'_>) -> Option<Program> {
    if Tool::Bwrap.named_by_variable() {
        return None;
    }
    match open_held(image, &held) {
        Ok(file) => {
            debug::log("bwrap: the one the session's daemon holds");
            Some(Program {
                path: PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd())),
                origin: Origin::Embedded,
                _memfd: Some(file),
            })
        }
        Err(e) => {
            debug::log(format!(
                "not using the session's bwrap ({e:#}); making this launcher's own"
            ));
            None
        }
    }
}

/// The bwrap of a run, by the rule at the top.
pub fn bwrap(image: &Image) -> anyhow::Result<Program> {
    find(image, Tool::Bwrap)?.context("bubblewrap is not available: the image embeds none and there is no bwrap in PATH; install the bubblewrap package, or set FIM_BWRAP")
}

/// A setuid-root bwrap (`FIM_BWRAP`, else `bwrap` from `PATH`), for hosts that refuse
/// user namespaces: the only way to build the sandbox there.
pub fn setuid_bwrap() -> anyhow::Result<Program> {
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
    Ok(Program {
        path,
        origin,
        _memfd: None,
    })
}

/// Opens the bwrap memfd a session daemon holds, after checking that it is this image's
/// program (by digest) and that it is sealed against every change.
fn open_held(image: &Image, held: &Held<'_>) -> anyhow::Result<File> {
    let ours = Tool::Bwrap
        .entry(image)
        .context("this image embeds no bwrap")?;
    if short_digest(&ours.digest) != held.digest {
        bail!("it is another build of bwrap than this image's");
    }
    let path = format!("/proc/{}/fd/{}", held.pid, held.fd);
    let file = File::open(&path).with_context(|| format!("cannot open {path}"))?;
    // SAFETY: fcntl on a descriptor we own.
    let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 || seals & SEALS != SEALS {
        bail!("{path} is not a sealed memfd");
    }
    executable(&file)?;
    Ok(file)
}

/// Seals that make a memfd's contents and size final.
const SEALS: libc::c_int =
    libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;

/// Fails unless `file` can be executed through `/proc/self/fd/N`: a memfd on a noexec
/// mount or under vm.memfd_noexec=2 cannot be.
fn executable(file: &File) -> anyhow::Result<()> {
    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
    // SAFETY: access(2) with a valid C string.
    if unsafe { libc::access(CString::new(path)?.as_ptr(), libc::X_OK) } != 0 {
        bail!("the memfd is not executable here");
    }
    Ok(())
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
    // SAFETY: fcntl on a descriptor we own.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, SEALS) } != 0 {
        return Err(std::io::Error::last_os_error()).context("sealing the memfd");
    }
    // Found out now, while falling back is still possible.
    executable(&file)?;
    Ok(file)
}

/// `fim-version deps`: the three programs, each with its version and where it comes from.
pub fn describe(image: &Image) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    for tool in Tool::ALL {
        let Some(program) = find(image, tool)? else {
            lines.push(format!(
                "{}: not available (none embedded, none in PATH; package {})",
                tool.name(),
                tool.package()
            ));
            continue;
        };
        let version = std::process::Command::new(&program.path)
            .arg("--version")
            .output()
            .ok()
            .map(|out| version_of(&out.stdout, &out.stderr))
            .unwrap_or_else(|| "version unknown".into());
        let origin = match program.origin {
            Origin::Embedded => match tool.entry(image) {
                Some(t) => format!(
                    "embedded, {} bytes stored, blake3 {}",
                    t.size,
                    fim_layers::hex(&t.digest)
                ),
                None => "embedded".into(),
            },
            Origin::Environment => format!("{} from {}", program.path.display(), tool.variable()),
            Origin::Host => format!("{} from PATH", program.path.display()),
        };
        lines.push(format!("{}: {version} ({origin})", tool.name()));
    }
    // Tools an image may carry that this launcher does not know stay listed.
    for entry in image.tool_entries() {
        if Tool::named(&entry.name).is_none() {
            lines.push(format!(
                "{}: unknown to this launcher (embedded)",
                entry.name
            ));
        }
    }
    Ok(lines)
}

/// The version line a tool prints for `--version`: its first line, on either stream.
fn version_of(stdout: &[u8], stderr: &[u8]) -> String {
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(stdout),
        String::from_utf8_lossy(stderr)
    );
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| "version unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_tool_has_its_own_variable_and_is_found_by_its_name() {
        for tool in Tool::ALL {
            assert_eq!(Tool::named(tool.name()), Some(tool));
            assert!(tool.variable().starts_with("FIM_"));
        }
        assert_eq!(Tool::named("squashfuse"), None);
    }

    #[test]
    fn the_version_line_is_found_in_either_stream() {
        assert_eq!(version_of(b"bubblewrap 0.12.0\n", b""), "bubblewrap 0.12.0");
        assert_eq!(
            version_of(
                b"",
                b"fuse-overlayfs: version 1.14\nFUSE library version 3.17.2\n"
            ),
            "fuse-overlayfs: version 1.14"
        );
        assert_eq!(
            version_of(b"unionfs-fuse version: 1.0\n", b""),
            "unionfs-fuse version: 1.0"
        );
        assert_eq!(version_of(b"", b""), "version unknown");
    }

    #[test]
    fn the_short_digest_is_the_first_eight_bytes_in_hex() {
        let mut digest = [0u8; 32];
        digest[0] = 0x73;
        digest[7] = 0xe3;
        digest[8] = 0xff;
        assert_eq!(short_digest(&digest), "73000000000000e3");
    }

    #[test]
    fn a_memfd_made_here_is_sealed_and_executable() {
        let file = match sealed_memfd("probe", b"#!/bin/sh\n") {
            Ok(file) => file,
            Err(e) => {
                eprintln!("skipped: no executable memfd on this machine ({e:#})");
                return;
            }
        };
        // SAFETY: fcntl on a descriptor we own.
        let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
        assert_eq!(seals & SEALS, SEALS);
        let path = format!("/proc/self/fd/{}", file.as_raw_fd());
        let written = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|mut f| f.write_all(b"x"));
        assert!(written.is_err(), "a sealed memfd took a write");
    }
}
