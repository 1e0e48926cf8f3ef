//! The view: what the app sees as its root. Bottom to top:
//!
//! ```text
//! places.sealed  the view again, system directories read-only (sealed): a default
//!                run's root
//! places.root    optionally the casefold view over it, on the same mount point
//!                (casefold): names found whatever their case
//! places.root    the writable view: kernel overlay, fuse-overlayfs or unionfs (overlay,
//!                fuse_backend), upper directory in the data directory, its deletion
//!                markers in the backend's format (markers); or, for an ephemeral run,
//!                a tmpfs over that upper directory made read-only (ephemeral)
//! places.layers  the merged read-only layers (layer_stack) served by the in-process FUSE
//!                server (layer_server), or an extracted copy where FUSE is unavailable
//!                (extracted)
//! ```
//!
//! The session daemon builds the view in two steps: [`Layers::prepare`] before it enters
//! its namespaces (an extraction runs as the user), [`View::mount`] inside them. The view
//! lives as long as the session; [`View::detach`] takes it down, top first.

pub mod casefold;
pub mod ephemeral;
pub mod extracted;
pub mod fuse_backend;
pub mod layer_server;
pub mod layer_stack;
pub mod markers;
pub mod overlay;
pub mod prefetch;
pub mod sealed;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use fim_image::Image;
use fim_layers::Stack;
use fim_reserved::Overlay;
use nix::mount::{MntFlags, umount2};

use crate::debug;
use crate::places::Places;
use fuse_backend::Helper;

/// Where a session's mounts live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Private namespaces: nothing is seen on the host.
    Namespaces,
    /// The host's mount namespace (user namespaces refused): mounts through `fusermount3`.
    Host,
}

/// A setuid-root `fusermount3` in `PATH`, which lets a user mount FUSE file systems
/// without a user namespace.
pub fn setuid_fusermount() -> Option<PathBuf> {
    crate::places::find_program("fusermount3")
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.uid() == 0 && m.mode() & 0o4000 != 0))
}

