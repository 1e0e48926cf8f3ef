//! Set-id and ownership calls made harmless for `fim-root` in a user namespace that maps
//! one id. There the kernel refuses `setgroups`, `setuid(42)` or `chown(f, 105, 107)`:
//! only uid and gid 0 exist. Package managers make such calls on purpose (apt drops to
//! `_apt` for downloads, dpkg gives files to `messagebus`, useradd chowns a home) and stop
//! when they fail. As Charliecloud's `ch-image --force=seccomp` does, a seccomp filter
//! handed to bubblewrap makes them succeed without doing anything: every file stays the
//! user's, and nothing can be gained, since every id inside is the user already.
//! Device nodes cannot be made in a user namespace either; `mknod` of one is skipped too.
//!
//! apt alone checks that its switch to `_apt` happened (`getgid()` after `setresgid`), and
//! stops with "Could not switch group". Its download sandbox cannot separate anything when
//! one id is mapped, so in this mode apt is told not to use one: `APT_CONFIG` names a file
//! in the sandbox's private `/tmp` that sets `APT::Sandbox::User "root"` (after including
//! the image's own `/etc/apt/apt.conf` if it has one; `-o` still overrides it).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};

use anyhow::Context;
use nix::sys::memfd::{MFdFlags, memfd_create};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The calls that succeed without effect.
const NO_OPS: &[libc::c_long] = &[
    libc::SYS_setuid,
    libc::SYS_setgid,
    libc::SYS_setgroups,
    libc::SYS_setreuid,
    libc::SYS_setregid,
    libc::SYS_setresuid,
    libc::SYS_setresgid,
    libc::SYS_setfsuid,
    libc::SYS_setfsgid,
    libc::SYS_chown,
    libc::SYS_fchown,
    libc::SYS_lchown,
    libc::SYS_fchownat,
];

/// Where apt's settings for this mode are, in the sandbox's private `/tmp`.
pub const APT_CONFIG: &str = "/tmp/.fim-apt.conf";

/// apt's main configuration file in this mode (apt reads it after `apt.conf.d/`).
pub fn apt_config(image_has_main: bool) -> String {
    let include = if image_has_main {
        "#include \"/etc/apt/apt.conf\";\n"
    } else {
        ""
    };
    format!(
        "{include}// fim-root with one id mapped: apt cannot switch to _apt here (fim-help fim-root)\n\
         APT::Sandbox::User \"root\";\n"
    )
}

/// Test-only switch: with `1`, the kernel is taken to have no seccomp filters, as some
/// kernels are built, so the refusal can be tested anywhere.
pub const REFUSE_SECCOMP: &str = "FIM_TEST_NO_SECCOMP";

/// Whether the kernel takes seccomp filters whose action is an errno (this filter's).
pub fn supported() -> bool {
    if std::env::var_os(REFUSE_SECCOMP).is_some_and(|v| v == "1") {
        return false;
    }
    let action: u32 = libc::SECCOMP_RET_ERRNO;
    // SAFETY: SECCOMP_GET_ACTION_AVAIL reads one u32 through the pointer, which is valid.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_GET_ACTION_AVAIL,
            0,
            &action as *const u32,
        )
    };
    rc == 0
}

/// Why `fim-root` cannot run for a normal user without subordinate ids on a kernel
/// without seccomp filters, and what to do.
pub fn refusal(user: &str) -> String {
    format!(
        "fim-root: only your own id exists in the image's user namespace and this kernel has no seccomp filters to make the other ids' calls harmless; give {user} subordinate ids (as root: usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {user}; apt-get install uidmap), or use a kernel built with CONFIG_SECCOMP_FILTER"
    )
}

/// The filter as bubblewrap reads it (`--add-seccomp-fd`): `struct sock_filter`s in a
/// memfd, positioned at the start.
pub fn filter_file() -> anyhow::Result<File> {
    let program = program()?;
    let mut bytes = Vec::with_capacity(program.len() * 8);
    for insn in &program {
        bytes.extend_from_slice(&insn.code.to_ne_bytes());
        bytes.push(insn.jt);
        bytes.push(insn.jf);
        bytes.extend_from_slice(&insn.k.to_ne_bytes());
    }
    let fd =
        memfd_create(c"fim-seccomp", MFdFlags::MFD_CLOEXEC).context("cannot create a memfd")?;
    let mut file = File::from(fd);
    file.write_all(&bytes)
        .and_then(|()| file.seek(SeekFrom::Start(0)).map(drop))
        .context("cannot write the seccomp filter to a memfd")?;
    Ok(file)
}

/// The filter, compiled, for a process to install on itself (`fim-instance exec` into an
/// instance that runs under it).
pub struct Filter(BpfProgram);

impl Filter {
    pub fn new() -> anyhow::Result<Filter> {
        Ok(Filter(program()?))
    }

    /// Installs the filter on the calling thread, which must have set no-new-privileges;
    /// `false` with errno set when the kernel refuses. Async-signal-safe: one system call
    /// on memory prepared before.
    pub fn install(&self) -> bool {
        let fprog = libc::sock_fprog {
            len: self.0.len() as libc::c_ushort,
            filter: self.0.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: `fprog` points at the program's instructions, which outlive the call;
        // seccompiler's `sock_filter` has the kernel's layout.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &fprog as *const libc::sock_fprog,
            )
        };
        rc == 0
    }
}

/// The BPF program: the calls above return 0; everything else runs as usual.
fn program() -> anyhow::Result<BpfProgram> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = NO_OPS.iter().map(|&n| (n, vec![])).collect();
    // mknod(path, mode, dev) and mknodat(dirfd, path, mode, dev) of a character or block
    // device; fifos and sockets are made as usual.
    for (call, mode_arg) in [(libc::SYS_mknod, 1), (libc::SYS_mknodat, 2)] {
        let device = |kind: u32| -> anyhow::Result<SeccompRule> {
            let condition = SeccompCondition::new(
                mode_arg,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(u64::from(libc::S_IFMT)),
                u64::from(kind),
            )?;
            Ok(SeccompRule::new(vec![condition])?)
        };
        rules.insert(call, vec![device(libc::S_IFCHR)?, device(libc::S_IFBLK)?]);
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(0),
        TargetArch::x86_64,
    )
    .context("cannot build the seccomp filter")?;
    filter
        .try_into()
        .context("cannot compile the seccomp filter")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_compiles_to_whole_instructions() {
        let file = filter_file().expect("filter");
        let len = file.metadata().expect("metadata").len();
        assert!(len > 0 && len.is_multiple_of(8), "{len}");
    }
}
