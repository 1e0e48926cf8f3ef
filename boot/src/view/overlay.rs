//! The writable view over the merged layers, by one of three backends: the kernel overlay
//! (BWRAP, the default), `fuse-overlayfs` (OVERLAYFS) or `unionfs -o cow` (UNIONFS, see
//! `fuse_backend`). Before any backend mounts, the upper directory's deletion markers are
//! brought to its format (`markers`); an ephemeral view (`ephemeral`) leaves them as they
//! are and stacks the upper directory read-only under a tmpfs of its own.
//!
//! When the kernel refuses its overlay, the next installed FUSE backend takes over and the
//! launcher says so in one line.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use fim_reserved::Overlay;
use nix::errno::Errno;
use nix::mount::{MsFlags, mount};

use super::ephemeral;
use super::fuse_backend::{FuseContext, Helper, mount_fuse};
use super::markers::{self, Format};
use super::{Isolation, Writable};
use crate::debug;
use crate::places::Places;
use crate::tools::{self, Tool};
use fim_image::Image;

/// Test-only switch: with `1`, the daemon treats the kernel overlay mount as refused
/// (`EPERM`), as a host that forbids it would, so the fallback can be tested anywhere.
pub const REFUSE_KERNEL_OVERLAY: &str = "FIM_TEST_REFUSE_KERNEL_OVERLAY";

/// The program behind a FUSE backend; none for the kernel overlay.
pub fn tool(overlay: Overlay) -> Option<Tool> {
    match overlay {
        Overlay::Bwrap => None,
        Overlay::Overlayfs => Some(Tool::FuseOverlayfs),
        Overlay::Unionfs => Some(Tool::Unionfs),
    }
}

/// The writable view, mounted on `places.root`.
pub struct Mounted {
    /// The backend that mounted it.
    pub overlay: Overlay,
    /// Why it is not the one asked for, to be shown to the user.
    pub notice: Option<String>,
    /// The FUSE backend's process; none for the kernel overlay.
    pub helper: Option<Helper>,
}

/// The directories a backend stacks, as it is given them: relative to `cwd` (the data
/// directory, whose name the user chose and may hold the `,` and `:` that separate mount
/// options) or absolute paths checked for those characters.
pub struct Branches {
    pub cwd: PathBuf,
    /// Read-only, top first.
    pub lowers: Vec<String>,
    pub upper: String,
    /// The kernel overlay's work directory, and fuse-overlayfs's.
    pub work: String,
    pub fuse_work: String,
    /// The upper directory is the data directory's: its markers are converted to the
    /// backend's format first. Not so in an ephemeral view, which changes nothing there.
    pub persistent: bool,
}

impl Branches {
    pub fn of(places: &Places, lower: &Path, writable: &Writable) -> anyhow::Result<Branches> {
        let layers = option_path(lower)?;
        Ok(match writable {
            Writable::Persistent => Branches {
                cwd: places.data.clone(),
                lowers: vec![layers],
                upper: "upper".into(),
                work: "work".into(),
                fuse_work: "work/fuse-overlayfs".into(),
                persistent: true,
            },
            Writable::Ephemeral(_) => {
                let kept = ephemeral::upper(places)
                    .map(|p| option_path(&p))
                    .transpose()?;
                let scratch_work = ephemeral::scratch_dir(places, "work")?;
                Branches {
                    cwd: PathBuf::from("/"),
                    lowers: kept.into_iter().chain([layers]).collect(),
                    upper: ephemeral::scratch_dir(places, "upper")?,
                    work: scratch_work.clone(),
                    fuse_work: scratch_work,
                    persistent: false,
                }
            }
        })
    }
}

/// Mounts the writable view with `wanted`, falling back from a refused kernel overlay to
/// the installed FUSE backends. The upper directory's deletion markers are converted to
/// each backend's format before it mounts; an ephemeral view uses a backend that reads
/// them as they are.
pub fn mount_view(
    image: &Image,
    places: &Places,
    lower: &Path,
    (ids, isolation): ((u32, u32), Isolation),
    wanted: Overlay,
    writable: &Writable,
) -> anyhow::Result<Mounted> {
    let fuse = FuseContext { ids, isolation };
    let (wanted, formats, switched) = match writable {
        Writable::Persistent => (wanted, None, None),
        Writable::Ephemeral(settings) => {
            if isolation == Isolation::Host {
                bail!(
                    "an ephemeral run needs a user namespace to mount its memory-backed layer, and this system refuses them: run without FIM_EPHEMERAL (fim-ephemeral off), or allow unprivileged user namespaces"
                );
            }
            ephemeral::bind_data_read_only(places)?;
            let formats = ephemeral::formats(places)?;
            let (overlay, switched) = ephemeral::backend(wanted, &formats)?;
            ephemeral::mount_scratch(places, settings)?;
            (overlay, Some(formats), switched)
        }
    };
    let branches = Branches::of(places, lower, writable)?;
    let mut mounted = mount_with(
        image,
        (places, lower),
        &branches,
        fuse,
        wanted,
        formats.as_ref(),
    )?;
    mounted.notice = match (switched, mounted.notice.take()) {
        (Some(a), Some(b)) => Some(format!("{a}; {b}")),
        (a, b) => a.or(b),
    };
    Ok(mounted)
}

