//! The writable view over the merged layers, by one of three backends: the kernel overlay
//! (BWRAP, the default), `fuse-overlayfs` (OVERLAYFS) or `unionfs -o cow` (UNIONFS, see
//! `fuse_backend`). Before any backend mounts, the upper directory's deletion markers are
//! brought to its format (`markers`).
//!
//! When the kernel refuses its overlay, the next installed FUSE backend takes over and the
//! launcher says so in one line.

use std::path::Path;

use anyhow::{Context, bail};
use fim_reserved::Overlay;
use nix::errno::Errno;
use nix::mount::{MsFlags, mount};

use super::Isolation;
use super::fuse_backend::{FuseContext, Helper, mount_fuse};
use super::markers::{self, Format};
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

/// Mounts the writable view with `wanted`, falling back from a refused kernel overlay to
/// the installed FUSE backends. The upper directory's deletion markers are converted to
/// each backend's format before it mounts.
pub fn mount_view(
    image: &Image,
    places: &Places,
    lower: &Path,
    ids: (u32, u32),
    isolation: Isolation,
    wanted: Overlay,
) -> anyhow::Result<Mounted> {
    let fuse = FuseContext { ids, isolation };
    if let Some(tool) = tool(wanted) {
        let program = tools::find(image, tool)?.with_context(|| {
            format!(
                "the {wanted} overlay needs {}, which the image does not embed and PATH does not hold: install the {} package, set {}, or choose another backend (FIM_OVERLAY=bwrap, or fim-overlay set bwrap)",
                tool.name(),
                tool.package(),
                tool.variable()
            )
        })?;
        let helper = mount_fuse(places, lower, fuse, wanted, &program)?;
        return Ok(Mounted {
            overlay: wanted,
            notice: None,
            helper: Some(helper),
        });
    }
    let refused = match mount_kernel(places, lower) {
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
        let Some(program) = tools::find(image, tool)? else {
            failures.push(format!("{} is not available", tool.name()));
            continue;
        };
        match mount_fuse(places, lower, fuse, fallback, &program) {
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

/// Mounts the kernel overlay: the merged layers below, the data directory's upper and
/// work directories above. Paths are given relative to the data directory, whose name the
/// user chose and may hold the `,` and `:` that separate overlay options.
fn mount_kernel(places: &Places, lower: &Path) -> Result<(), Refusal> {
    prepare_upper(places, lower, Overlay::Bwrap).map_err(Refusal::Other)?;
    let _step = debug::Step::new("daemon: mount the overlay (kernel)");
    if std::env::var_os(REFUSE_KERNEL_OVERLAY).is_some_and(|v| v == "1") {
        debug::log(format!(
            "daemon: {REFUSE_KERNEL_OVERLAY}=1 refuses the kernel overlay"
        ));
        return Err(Refusal::Errno(Errno::EPERM));
    }
    std::env::set_current_dir(&places.data)
        .with_context(|| format!("cannot enter {}", places.data.display()))
        .map_err(Refusal::Other)?;
    let lower = option_path(lower).map_err(Refusal::Other)?;
    // `userxattr`: the same deletion markers whether root or a user mounted it.
    let options = format!("lowerdir={lower},upperdir=upper,workdir=work,userxattr");
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
