//! `fim-overlay`: the backend of the writable view, stored in the image (reserved byte 9,
//! FlatImage's), and which one a run uses.

use std::ffi::OsString;
use std::process::ExitCode;
use std::str::FromStr;

use anyhow::bail;
use fim_image::Image;
use fim_reserved::Overlay;

use super::Command;
use super::image::{change_reserved, self_image};
use crate::debug;

pub const OVERLAY: Command = Command {
    name: "fim-overlay",
    synopsis: "fim-overlay set bwrap|overlayfs|unionfs | fim-overlay show",
    summary: "Choose the backend of the writable overlay, stored in the image (reserved byte 9).",
    help: "bwrap: the kernel's overlayfs (fastest). overlayfs: fuse-overlayfs. unionfs:\n\
           `unionfs -o cow` (no xattrs). The FUSE programs are FIM_FUSE_OVERLAYFS and\n\
           FIM_UNIONFS when set, else the image's embedded copies, else the host's (packages\n\
           fuse-overlayfs, unionfs-fuse). If the kernel refuses its overlay, an available FUSE\n\
           backend takes over and one line says so. All three share the upper directory in\n\
           the data directory: switching keeps every change, deleted files included.\n\
           Instances running together share one backend: a new choice applies once they have\n\
           all exited.\n\
           `show` prints the effective type: the FIM_OVERLAY environment variable beats the\n\
           stored value, which beats the default (bwrap). An unknown value is an error.\n\
           The change is written to a new file renamed over the image, so it is safe while\n\
           the image runs and if interrupted.",
    run: Some(run),
};

/// Where an effective setting (the overlay type, the casefold state) came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Environment,
    Image,
    Default,
}

/// `FIM_OVERLAY` beats the reserved byte, which beats the default (BWRAP).
pub fn effective_overlay(image: &Image) -> anyhow::Result<(Overlay, Source)> {
    if let Some(value) = std::env::var_os("FIM_OVERLAY") {
        let text = value.to_string_lossy();
        let overlay = Overlay::from_str(&text).map_err(|e| anyhow::anyhow!("FIM_OVERLAY: {e}"))?;
        return Ok((overlay, Source::Environment));
    }
    Ok(match image.reserved().overlay() {
        Some(o) => (o, Source::Image),
        None => (Overlay::Bwrap, Source::Default),
    })
}

fn run(args: &[OsString]) -> anyhow::Result<ExitCode> {
    let strs: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    match strs
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["set", value] => {
            let overlay =
                Overlay::from_str(value).map_err(|e| anyhow::anyhow!("fim-overlay: {e}"))?;
            change_reserved("fim-overlay set", |r| {
                r.set_overlay(Some(overlay));
                Ok(())
            })
        }
        ["show"] => {
            let image = self_image()?;
            let (overlay, source) = effective_overlay(&image)?;
            debug::log(format!("overlay source: {source:?}"));
            println!("{overlay}");
            Ok(ExitCode::SUCCESS)
        }
        _ => bail!("usage: fim-overlay set bwrap|overlayfs|unionfs | fim-overlay show"),
    }
}