/// Mounts `branches` with `wanted`, or the first FUSE backend that takes over from a
/// refused kernel overlay (and reads `formats`, for an ephemeral view).
fn mount_with(
    image: &Image,
    (places, lower): (&Places, &Path),
    branches: &Branches,
    fuse: FuseContext,
    wanted: Overlay,
    formats: Option<&std::collections::BTreeSet<Format>>,
) -> anyhow::Result<Mounted> {
    if let Some(tool) = tool(wanted) {
        let program = tools::find(image, tool)?.with_context(|| {
            format!(
                "the {wanted} overlay needs {}, which the image does not embed and PATH does not hold: install the {} package, set {}, or choose another backend (FIM_OVERLAY=bwrap, or fim-overlay set bwrap)",
                tool.name(),
                tool.package(),
                tool.variable()
            )
        })?;
        let helper = mount_fuse(places, branches, lower, fuse, wanted, &program)?;
        return Ok(Mounted {
            overlay: wanted,
            notice: None,
            helper: Some(helper),
        });
    }
    let refused = match mount_kernel(places, branches, lower) {
        Ok(()) => {
            return Ok(Mounted {
                overlay: Overlay::Bwrap,
                notice: None,
                helper: None,
            });
        }
        Err(Refusal::Errno(errno)) => errno,
        Err(Refusal::Other(e)) => return Err(e),
    };
    debug::log(format!(
        "daemon: the kernel refused the overlay ({refused:?})"
    ));
    let mut failures = Vec::new();
    for fallback in [Overlay::Overlayfs, Overlay::Unionfs] {
        let Some(tool) = tool(fallback) else { continue };
        if formats.is_some_and(|f| !f.iter().all(|f| ephemeral::honours(fallback, *f))) {
            failures.push(format!(
                "{} cannot read the upper directory's deletions",
                tool.name()
            ));
            continue;
        }
        let Some(program) = tools::find(image, tool)? else {
            failures.push(format!("{} is not available", tool.name()));
            continue;
        };
        match mount_fuse(places, branches, lower, fuse, fallback, &program) {
            Ok(helper) => {
                return Ok(Mounted {
                    overlay: fallback,
                    notice: Some(format!(
                        "overlayfs mount refused ({refused:?}), using {}",
                        tool.package()
                    )),
                    helper: Some(helper),
                });
            }
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    bail!(
        "the kernel refused the overlay mount ({refused:?}) and no FUSE backend could take over ({}): install fuse-overlayfs or unionfs-fuse",
        failures.join("; ")
    )
}

enum Refusal {
    /// The mount call itself failed: a fallback may work.
    Errno(Errno),
    /// Something before it failed (converting markers, entering the data directory).
    Other(anyhow::Error),
}

/// Mounts the kernel overlay of `branches` (the merged layers at `lower`, lowest).
fn mount_kernel(places: &Places, branches: &Branches, lower: &Path) -> Result<(), Refusal> {
    if branches.persistent {
        prepare_upper(places, lower, Overlay::Bwrap).map_err(Refusal::Other)?;
    }
    let _step = debug::Step::new("daemon: mount the overlay (kernel)");
    if std::env::var_os(REFUSE_KERNEL_OVERLAY).is_some_and(|v| v == "1") {
        debug::log(format!(
            "daemon: {REFUSE_KERNEL_OVERLAY}=1 refuses the kernel overlay"
        ));
        return Err(Refusal::Errno(Errno::EPERM));
    }
    std::env::set_current_dir(&branches.cwd)
        .with_context(|| format!("cannot enter {}", branches.cwd.display()))
        .map_err(Refusal::Other)?;
    // `userxattr`: the same deletion markers whether root or a user mounted it.
    let options = format!(
        "lowerdir={},upperdir={},workdir={},userxattr",
        branches.lowers.join(":"),
        branches.upper,
        branches.work
    );
    let result = mount(
        Some("fim"),
        &places.root,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    );
    let _ = std::env::set_current_dir("/");
    result.map_err(Refusal::Errno)
}

/// Converts the upper directory's markers to `overlay`'s format.
pub fn prepare_upper(places: &Places, lower: &Path, overlay: Overlay) -> anyhow::Result<()> {
    let _step = debug::Step::new("daemon: check the upper directory's deletion markers");
    let lower = markers::MountedLower(lower);
    if markers::convert(&places.data, &places.upper, &lower, Format::of(overlay))? {
        debug::log(format!(
            "daemon: converted the deletion markers for {overlay}"
        ));
    }
    Ok(())
}

/// An absolute path that can stand in a mount option list: no separators, no escapes.
pub fn option_path(path: &Path) -> anyhow::Result<String> {
    let text = path.to_str().filter(|t| !t.contains([',', ':', '=', '\\']));
    text.map(str::to_string).with_context(|| {
        format!(
            "{} holds a character (',', ':', '=' or '\\') that mount options cannot carry: set TMPDIR (or XDG_CACHE_HOME) to a plainer path",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_paths_refuse_separators() {
        assert_eq!(
            option_path(Path::new("/tmp/fim-0/ab/layers"))
                .ok()
                .as_deref(),
            Some("/tmp/fim-0/ab/layers")
        );
        for bad in ["/tmp/a,b", "/tmp/a:b", "/tmp/a=b", "/tmp/a\\b"] {
            assert!(option_path(Path::new(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_fuse_backends_have_tools_and_each_names_its_package() {
        assert!(tool(Overlay::Bwrap).is_none());
        assert_eq!(
            tool(Overlay::Overlayfs).map(|t| t.package()),
            Some("fuse-overlayfs")
        );
        assert_eq!(
            tool(Overlay::Unionfs).map(|t| (t.name(), t.package())),
            Some(("unionfs", "unionfs-fuse"))
        );
    }
}
