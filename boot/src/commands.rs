//! Dispatch of `argv[1]`: the `fim-*` commands. Anything else is meant to run the boot
//! command, which comes with the run path; until then it is refused with a clear line.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;

use anyhow::{Context, bail};
use fim_image::{Image, ImageError, Updated, update_reserved};
use fim_reserved::Overlay;

use crate::debug::{self, Step};
use crate::help;

/// FlatImage commands that later versions of this launcher implement.
const PLANNED: &[&str] = &[
    "fim-exec",
    "fim-root",
    "fim-perms",
    "fim-env",
    "fim-bind",
    "fim-boot",
    "fim-casefold",
    "fim-notify",
    "fim-unshare",
    "fim-layer",
    "fim-instance",
    "fim-desktop",
    "fim-remote",
    "fim-recipe",
];

pub fn dispatch(args: &[OsString]) -> anyhow::Result<ExitCode> {
    let first = args.first().map(|a| a.to_string_lossy().into_owned());
    let rest = args.get(1..).unwrap_or_default();
    match first.as_deref() {
        Some("fim-version") => version(rest),
        Some("fim-help") => help::help(rest),
        Some("fim-overlay") => overlay(rest),
        Some(cmd) if PLANNED.contains(&cmd) => {
            bail!("{cmd} is not available in this version yet (see fim-help)")
        }
        Some(cmd) if cmd.starts_with("fim-") => {
            bail!("unknown command '{cmd}': run fim-help for the list of commands")
        }
        _ => {
            // Validate the image first so a corrupt file is reported as such.
            self_image()?;
            bail!(
                "running the application is not available in this version yet; \
                 the image can be inspected with fim-help, fim-version and fim-overlay"
            )
        }
    }
}

/// Path of the running image. When a change renamed a new image over the one that is
/// running, the kernel reports `PATH (deleted)`; PATH then names the new image, which is
/// the one to read and change.
fn self_path() -> anyhow::Result<PathBuf> {
    let exe = std::fs::read_link("/proc/self/exe")
        .context("cannot find the path of the running executable (is /proc mounted?)")?;
    if exe.exists() {
        return Ok(exe);
    }
    let bytes = exe.as_os_str().as_bytes();
    match bytes.strip_suffix(b" (deleted)") {
        Some(stripped) => Ok(PathBuf::from(OsStr::from_bytes(stripped))),
        None => Ok(exe),
    }
}

/// The running image, with a clear message when this launcher carries no payload.
fn self_image() -> anyhow::Result<Image> {
    let _step = Step::new("open image");
    let path = self_path()?;
    match Image::open(&path) {
        Ok(image) => Ok(image),
        Err(ImageError::NotAnImage(_)) => bail!(
            "{} carries no image (a bare launcher, or a truncated image): build one with `fim build`",
            path.display()
        ),
        Err(e @ ImageError::Io { .. }) => Err(e.into()),
        Err(e) => Err(anyhow::Error::new(e).context(path.display().to_string())),
    }
}

fn version(args: &[OsString]) -> anyhow::Result<ExitCode> {
    let what = args.first().map(|a| a.to_string_lossy().into_owned());
    if args.len() > 1 {
        bail!("fim-version takes at most one argument: short, full or deps");
    }
    let version = env!("CARGO_PKG_VERSION");
    match what.as_deref() {
        None | Some("short") => println!("{version}"),
        Some("full") => {
            println!("fim-boot {version}");
            println!("image format {}", fim_image::IMAGE_VERSION);
            println!("layer format {}", fim_layers::format::LAYER_VERSION);
            println!("reserved layout {}", fim_reserved::LAYOUT_VERSION);
        }
        Some("deps") => println!("embedded tools: none"),
        Some(other) => {
            bail!("fim-version: unknown argument '{other}' (expected short, full or deps)")
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Where the effective overlay type came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Environment,
    Image,
    Default,
}

/// `FIM_OVERLAY` beats the reserved byte, which beats the default (BWRAP).
fn effective_overlay(image: &Image) -> anyhow::Result<(Overlay, Source)> {
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

fn overlay(args: &[OsString]) -> anyhow::Result<ExitCode> {
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
            let path = self_path()?;
            self_image()?;
            let _step = Step::new("rewrite reserved block");
            let updated = update_reserved(&path, |r| {
                r.set_overlay(Some(overlay));
                Ok::<(), anyhow::Error>(())
            })
            .context("fim-overlay set: cannot write the changed image next to the old one")?;
            if updated == Updated::Unchanged {
                debug::log("overlay already set; image unchanged");
            }
            Ok(ExitCode::SUCCESS)
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
