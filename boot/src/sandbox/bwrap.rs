//! The bubblewrap command line of a run, which decides everything the app can see.
//! Pure: built from a description, so it is tested without running anything.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use fim_reserved::{BindKind, Unshare};

/// Top-level directories of the image that hold the system: read-only in the default run,
/// writable under `fim-root`. An app run as a user cannot change the image's software,
/// the same rule as on any Unix system; a package manager runs with `fim-root`.
pub const SYSTEM_DIRS: &[&str] = &[
    "bin", "boot", "etc", "lib", "lib32", "lib64", "libx32", "sbin", "usr",
];

/// A mount the sandbox gets on top of the image, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mount {
    /// The host's `src` at `dst`: read-only, read-write, or with its device nodes usable.
    /// A source that vanished since it was checked is skipped (bubblewrap's `-try`).
    Bind {
        kind: BindKind,
        src: PathBuf,
        dst: PathBuf,
    },
    /// A private, empty directory at `dst` that only the app can enter, gone with the
    /// sandbox: where the sockets of the host's runtime directory are put.
    Private { dst: PathBuf },
}

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
    /// Whether the launcher already joined such a namespace (the session's): bwrap then
    /// makes none.
    pub network_joined: bool,
    /// Namespaces unshared on request (`fim-unshare`); pid is always unshared.
    pub unshare: Unshare,
    /// The host's whole `/dev` (the `dev` permission); otherwise a minimal one of the
    /// sandbox's own (null, zero, random, tty, pts...).
    pub host_dev: bool,
    /// The host's `/dev/shm` (the `shm` permission); otherwise a private one.
    pub host_shm: bool,
    /// Top-level directories of the image made read-only (names, no slash).
    pub read_only: Vec<String>,
    /// Descriptors holding the generated `/etc/passwd` and `/etc/group`.
    pub identity_files: Option<(i32, i32)>,
    /// Files put into the private `/tmp` (a descriptor to read, the path inside).
    pub tmp_files: Vec<(i32, PathBuf)>,
    /// A descriptor holding a seccomp filter for the app (`noop_ids`).
    pub seccomp_fd: Option<i32>,
    /// A directory to create for the app's home, which the image lacks.
    pub make_home: Option<PathBuf>,
    /// Permission and `fim-bind` mounts, in order.
    pub mounts: Vec<Mount>,
    /// Working directory inside.
    pub cwd: PathBuf,
    /// Descriptor on which bubblewrap reports the sandbox's pid and exit code.
    pub status_fd: i32,
}

impl Sandbox {
    /// bubblewrap's arguments, ending with `--` and `command`.
    pub fn args(&self, command: &[OsString]) -> Vec<OsString> {
        let mut args = Args::default();
        // A private pid namespace: /proc shows only the app, and killing the sandbox's
        // first process ends every process the app started.
        args.words(["--die-with-parent", "--unshare-pid"]);
        match self.user {
            Some((uid, gid)) => args.words([
                "--unshare-user",
                "--uid",
                &uid.to_string(),
                "--gid",
                &gid.to_string(),
            ]),
            None if self.unshare.contains(Unshare::user) => args.words(["--unshare-user"]),
            None => {}
        }
        let unshared = [
            (
                (!self.network && !self.network_joined) || self.unshare.contains(Unshare::net),
                "--unshare-net",
            ),
            (self.unshare.contains(Unshare::ipc), "--unshare-ipc"),
            (self.unshare.contains(Unshare::uts), "--unshare-uts"),
            (
                self.unshare.contains(Unshare::cgroup),
                "--unshare-cgroup-try",
            ),
        ];
        for (on, flag) in unshared {
            if on {
                args.words([flag]);
            }
        }
        args.path_pair("--bind", &self.root, Path::new("/"));
        if self.host_dev {
            args.words(["--dev-bind", "/dev", "/dev"]);
        } else {
            args.words(["--dev", "/dev"]);
        }
        args.words(["--proc", "/proc", "--perms", "1777", "--tmpfs", "/tmp"]);
        for (fd, dst) in &self.tmp_files {
            args.words(["--file", &fd.to_string()]);
            args.path(dst);
        }
        if !self.host_dev {
            if self.host_shm {
                args.words(["--bind-try", "/dev/shm", "/dev/shm"]);
            } else {
                args.words(["--perms", "1777", "--tmpfs", "/dev/shm"]);
            }
        }
        // Each read-only directory becomes a mount point of its own now, while mount
        // points for what follows can still be created in it, and is made read-only last.
        for dir in &self.read_only {
            args.path_pair("--bind", &self.root.join(dir), &Path::new("/").join(dir));
        }
        if let Some((passwd, group)) = self.identity_files {
            args.words(["--ro-bind-data", &passwd.to_string(), "/etc/passwd"]);
            args.words(["--ro-bind-data", &group.to_string(), "/etc/group"]);
        }
        if let Some(home) = &self.make_home {
            args.words(["--dir"]);
            args.path(home);
        }
        for mount in &self.mounts {
            match mount {
                Mount::Bind { kind, src, dst } => {
                    let flag = match kind {
                        BindKind::Ro => "--ro-bind-try",
                        BindKind::Rw => "--bind-try",
                        BindKind::Dev => "--dev-bind-try",
                    };
                    args.path_pair(flag, src, dst);
                }
                Mount::Private { dst } => {
                    args.words(["--perms", "0700", "--tmpfs"]);
                    args.path(dst);
                }
            }
        }
        for dir in &self.read_only {
            args.words(["--remount-ro"]);
            args.path(&Path::new("/").join(dir));
        }
        if let Some(fd) = self.seccomp_fd {
            args.words(["--add-seccomp-fd", &fd.to_string()]);
        }
        args.words(["--chdir"]);
        args.path(&self.cwd);
        args.words(["--json-status-fd", &self.status_fd.to_string(), "--"]);
        args.0.extend(command.iter().cloned());
        args.0
    }
}

