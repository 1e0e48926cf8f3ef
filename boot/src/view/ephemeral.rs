//! Ephemeral runs: the writable view of one launch whose writes live in memory and vanish
//! with it. The persistent upper directory becomes a read-only lower, between the run's
//! own upper and the layers:
//!
//! ```text
//! <instance>/scratch     tmpfs (FIM_EPHEMERAL_SIZE, else the kernel's default size)
//!   upper/               this run's writes, deletions and replaced directories
//!   work/                the kernel overlay's and fuse-overlayfs's work directory
//! <instance>/data        the data directory, bound read-only in the session's namespace
//!   upper/               the persistent changes, deletion markers as they are
//! places.layers          read-only: the merged layers
//! ```
//!
//! Nothing in the data directory is written, converted or locked: the view reads it
//! through a read-only bind, on which the kernel updates no access time either. Its
//! deletion markers are read in the format they are in, so the backend is one that
//! honours that format in a read-only lower (`honours`). What this module does not do: decide whether a run is
//! ephemeral (`commands::ephemeral`), nor give it its own session (`places`, `session`).

use std::collections::BTreeSet;
use std::fs::DirBuilder;
use std::os::unix::fs::DirBuilderExt;

use anyhow::{Context, bail};
use fim_reserved::Overlay;
use nix::mount::{MsFlags, mount};
use nix::sys::statvfs::{FsFlags, statvfs};

use super::markers::{self, Format};
use crate::places::Places;

/// The variable that sizes an ephemeral run's memory.
pub const SIZE_VARIABLE: &str = "FIM_EPHEMERAL_SIZE";

/// How an ephemeral run keeps its writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ephemeral {
    /// Bytes of tmpfs; `None` is the kernel's default (half of the memory).
    pub size: Option<u64>,
}

impl Ephemeral {
    /// The settings `FIM_EPHEMERAL_SIZE` asks for: bytes, or a number with K, M, G or T.
    pub fn from_env() -> anyhow::Result<Ephemeral> {
        let Some(value) = std::env::var_os(SIZE_VARIABLE).filter(|v| !v.is_empty()) else {
            return Ok(Ephemeral { size: None });
        };
        let text = value.to_string_lossy();
        match super::extracted::parse_size(&text) {
            Some(size) if size > 0 => Ok(Ephemeral { size: Some(size) }),
            _ => bail!(
                "{SIZE_VARIABLE}={text:?} is not a size: give bytes, or a number with K, M, G or T (e.g. 512M)"
            ),
        }
    }
}

/// Whether `overlay` honours, in a read-only lower directory, the deletion markers that
/// `format` leaves in an upper directory: the kernel reads its char devices and
/// `user.overlay.opaque` (mounted with `userxattr`); fuse-overlayfs reads those and its
/// `.wh.` files; unionfs-fuse reads its `.unionfs-fuse/*_HIDDEN~` in read-only branches.
pub fn honours(overlay: Overlay, format: Format) -> bool {
    matches!(
        (overlay, format),
        (Overlay::Bwrap, Format::Kernel)
            | (Overlay::Overlayfs, Format::Kernel | Format::FuseOverlayfs)
            | (Overlay::Unionfs, Format::Unionfs)
    )
}

/// The formats of the persistent upper directory's markers: none without one.
pub fn formats(places: &Places) -> anyhow::Result<BTreeSet<Format>> {
    if !has_upper(places) {
        return Ok(BTreeSet::new());
    }
    markers::recorded(&places.read_only_data)
}

/// Binds the data directory, when there is one, read-only at `places.read_only_data` in
/// the session's mount namespace; the view reads it only there.
pub fn bind_data_read_only(places: &Places) -> anyhow::Result<()> {
    if !places.data.is_dir() {
        return Ok(());
    }
    let _step = crate::debug::Step::new("daemon: bind the data directory read-only");
    let target = &places.read_only_data;
    DirBuilder::new()
        .mode(0o700)
        .create(target)
        .with_context(|| format!("cannot create {}", target.display()))?;
    let cannot = || format!("cannot bind {} read-only", places.data.display());
    mount(
        Some(&places.data),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .with_context(cannot)?;
    // A remount replaces the bind's flags: those the host locked must be given again.
    let now = statvfs(target).with_context(cannot)?.flags();
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    for (has, flag) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        // ST_RELATIME (Linux's value; musl's headers do not name it).
        (FsFlags::from_bits_retain(0x1000), MsFlags::MS_RELATIME),
    ] {
        if now.contains(has) {
            flags |= flag;
        }
    }
    mount(None::<&str>, target, None::<&str>, flags, None::<&str>).with_context(cannot)
}

