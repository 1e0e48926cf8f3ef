//! Running images as a user would: as whoever runs the tests, or as an unprivileged user
//! the tests create. The unprivileged user needs read-write access to `/dev/fuse` (0600 on
//! many machines): it is granted with an ACL while such tests run and removed after.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use crate::fsutil::{is_root, skip, which};
use crate::image::build_with;
use crate::run::{Output, run};

/// One test per identity for each check `fn check(who: Who)`: `check::as_invoker` and
/// `check::as_unprivileged_user`.
#[macro_export]
macro_rules! for_both {
    ($($check:ident),* $(,)?) => {$(
        mod $check {
            #[test]
            fn as_invoker() {
                super::$check($crate::sandbox::Who::Invoker)
            }
            #[test]
            fn as_unprivileged_user() {
                super::$check($crate::sandbox::Who::User)
            }
        }
    )*};
}

/// Name of the unprivileged user the tests create.
pub const TEST_USER: &str = "fim-e2e";

/// Who runs an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    /// Whoever runs the tests (root in CI).
    Invoker,
    /// The unprivileged [`TEST_USER`], who has no subordinate ids.
    User,
    /// The unprivileged [`SUBIDS_USER`], whom `/etc/subuid` and `/etc/subgid` give a range
    /// (and `newuidmap`/`newgidmap` must be installed).
    UserWithSubids,
}

impl Who {
    /// The created user's name; `None` for the invoker.
    pub fn user_name(self) -> Option<&'static str> {
        match self {
            Who::Invoker => None,
            Who::User => Some(TEST_USER),
            Who::UserWithSubids => Some(SUBIDS_USER),
        }
    }
}

/// Name of the unprivileged user with subordinate ids.
pub const SUBIDS_USER: &str = "fim-e2e-subids";

/// The range [`SUBIDS_USER`] gets in `/etc/subuid` and `/etc/subgid`: 65,536 ids from here.
pub const SUBIDS_START: u32 = 300_000;

