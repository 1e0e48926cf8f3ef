//! The image this launcher heads, as the commands read and change it: found through
//! `/proc/self/exe`, opened with a clear message when there is no payload, and changed
//! only by writing a new file beside it and renaming it over (`fim_image::update_reserved`).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use fim_image::{Image, ImageError, Updated, update_reserved};

use crate::debug::{self, Step};

/// Path of the running image. When a change renamed a new image over the one that is
/// running, the kernel reports `PATH (deleted)`; PATH then names the new image, which is
/// the one to read and change.
pub fn self_path() -> anyhow::Result<PathBuf> {
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
pub fn self_image() -> anyhow::Result<Image> {
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

/// `on` or `off`, when it is the only word of `args`.
pub fn switch(args: &[String]) -> Option<bool> {
    match args {
        [word] if word == "on" => Some(true),
        [word] if word == "off" => Some(false),
        _ => None,
    }
}

/// `NAME on|off`: stores the switch in the reserved block with `set`.
pub fn store_switch(
    name: &str,
    on: bool,
    set: fn(&mut fim_reserved::Reserved, bool),
) -> anyhow::Result<ExitCode> {
    let word = if on { "on" } else { "off" };
    change_reserved(&format!("{name} {word}"), move |r| {
        set(r, on);
        Ok(())
    })
}

/// Validates the running image, then rewrites its reserved block with `change`, which
/// sees the block as it is under the image's lock. When `change` refuses, nothing is
/// written and the error reads `WHAT: reason`.
pub fn change_reserved(
    what: &str,
    change: impl FnOnce(&mut fim_reserved::Reserved) -> anyhow::Result<()>,
) -> anyhow::Result<ExitCode> {
    let path = self_path()?;
    self_image()?;
    let _step = Step::new("rewrite reserved block");
    let mut refused = None;
    let updated = update_reserved(&path, |r| {
        // A refusal is reported as it is, not as a failure to write.
        change(r).map_err(|e| {
            let text = format!("{what}: {e:#}");
            refused = Some(text.clone());
            anyhow::anyhow!(text)
        })
    });
    if let Some(text) = refused {
        bail!("{text}");
    }
    let updated = updated
        .with_context(|| format!("{what}: cannot write the changed image next to the old one"))?;
    if updated == Updated::Unchanged {
        debug::log("setting unchanged; image left as it was");
    }
    Ok(ExitCode::SUCCESS)
}