/// `fusermount3 -u -z PATH`, quietly: in the host's mount namespace only it may unmount a
/// user's FUSE mount.
pub fn fusermount_detach(path: &Path) {
    if let Some(fusermount) = setuid_fusermount() {
        let _ = std::process::Command::new(fusermount)
            .args(["-u", "-z", "--"])
            .arg(path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Where the writable view keeps what the app writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writable {
    /// The data directory's upper directory, shared by the image's instances.
    Persistent,
    /// A tmpfs of this run's own over the upper directory, which is only read.
    Ephemeral(ephemeral::Ephemeral),
}

/// How the layers reach the overlay as its lower directory.
pub enum Layers {
    /// Served by the in-process FUSE server at `places.layers`.
    Fuse(Stack),
    /// Extracted into the per-user cache (no FUSE here, or `FIM_EXTRACT=1`).
    Extracted(extracted::Extraction),
}

impl Layers {
    /// Chooses how to serve `stack`, extracting it now if FUSE is unavailable: the
    /// extraction runs as the user, before the session's namespaces exist, and tells
    /// `report` what it does.
    pub fn prepare(
        stack: Stack,
        identity: &str,
        image: &Path,
        (wanted, casefold): (Overlay, bool),
        report: &mut dyn extracted::Report,
    ) -> anyhow::Result<Layers> {
        Ok(match extracted::needed() {
            Some(why) => {
                extracted::refuse_fuse_backend(wanted, &why)?;
                extracted::refuse_casefold(casefold, &why)?;
                debug::log(format!(
                    "daemon: {why}: serving the layers from the extraction cache"
                ));
                Layers::Extracted(extracted::tree(&stack, identity, image, report)?)
            }
            None => Layers::Fuse(stack),
        })
    }
}

/// The mounted view of a session.
pub struct View {
    /// The backend that mounted the writable view (not the one asked for after a fallback).
    pub overlay: Overlay,
    /// Why `overlay` is not the one asked for, for the launcher that started the session.
    pub notice: Option<String>,
    root: PathBuf,
    data: PathBuf,
    /// An ephemeral run's tmpfs and read-only data directory, taken down after the
    /// backend above them.
    scratch: Option<PathBuf>,
    read_only_data: Option<PathBuf>,
    isolation: Isolation,
    /// The FUSE server of the layers and what becomes readable (hang-up) when it stops.
    fuse: Option<(fuser::SessionUnmounter, OwnedFd)>,
    /// The FUSE backend's process, if the view is not the kernel overlay.
    helper: Option<Helper>,
    /// The casefold view's server and what becomes readable when it stops, if it is on.
    casefold: Option<(fuser::SessionUnmounter, OwnedFd)>,
    /// The view again with its system directories read-only, when mounted (`sealed`).
    sealed: Option<PathBuf>,
    /// The extracted layers in use, when FUSE does not serve them.
    _extraction: Option<extracted::Extraction>,
}

impl View {
    /// Mounts the layers and the writable view over them with `wanted` (or its fallback),
    /// and the casefold view over that if `casefold`. `layers_served` runs once the layers
    /// are served, before the view above them is mounted. On failure nothing stays mounted.
    pub fn mount(
        image: &Image,
        layers: Layers,
        places: &Places,
        ids: (u32, u32),
        isolation: Isolation,
        (wanted, casefold, writable): (Overlay, bool, &Writable),
        layers_served: impl FnOnce(),
    ) -> anyhow::Result<View> {
        if casefold && isolation == Isolation::Host {
            // fusermount3 runs as root, and root may not enter the user's FUSE mount below
            // (mounted without allow_other) to mount over it.
            anyhow::bail!(
                "casefold needs user namespaces, which this system refuses (fusermount3 cannot mount it over the overlay); turn it off with FIM_CASEFOLD=0 or fim-casefold off"
            );
        }
        let (lower, mut fuse, extraction) = match layers {
            Layers::Extracted(extraction) => (extraction.tree.clone(), None, Some(extraction)),
            Layers::Fuse(stack) => {
                let served = layer_server::serve(stack, &places.layers, ids, isolation)?;
                (places.layers.clone(), Some(served), None)
            }
        };
        layers_served();
        match overlay::mount_view(image, places, &lower, (ids, isolation), wanted, writable) {
            Ok(mounted) => {
                let ephemeral = matches!(writable, Writable::Ephemeral(_));
                let mut view = View {
                    overlay: mounted.overlay,
                    notice: mounted.notice,
                    root: places.root.clone(),
                    data: places.data.clone(),
                    scratch: ephemeral.then(|| places.scratch.clone()),
                    read_only_data: ephemeral.then(|| places.read_only_data.clone()),
                    isolation,
                    fuse,
                    helper: mounted.helper,
                    casefold: None,
                    sealed: None,
                    _extraction: extraction,
                };
                if casefold {
                    let below = match view.overlay {
                        Overlay::Unionfs => casefold::Below::FlushingBackend,
                        Overlay::Bwrap | Overlay::Overlayfs => casefold::Below::QuietClose,
                    };
                    match casefold::serve(&places.root, isolation, below) {
                        Ok(served) => view.casefold = Some(served),
                        Err(e) => {
                            view.detach();
                            return Err(e);
                        }
                    }
                }
                // In the host's mount namespace (no user namespaces) the daemon mounts
                // nothing itself; each launch's setuid bwrap makes them read-only.
                let dirs = sealed::system_dirs(&places.root);
                if isolation == Isolation::Namespaces && !dirs.is_empty() {
                    match sealed::seal(&places.root, &places.sealed, &dirs) {
                        Ok(()) => view.sealed = Some(places.sealed.clone()),
                        Err(e) => debug::log(format!(
                            "daemon: system directories not sealed ({e:#}); each launch's bwrap makes them read-only"
                        )),
                    }
                }
                Ok(view)
            }
            Err(e) => {
                if let Some((unmounter, _)) = &mut fuse {
                    let _ = unmounter.unmount();
                }
                Err(e)
            }
        }
    }

    /// Becomes readable (hangs up) when the casefold view's server stops.
    pub fn casefold_stopped(&self) -> Option<BorrowedFd<'_>> {
        self.casefold.as_ref().map(|(_, stopped)| stopped.as_fd())
    }

    /// Becomes readable (hangs up) when the layers' FUSE server stops.
    pub fn layers_stopped(&self) -> Option<BorrowedFd<'_>> {
        self.fuse.as_ref().map(|(_, stopped)| stopped.as_fd())
    }

    /// Becomes readable when the FUSE backend's process exits.
    pub fn backend_exited(&self) -> Option<BorrowedFd<'_>> {
        self.helper.as_ref().map(Helper::exited)
    }

    /// How the FUSE backend ended, once [`View::backend_exited`] is readable.
    pub fn how_the_backend_ended(&mut self) -> String {
        self.helper.as_mut().map_or_else(
            || "the overlay backend stopped".into(),
            Helper::how_it_ended,
        )
    }

    /// Takes the view down, top first (lazily: a dying sandbox may still hold it). A FUSE
    /// backend is waited for before the layers below it are unmounted: it holds them open
    /// until it exits.
    pub fn detach(mut self) {
        if let Some(sealed) = self.sealed.take() {
            sealed::unseal(&sealed);
        }
        if let Some((mut unmounter, _)) = self.casefold.take() {
            let _ = unmounter.unmount();
        }
        match self.isolation {
            // Everything stacked on the root: the casefold view too, should its unmount
            // have found it busy (a sandbox still exiting), and the view below it.
            Isolation::Namespaces => {
                for _ in 0..3 {
                    if umount2(&self.root, MntFlags::MNT_DETACH).is_err() {
                        break;
                    }
                }
            }
            Isolation::Host => fusermount_detach(&self.root),
        }
        if let Some(helper) = self.helper.take() {
            debug::log(format!("daemon: waiting for {} to exit", helper.name()));
            match self.isolation {
                Isolation::Namespaces => helper.stop(),
                Isolation::Host => helper.stop_in_host(),
            }
        }
        if let Some((unmounter, _)) = &mut self.fuse {
            let _ = unmounter.unmount();
        }
        if let Some(scratch) = &self.scratch {
            // Nothing of an ephemeral run's is kept: its writes go with the tmpfs.
            let _ = umount2(scratch, MntFlags::MNT_DETACH);
            if let Some(data) = &self.read_only_data {
                let _ = umount2(data, MntFlags::MNT_DETACH);
            }
            return;
        }
        // The kernel overlay leaves its empty work directory with mode 000, which a
        // user's `rm -rf` of the data directory cannot get through; it is made anew.
        let _ = std::fs::remove_dir(self.data.join("work").join("work"));
    }
}