/// uid and gid of a user, from `id`.
fn ids(user: &str) -> Option<(u32, u32)> {
    let id = |flag: &str| {
        let out = Command::new("id").arg(flag).arg(user).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

/// Creates [`TEST_USER`] once; `None` (with the reason) when that is impossible here.
fn test_user() -> Result<(u32, u32), String> {
    static USER: OnceLock<Result<(u32, u32), String>> = OnceLock::new();
    USER.get_or_init(|| create_user(TEST_USER)).clone()
}

/// Creates [`SUBIDS_USER`] once, with its range of subordinate ids.
fn subids_user() -> Result<(u32, u32), String> {
    static USER: OnceLock<Result<(u32, u32), String>> = OnceLock::new();
    USER.get_or_init(|| {
        if which("newuidmap").is_none() || which("newgidmap").is_none() {
            return Err("newuidmap and newgidmap are not installed (package uidmap)".into());
        }
        let ids = create_user(SUBIDS_USER)?;
        let has_range = |file: &str| {
            std::fs::read_to_string(file)
                .unwrap_or_default()
                .lines()
                .any(|l| l.starts_with(&format!("{SUBIDS_USER}:")))
        };
        if !has_range("/etc/subuid") || !has_range("/etc/subgid") {
            let range = format!("{SUBIDS_START}-{}", SUBIDS_START + 65_535);
            setup_step(
                Command::new("usermod").args([
                    "--add-subuids",
                    &range,
                    "--add-subgids",
                    &range,
                    SUBIDS_USER,
                ]),
                "usermod",
                "usermod --add-subuids",
            )?;
        }
        Ok(ids)
    })
    .clone()
}

/// Name of a second unprivileged user: a hostile neighbour of [`TEST_USER`] and of root.
pub const OTHER_USER: &str = "fim-e2e-other";

/// uid and gid of [`OTHER_USER`], created once; `None` (after saying why) when that is
/// impossible here.
pub fn other_user() -> Option<(u32, u32)> {
    static USER: OnceLock<Result<(u32, u32), String>> = OnceLock::new();
    match USER.get_or_init(|| create_user(OTHER_USER)) {
        Ok(ids) => Some(*ids),
        Err(why) => {
            skip(&format!("a second user: {why}"));
            None
        }
    }
}

/// Creates the system user `name` unless it exists.
fn create_user(name: &str) -> Result<(u32, u32), String> {
    if !is_root() {
        return Err("creating a test user needs root".into());
    }
    if let Some(ids) = ids(name) {
        return Ok(ids);
    }
    setup_step(
        Command::new("useradd").args(["--system", "--no-create-home", "--shell", "/bin/sh", name]),
        "useradd",
        "useradd",
    )?;
    ids(name).ok_or_else(|| "useradd made no user".into())
}

/// Runs a step of the tests' setup; its failure is `cannot run PROGRAM: ...` or `WHAT
/// failed: STDERR`, for a skip to print.
fn setup_step(cmd: &mut Command, program: &str, what: &str) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// While alive, a created user may open `/dev/fuse`; the last one dropped for that user
/// removes its ACL entry.
pub struct FuseAccess(&'static str);

static FUSE_HOLDERS: Mutex<Vec<(&'static str, usize)>> = Mutex::new(Vec::new());

impl FuseAccess {
    fn grant(user: &'static str) -> Result<FuseAccess, String> {
        let mut holders = FUSE_HOLDERS.lock().unwrap_or_else(|e| e.into_inner());
        let held = holders.iter().position(|(u, _)| *u == user);
        match held {
            Some(i) => holders[i].1 += 1,
            None => {
                setup_step(
                    Command::new("setfacl").args(["-m", &format!("u:{user}:rw"), "/dev/fuse"]),
                    "setfacl (package acl)",
                    "setfacl on /dev/fuse",
                )?;
                holders.push((user, 1));
            }
        }
        Ok(FuseAccess(user))
    }
}

impl Drop for FuseAccess {
    fn drop(&mut self) {
        let mut holders = FUSE_HOLDERS.lock().unwrap_or_else(|e| e.into_inner());
        let Some(i) = holders.iter().position(|(u, _)| *u == self.0) else {
            return;
        };
        holders[i].1 -= 1;
        if holders[i].1 == 0 {
            holders.remove(i);
            let _ = Command::new("setfacl")
                .args(["-x", &format!("u:{}", self.0), "/dev/fuse"])
                .status();
        }
    }
}

/// An image copied into a directory of its own (so it has its own data directory and
/// session), run by one identity.
pub struct App {
    pub who: Who,
    /// uid and gid the image runs as.
    pub uid: u32,
    pub gid: u32,
    pub dir: tempfile::TempDir,
    pub image: PathBuf,
    /// `FIM_OVERLAY` for every run, when set.
    pub overlay: Option<&'static str>,
    /// More environment for every run.
    env: Vec<(&'static str, std::ffi::OsString)>,
    _fuse: Option<FuseAccess>,
}

/// The directory of `tools/`.
pub fn tools_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tools")
}

/// Why images cannot run here at all, if they cannot.
pub fn cannot_run_images() -> Option<String> {
    if which("bwrap").is_none() {
        return Some("bubblewrap is not installed".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse does not exist".into());
    }
    if !Path::new("/bin/busybox").exists() {
        return Some("busybox-static is not installed".into());
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        return Some(format!("/dev/fuse cannot be opened by this user ({e})"));
    }
    None
}

/// A root filesystem from `tools/make-test-rootfs` with `/data/keep.txt` and
/// `/data/gone.txt` (a directory outside the system directories, writable by everyone),
/// built into an image once per test process; returns its path.
pub fn base_image() -> PathBuf {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE
        .get_or_init(|| build_base("base.flatimage", &["--level", "3"]))
        .clone()
}

/// [`base_image`] without embedded tools: it runs the host's bwrap, fuse-overlayfs and
/// unionfs.
pub fn base_image_without_tools() -> PathBuf {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            build_base(
                "base-no-tools.flatimage",
                &["--level", "3", "--no-embed-tools"],
            )
        })
        .clone()
}

/// What an image adds to the base root filesystem: files (path, content), host programs
/// (found on `PATH`, or absolute) with their libraries, host files and directories copied
/// to the same paths, and directories opened to everyone; missing host things are left
/// out (tests using them say so).
#[derive(Default)]
pub struct Extra<'a> {
    pub files: &'a [(&'a str, &'a str)],
    pub programs: &'a [&'a str],
    pub host_paths: &'a [&'a str],
    /// Directories made writable by everyone (mode 1777).
    pub open_dirs: &'a [&'a str],
    /// Extended attributes set before packing: path, name, value.
    pub xattrs: &'a [(&'a str, &'a str, &'a str)],
}

/// The base root filesystem plus `extra`, built (compression level 3) as `name` once per
/// call; the caller keeps it for the test process.
pub fn base_image_with(name: &str, extra: &Extra) -> PathBuf {
    build_base_with(name, &["--level", "3"], extra)
}

fn build_base(name: &str, options: &[&str]) -> PathBuf {
    build_base_with(name, options, &Extra::default())
}