/// The backend of an ephemeral view: `wanted` when it reads the persistent markers, else
/// the first that does, with the line that says why.
pub fn backend(
    wanted: Overlay,
    formats: &BTreeSet<Format>,
) -> anyhow::Result<(Overlay, Option<String>)> {
    let reads = |overlay: Overlay| formats.iter().all(|f| honours(overlay, *f));
    if reads(wanted) {
        return Ok((wanted, None));
    }
    let names: Vec<&str> = formats.iter().map(|f| f.name()).collect();
    match [Overlay::Overlayfs, Overlay::Unionfs, Overlay::Bwrap]
        .into_iter()
        .find(|o| reads(*o))
    {
        Some(other) => Ok((
            other,
            Some(format!(
                "the upper directory records its deletions for {}, which {wanted} cannot read read-only; this ephemeral run uses {other}",
                names.join(" and ")
            )),
        )),
        None => bail!(
            "the upper directory holds deletion markers of {} (an interrupted switch of backend), which no backend reads read-only: run the image once without FIM_EPHEMERAL to finish it",
            names.join(" and ")
        ),
    }
}

/// Mounts the run's tmpfs on `places.scratch` and makes its `upper` and `work`.
pub fn mount_scratch(places: &Places, ephemeral: &Ephemeral) -> anyhow::Result<()> {
    let _step = crate::debug::Step::new("daemon: mount the ephemeral run's tmpfs");
    let options = match ephemeral.size {
        Some(size) => format!("mode=0755,size={size}"),
        None => "mode=0755".to_string(),
    };
    DirBuilder::new()
        .mode(0o700)
        .create(&places.scratch)
        .with_context(|| format!("cannot create {}", places.scratch.display()))?;
    mount(
        Some("fim-ephemeral"),
        &places.scratch,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .with_context(|| format!("cannot mount a tmpfs on {}", places.scratch.display()))?;
    for (dir, mode) in [("upper", 0o755), ("work", 0o700)] {
        let path = places.scratch.join(dir);
        DirBuilder::new()
            .mode(mode)
            .create(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
    }
    Ok(())
}

/// The scratch directories as an overlay option can carry them.
pub fn scratch_dir(places: &Places, dir: &str) -> anyhow::Result<String> {
    super::overlay::option_path(&places.scratch.join(dir))
}

/// The persistent upper directory as the view reads it (read-only), if there is one.
pub fn upper(places: &Places) -> Option<std::path::PathBuf> {
    Some(places.read_only_data.join("upper")).filter(|p| p.is_dir())
}

fn has_upper(places: &Places) -> bool {
    upper(places).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(formats: &[Format]) -> BTreeSet<Format> {
        formats.iter().copied().collect()
    }

    #[test]
    fn each_backend_reads_its_own_markers_and_fuse_overlayfs_the_kernels_too() {
        for overlay in [Overlay::Bwrap, Overlay::Overlayfs, Overlay::Unionfs] {
            assert!(honours(overlay, Format::of(overlay)), "{overlay}");
        }
        assert!(honours(Overlay::Overlayfs, Format::Kernel));
        assert!(!honours(Overlay::Bwrap, Format::FuseOverlayfs));
        assert!(!honours(Overlay::Bwrap, Format::Unionfs));
        assert!(!honours(Overlay::Unionfs, Format::Kernel));
    }

    #[test]
    fn the_wanted_backend_stays_when_it_reads_the_markers() {
        assert_eq!(
            backend(Overlay::Bwrap, &set(&[Format::Kernel])).unwrap(),
            (Overlay::Bwrap, None)
        );
        assert_eq!(
            backend(Overlay::Unionfs, &set(&[])).unwrap(),
            (Overlay::Unionfs, None)
        );
    }

    #[test]
    fn another_backend_reads_what_the_wanted_one_cannot_and_says_so() {
        let (overlay, notice) = backend(Overlay::Bwrap, &set(&[Format::Unionfs])).unwrap();
        assert_eq!(overlay, Overlay::Unionfs);
        assert!(notice.unwrap().contains("uses unionfs"));
        let (overlay, _) = backend(Overlay::Unionfs, &set(&[Format::FuseOverlayfs])).unwrap();
        assert_eq!(overlay, Overlay::Overlayfs);
    }

    #[test]
    fn markers_of_two_incompatible_formats_are_refused() {
        let err = backend(Overlay::Bwrap, &set(&[Format::Kernel, Format::Unionfs])).unwrap_err();
        assert!(err.to_string().contains("without FIM_EPHEMERAL"), "{err}");
    }
}