/// bubblewrap's argument list as it is built.
#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn words<'a>(&mut self, words: impl IntoIterator<Item = &'a str>) {
        self.0.extend(words.into_iter().map(OsString::from));
    }

    fn path(&mut self, path: &Path) {
        self.0.push(path.as_os_str().to_owned());
    }

    fn path_pair(&mut self, flag: &str, src: &Path, dst: &Path) {
        self.words([flag]);
        self.path(src);
        self.path(dst);
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
            network_joined: false,
            unshare: Unshare::empty(),
            host_dev: false,
            host_shm: false,
            read_only: vec!["usr".into()],
            identity_files: None,
            tmp_files: Vec::new(),
            seccomp_fd: None,
            make_home: None,
            mounts: Vec::new(),
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
    fn default_run_is_a_user_without_network_host_dev_or_host_shm() {
        assert_eq!(
            text(&sandbox()),
            "--die-with-parent --unshare-pid --unshare-user --uid 1000 --gid 100 --unshare-net \
             --bind /run/x/root / --dev /dev --proc /proc --perms 1777 --tmpfs /tmp \
             --perms 1777 --tmpfs /dev/shm --bind /run/x/root/usr /usr --remount-ro /usr \
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
        assert!(!t.contains("--remount-ro"), "{t}");
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
    fn a_joined_session_network_needs_no_namespace_of_bwraps_own() {
        let mut s = sandbox();
        assert!(text(&s).contains("--unshare-net"));
        s.network_joined = true;
        assert!(!text(&s).contains("--unshare-net"));
        // Asked for explicitly, it is still made.
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
    fn unsharing_the_user_namespace_keeps_roots_identity() {
        let mut s = sandbox();
        s.user = None;
        s.unshare = Unshare::user;
        let t = text(&s);
        assert!(t.contains("--unshare-user") && !t.contains("--uid"), "{t}");
    }

    #[test]
    fn dev_and_shm_permissions_use_the_hosts() {
        let mut s = sandbox();
        s.host_shm = true;
        let t = text(&s);
        assert!(
            t.contains("--dev /dev") && t.contains("--bind-try /dev/shm /dev/shm"),
            "{t}"
        );
        s.host_dev = true;
        let t = text(&s);
        assert!(
            t.contains("--dev-bind /dev /dev") && !t.contains("/dev/shm"),
            "{t}"
        );
    }

    #[test]
    fn mounts_come_after_the_system_and_before_it_is_made_read_only() {
        let mut s = sandbox();
        s.identity_files = Some((8, 9));
        s.make_home = Some("/home/u".into());
        s.mounts = vec![
            Mount::Private {
                dst: "/run/user/1".into(),
            },
            Mount::Bind {
                kind: BindKind::Rw,
                src: "/a b".into(),
                dst: "/usr/x".into(),
            },
            Mount::Bind {
                kind: BindKind::Ro,
                src: "/r".into(),
                dst: "/r".into(),
            },
            Mount::Bind {
                kind: BindKind::Dev,
                src: "/dev/dri".into(),
                dst: "/dev/dri".into(),
            },
        ];
        let args = s.args(&["prog".into()]);
        let words: Vec<&str> = args.iter().filter_map(|a| a.to_str()).collect();
        let at = |w: &[&str]| {
            words
                .windows(w.len())
                .position(|x| x == w)
                .unwrap_or_else(|| panic!("{w:?} not in {words:?}"))
        };
        let system = at(&["--bind", "/run/x/root/usr", "/usr"]);
        let passwd = at(&["--ro-bind-data", "8", "/etc/passwd"]);
        let group = at(&["--ro-bind-data", "9", "/etc/group"]);
        let home = at(&["--dir", "/home/u"]);
        let private = at(&["--perms", "0700", "--tmpfs", "/run/user/1"]);
        let rw = at(&["--bind-try", "/a b", "/usr/x"]);
        let ro = at(&["--ro-bind-try", "/r", "/r"]);
        let dev = at(&["--dev-bind-try", "/dev/dri", "/dev/dri"]);
        let read_only = at(&["--remount-ro", "/usr"]);
        let order = [system, passwd, group, home, private, rw, ro, dev, read_only];
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{words:?}");
    }

    #[test]
    fn a_seccomp_filter_is_passed_by_descriptor() {
        let mut s = sandbox();
        assert!(!text(&s).contains("seccomp"));
        s.seccomp_fd = Some(11);
        s.tmp_files = vec![(12, "/tmp/a.conf".into())];
        let t = text(&s);
        assert!(t.contains("--add-seccomp-fd 11 --chdir"), "{t}");
        assert!(t.contains("--tmpfs /tmp --file 12 /tmp/a.conf"), "{t}");
    }

    #[test]
    fn the_command_follows_the_separator_verbatim() {
        let args = sandbox().args(&["--uid".into(), "$(id)".into()]);
        let sep = args.iter().position(|a| a == "--").unwrap();
        assert_eq!(&args[sep + 1..], &["--uid", "$(id)"]);
    }
}
