//! The bubblewrap command line of a run, which decides everything the app can see.
//! Pure: built from a description, so it is tested without running anything.

use std::ffi::OsString;
use std::path::PathBuf;

use fim_reserved::Unshare;

/// Top-level directories of the image that hold the system: read-only in the default run,
/// writable under `fim-root`. An app run as a user cannot change the image's software,
/// the same rule as on any Unix system; a package manager runs with `fim-root`.
pub const SYSTEM_DIRS: &[&str] = &[
    "bin", "boot", "etc", "lib", "lib32", "lib64", "libx32", "sbin", "usr",
];

/// What the app gets.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// The writable view of the image, mounted by the session; becomes `/`.
    pub root: PathBuf,
    /// Run as this uid/gid in a user namespace of its own; `None` keeps bubblewrap's own
    /// identity, which is root of the session (`fim-root`, or when root launched it).
    pub user: Option<(u32, u32)>,
    /// The host's network; otherwise the app gets a network namespace with loopback only.
    pub network: bool,
    /// Namespaces unshared on request (`fim-unshare`); pid is always unshared.
    pub unshare: Unshare,
    /// Top-level directories of the image made read-only (names, no slash).
    pub read_only: Vec<String>,
    /// Working directory inside.
    pub cwd: PathBuf,
    /// Descriptor on which bubblewrap reports the sandbox's pid and exit code.
    pub status_fd: i32,
}

impl Sandbox {
    /// bubblewrap's arguments, ending with `--` and `command`.
    pub fn args(&self, command: &[OsString]) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        // A private pid namespace: /proc shows only the app, and killing the sandbox's
        // first process ends every process the app started.
        args.extend(["--die-with-parent", "--unshare-pid"].map(OsString::from));
        if let Some((uid, gid)) = self.user {
            args.extend(
                [
                    "--unshare-user",
                    "--uid",
                    &uid.to_string(),
                    "--gid",
                    &gid.to_string(),
                ]
                .map(OsString::from),
            );
        }
        let unshared = [
            (
                !self.network || self.unshare.contains(Unshare::net),
                "--unshare-net",
            ),
            (self.unshare.contains(Unshare::ipc), "--unshare-ipc"),
            (self.unshare.contains(Unshare::uts), "--unshare-uts"),
            (
                self.unshare.contains(Unshare::cgroup),
                "--unshare-cgroup-try",
            ),
        ];
        args.extend(
            unshared
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, flag)| OsString::from(flag)),
        );
        args.extend([
            "--bind".into(),
            self.root.clone().into_os_string(),
            "/".into(),
        ]);
        args.extend(["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"].map(OsString::from));
        // `--remount-ro` needs a mount point; a read-only bind of the directory onto
        // itself makes one.
        for dir in &self.read_only {
            args.extend([
                "--ro-bind".into(),
                self.root.join(dir).into_os_string(),
                format!("/{dir}").into(),
            ]);
        }
        args.extend([
            "--chdir".into(),
            self.cwd.clone().into_os_string(),
            "--json-status-fd".into(),
            self.status_fd.to_string().into(),
            "--".into(),
        ]);
        args.extend(command.iter().cloned());
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox() -> Sandbox {
        Sandbox {
            root: PathBuf::from("/run/x/root"),
            user: Some((1000, 100)),
            network: false,
            unshare: Unshare::empty(),
            read_only: vec!["usr".into()],
            cwd: PathBuf::from("/home/u"),
            status_fd: 7,
        }
    }

    fn text(s: &Sandbox) -> String {
        s.args(&["prog".into(), "a b".into()])
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn default_run_is_a_user_without_network() {
        assert_eq!(
            text(&sandbox()),
            "--die-with-parent --unshare-pid --unshare-user --uid 1000 --gid 100 --unshare-net \
             --bind /run/x/root / --dev /dev --proc /proc --tmpfs /tmp --ro-bind /run/x/root/usr /usr \
             --chdir /home/u --json-status-fd 7 -- prog a b"
        );
    }

    #[test]
    fn root_keeps_the_session_identity() {
        let mut s = sandbox();
        s.user = None;
        s.read_only.clear();
        let t = text(&s);
        assert!(!t.contains("--unshare-user") && !t.contains("--uid"), "{t}");
        assert!(!t.contains("--ro-bind"), "{t}");
    }

    #[test]
    fn network_permission_shares_the_host_network() {
        let mut s = sandbox();
        s.network = true;
        assert!(!text(&s).contains("--unshare-net"));
        s.unshare = Unshare::net;
        assert!(text(&s).contains("--unshare-net"));
    }

    #[test]
    fn requested_namespaces_are_unshared() {
        let mut s = sandbox();
        s.unshare = Unshare::ipc | Unshare::uts | Unshare::cgroup;
        let t = text(&s);
        for flag in ["--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"] {
            assert!(t.contains(flag), "{flag} missing from {t}");
        }
    }

    #[test]
    fn the_command_follows_the_separator_verbatim() {
        let args = sandbox().args(&["--uid".into(), "$(id)".into()]);
        let sep = args.iter().position(|a| a == "--").unwrap();
        assert_eq!(&args[sep + 1..], &["--uid", "$(id)"]);
    }
}
