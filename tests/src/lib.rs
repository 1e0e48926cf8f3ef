//! Shared helpers of the end-to-end tests (`tests/tests/e2e/`, one test program).
//!
//! - [`bins`]: where the built `fim` and `fim-boot` are (`FIM_DIST`, default `dist/`).
//! - [`run`]: running a command and checking how it ended.
//! - [`tree`]: exact snapshots of a directory tree and a readable diff between two.
//! - [`mount`]: `fim mount` in the background, always unmounted at the end.
//! - [`fsutil`]: creating the odd entries a root filesystem can hold (devices, owners,
//!   nanosecond mtimes), prerequisites (root, FUSE, tools; `skip` prints `skipped: ...`)
//!   and a seeded random generator.
//! - [`sandbox`]: running images as the invoker or a created user; [`checks`]: checks
//!   several test files run against such an app.
//! - [`host`]: host resources offered to a sandbox (files in shared places, sockets, a
//!   loopback TCP server), removed when dropped.
//! - [`image`]: building images and reading where their parts are (`fim inspect --json`).

pub mod bins;
pub mod checks;
pub mod fsutil;
pub mod host;
pub mod image;
pub mod mount;
pub mod run;
pub mod sandbox;
pub mod tree;

pub use bins::{dist_dir, fim_boot_path, fim_path};
pub use fsutil::{Rng, is_root, put, require_fuse, require_root, skip, tempdir, which};
pub use image::{Layout, build, build_with, layout};
pub use mount::Mount;
pub use run::{Output, fim, run};
pub use tree::{Tree, assert_same_tree, diff, snapshot};

/// Makes, for each named check `fn check(backend: &'static str, who: Who)`, a module with
/// one test per overlay backend and identity.
#[macro_export]
macro_rules! per_backend {
    ($($check:ident),* $(,)?) => {$(
        mod $check {
            #[test]
            fn bwrap_as_invoker() { super::$check("bwrap", $crate::sandbox::Who::Invoker) }
            #[test]
            fn bwrap_as_unprivileged_user() { super::$check("bwrap", $crate::sandbox::Who::User) }
            $crate::fuse_backend_tests!($check);
        }
    )*};
}

/// Makes, for each named check `fn check(backend: &'static str, who: Who)`, a module with
/// one test per FUSE overlay backend and identity.
#[macro_export]
macro_rules! per_backend_fuse {
    ($($check:ident),* $(,)?) => {$(
        mod $check {
            $crate::fuse_backend_tests!($check);
        }
    )*};
}

/// The tests of `check` for the FUSE backends, inside the module the macros above make.
#[macro_export]
macro_rules! fuse_backend_tests {
    ($check:ident) => {
        #[test]
        fn overlayfs_as_invoker() {
            super::$check("overlayfs", $crate::sandbox::Who::Invoker)
        }
        #[test]
        fn overlayfs_as_unprivileged_user() {
            super::$check("overlayfs", $crate::sandbox::Who::User)
        }
        #[test]
        fn unionfs_as_invoker() {
            super::$check("unionfs", $crate::sandbox::Who::Invoker)
        }
        #[test]
        fn unionfs_as_unprivileged_user() {
            super::$check("unionfs", $crate::sandbox::Who::User)
        }
    };
}