fn build_base_with(name: &str, options: &[&str], extra: &Extra) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR
        .get_or_init(|| {
            let dir = base_dir();
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create base image dir");
            // SAFETY: registers a plain function to run at exit.
            unsafe { libc::atexit(remove_base_dir) };
            dir
        })
        .clone();
    let rootfs = dir.join(format!("rootfs-{name}"));
    let out = run(Command::new(tools_dir().join("make-test-rootfs")).arg(&rootfs));
    out.assert_ok();
    std::fs::create_dir(rootfs.join("data")).expect("mkdir data");
    crate::fsutil::chmod(&rootfs.join("data"), 0o1777);
    std::fs::write(rootfs.join("data/keep.txt"), "keep\n").expect("write keep");
    std::fs::write(rootfs.join("data/gone.txt"), "gone\n").expect("write gone");
    // For the overlay backends: a directory to replace, one to rename, a file to chmod.
    for (path, text) in [
        ("data/replaced/old.txt", "old\n"),
        ("data/replaced/sub/deep.txt", "deep\n"),
        ("data/moved/m.txt", "m\n"),
        ("data/mode.txt", "mode\n"),
    ] {
        let path = rootfs.join(path);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }
    add_host_programs(&rootfs, &["setfattr", "getfattr"]);
    for (path, text) in extra.files {
        crate::fsutil::put(&rootfs, path, text.as_bytes());
    }
    for dir in extra.open_dirs {
        crate::fsutil::chmod(&rootfs.join(dir), 0o1777);
    }
    for (path, name, value) in extra.xattrs {
        xattr::set(rootfs.join(path), name, value.as_bytes()).expect("set an xattr to pack");
    }
    add_host_programs(&rootfs, extra.programs);
    for path in extra.host_paths {
        let inside = rootfs.join(path.trim_start_matches('/'));
        if Path::new(path).exists() {
            std::fs::create_dir_all(inside.parent().expect("parent")).expect("mkdir");
            run(Command::new("cp").arg("-a").arg(path).arg(&inside)).assert_ok();
        }
    }
    let image = dir.join(name);
    build_with(&[&rootfs], &image, options);
    std::fs::remove_dir_all(&rootfs).expect("remove rootfs");
    image
}

/// Copies host programs, when installed, with the shared libraries they load, to the
/// same paths in `rootfs`; a missing one is left out (tests using it say so).
fn add_host_programs(rootfs: &Path, programs: &[&str]) {
    for program in programs {
        let Some(path) = which(program) else { continue };
        let libraries = Command::new("ldd").arg(&path).output();
        let Ok(libraries) = libraries else { continue };
        let mut files = vec![path.clone()];
        // "libattr.so.1 => /lib/x86_64-linux-gnu/libattr.so.1 (0x...)" and "/lib64/ld-linux-x86-64.so.2 (0x...)"
        for line in String::from_utf8_lossy(&libraries.stdout).lines() {
            let file = line
                .split("=>")
                .last()
                .unwrap_or("")
                .split_whitespace()
                .next();
            if let Some(file) = file.filter(|f| f.starts_with('/')) {
                files.push(PathBuf::from(file));
            }
        }
        for file in files {
            let inside = rootfs.join(file.strip_prefix("/").expect("absolute"));
            if inside.symlink_metadata().is_ok() {
                continue;
            }
            std::fs::create_dir_all(inside.parent().expect("parent")).expect("mkdir");
            std::fs::copy(&file, &inside).expect("copy a host program");
        }
    }
}

/// Where [`base_image`] builds, one directory per test process.
fn base_dir() -> PathBuf {
    std::env::temp_dir().join(format!("fim-tests.base.{}", std::process::id()))
}

extern "C" fn remove_base_dir() {
    let _ = std::fs::remove_dir_all(base_dir());
}

/// A fresh copy of the base image run by `who` with `FIM_OVERLAY=backend`; `None` (after
/// saying why) when the backend's program is neither built in `dist/` (so embedded) nor
/// installed.
pub fn app_with_backend(test: &str, who: Who, backend: &'static str) -> Option<App> {
    let program = match backend {
        "overlayfs" => Some("fuse-overlayfs"),
        "unionfs" => Some("unionfs"),
        _ => None,
    };
    if let Some(program) = program
        && !crate::dist_dir().join(program).is_file()
        && which(program).is_none()
    {
        skip(&format!(
            "{test} with {backend}: {program} is neither built in dist/ nor installed"
        ));
        return None;
    }
    Some(App::new(test, who)?.with_overlay(backend))
}

impl App {
    /// A fresh copy of the base image run by `who`; `None` (after printing why) when
    /// that cannot be done here.
    pub fn new(test: &str, who: Who) -> Option<App> {
        Self::from_image(test, who, &base_image())
    }

    /// A fresh copy of `image` run by `who`.
    pub fn from_image(test: &str, who: Who, image: &Path) -> Option<App> {
        if let Some(why) = cannot_run_images() {
            skip(&format!("{test}: {why}"));
            return None;
        }
        let (uid, gid, fuse) = match who {
            Who::Invoker => {
                // SAFETY: getuid/getgid have no preconditions.
                let ids = unsafe { (libc::getuid(), libc::getgid()) };
                (ids.0, ids.1, None)
            }
            Who::User | Who::UserWithSubids => {
                let name = who.user_name().unwrap_or(TEST_USER);
                let created = if who == Who::User {
                    test_user()
                } else {
                    subids_user()
                };
                let fuse = created.and_then(|ids| Ok((ids, FuseAccess::grant(name)?)));
                match fuse {
                    Ok(((uid, gid), access)) => (uid, gid, Some(access)),
                    Err(why) => {
                        skip(&format!("{test} as {name}: {why}"));
                        return None;
                    }
                }
            }
        };
        let dir = crate::fsutil::tempdir();
        let copy = dir.path().join("app.flatimage");
        std::fs::copy(image, &copy).expect("copy image");
        // A TMPDIR of its own: the app's runtime directory is not shared with other tests.
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).expect("mkdir tmp");
        for path in [dir.path(), &copy, &tmp] {
            chown(path, uid, gid);
        }
        Some(App {
            who,
            uid,
            gid,
            image: copy,
            dir,
            overlay: None,
            env: Vec::new(),
            _fuse: fuse,
        })
    }

    /// Runs every command with `FIM_OVERLAY=overlay`.
    pub fn with_overlay(mut self, overlay: &'static str) -> App {
        self.overlay = Some(overlay);
        self
    }

    /// Runs every command with `key=value` in its environment.
    pub fn with_env(mut self, key: &'static str, value: impl AsRef<OsStr>) -> App {
        self.env.push((key, value.as_ref().to_os_string()));
        self
    }

    /// The data directory next to the image.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join(".app.flatimage.data")
    }

    /// The `TMPDIR` the app runs with.
    pub fn tmp_dir(&self) -> PathBuf {
        self.dir.path().join("tmp")
    }

    /// The per-user runtime directory the launcher uses, in [`App::tmp_dir`].
    pub fn runtime_dir(&self) -> PathBuf {
        self.tmp_dir().join(format!("fim-{}", self.uid))
    }

    /// `IMAGE ARGS...` as a command, run as the app's identity from the image's directory.
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.program(&self.image, args)
    }

    /// `PROGRAM ARGS...` run as the app's identity from the image's directory.
    pub fn program<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(self.dir.path())
            .env("TMPDIR", self.tmp_dir());
        if let Some(overlay) = self.overlay {
            cmd.env("FIM_OVERLAY", overlay);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(name) = self.who.user_name() {
            cmd.uid(self.uid)
                .gid(self.gid)
                .env("HOME", "/")
                .env("USER", name);
        }
        cmd
    }

    /// Runs `IMAGE ARGS...` to completion.
    pub fn run<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run(&mut self.command(args))
    }

    /// Runs `IMAGE fim-exec sh -c SCRIPT`.
    pub fn sh(&self, script: &str) -> Output {
        self.run(["fim-exec", "sh", "-c", script])
    }

    /// A new directory in the app's directory (on the host), owned by the app's user.
    pub fn host_dir(&self, name: &str) -> PathBuf {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).expect("create a host directory");
        self.own(&dir);
        dir
    }

    /// Gives `path` to the app's user.
    pub fn own(&self, path: &Path) {
        chown(path, self.uid, self.gid);
    }

    /// The image file's bytes.
    pub fn image_bytes(&self) -> Vec<u8> {
        std::fs::read(&self.image).expect("read the image")
    }
}

fn chown(path: &Path, uid: u32, gid: u32) {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path without NUL");
    // SAFETY: a valid C string.
    let rc = unsafe { libc::chown(c.as_ptr(), uid, gid) };
    assert!(
        rc == 0 || !is_root(),
        "chown {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// Lines of the host's `/proc/self/mountinfo` that mention `needle`.
pub fn host_mounts_mentioning(needle: &Path) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let needle = needle.to_string_lossy();
    text.lines()
        .filter(|l| l.contains(needle.as_ref()))
        .map(str::to_string)
        .collect()
}

/// Pids of processes whose command line contains `marker`.
pub fn processes_with(marker: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if text.contains(marker) && pid != std::process::id() {
                pids.push(pid);
            }
        }
    }
    pids
}
