//! `fim-ephemeral`: whether runs forget their writes, stored in the image (reserved byte
//! 11), and whether this run does (`FIM_EPHEMERAL` beats the stored byte). The view of an
//! ephemeral run is `crate::view::ephemeral`.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::bail;
use fim_image::Image;

use super::Command;
use super::args::texts;
use super::image::{self_image, store_switch, switch};
use super::overlay::Source;
use crate::view::Writable;
use crate::view::ephemeral::Ephemeral;

/// The variable that turns ephemeral runs on or off for one run.
pub const VARIABLE: &str = "FIM_EPHEMERAL";

pub const EPHEMERAL: Command = Command {
    name: "fim-ephemeral",
    synopsis: "fim-ephemeral on|off|show",
    summary: "Make runs forget what they write, stored in the image (reserved byte 11).",
    help: "An ephemeral run sees the image and your kept changes (the data directory's upper\n\
           directory) as they are, and writes anywhere, but its writes live in memory and\n\
           vanish when it ends: nothing in the data directory changes, not even times, so an\n\
           image and its data directory on read-only media run ephemeral with no writable\n\
           place at all. When .<image name>.data/ exists beside the image it is read even if\n\
           it cannot be written (FIM_DIR_DATA overrides it); without a data directory the\n\
           run sees the layers alone. The memory is a tmpfs of the kernel's default size\n\
           (half the RAM) unless FIM_EPHEMERAL_SIZE says otherwise (bytes, or a number with\n\
           K, M, G or T, e.g. 512M); past it, writes fail with 'No space left on device'.\n\
           \n\
           Each ephemeral launch has a session of its own: it does not join running\n\
           instances (nor they it), and two ephemeral runs never see each other's writes.\n\
           fim-instance lists it with an ID starting with 'e'; fim-instance exec into it\n\
           sees its writes. Changes a normal instance makes while an ephemeral run is going\n\
           may or may not show in it (its view of them is not a snapshot). fim-layer commit\n\
           is refused while ephemeral is in effect: there is nothing of the run to commit.\n\
           Deletions kept in the upper directory stay deleted; the backend is the one\n\
           fim-overlay chose when it reads the upper directory's deletion markers read-only,\n\
           else one that does, and one line says so.\n\
           \n\
           FIM_EPHEMERAL=1 or 0 overrides the stored value for one run (empty: unset).\n\
           `show` prints the effective state and where it comes from. The change is written\n\
           to a new file renamed over the image, so it is safe while the image runs.",
    run: Some(run),
};

/// Whether a run of `image` is ephemeral: `FIM_EPHEMERAL` (`1` or `0`) beats the stored
/// byte. Any other value is an error, so a typo never writes to the data directory.
pub fn effective_ephemeral(image: &Image) -> anyhow::Result<(bool, Source)> {
    match std::env::var_os(VARIABLE).filter(|v| !v.is_empty()) {
        Some(value) => match value.to_str() {
            Some("1") => Ok((true, Source::Environment)),
            Some("0") => Ok((false, Source::Environment)),
            _ => bail!(
                "{VARIABLE}={:?} is not 1 or 0: set FIM_EPHEMERAL=1 for a run that forgets its writes, 0 for a normal one",
                value.to_string_lossy()
            ),
        },
        None if image.reserved().ephemeral() => Ok((true, Source::Image)),
        None => Ok((false, Source::Default)),
    }
}

/// Where the writes of a run of `image` go, with `FIM_EPHEMERAL_SIZE` checked when they
/// go to memory.
pub fn writable(image: &Image) -> anyhow::Result<Writable> {
    Ok(match effective_ephemeral(image)?.0 {
        true => Writable::Ephemeral(Ephemeral::from_env()?),
        false => Writable::Persistent,
    })
}

/// `fim-ephemeral on|off|show`.
fn run(args: &[OsString]) -> anyhow::Result<ExitCode> {
    let args = texts("fim-ephemeral", args)?;
    if args == ["show"] {
        let (on, source) = effective_ephemeral(&self_image()?)?;
        println!("{}", shown(on, source));
        return Ok(ExitCode::SUCCESS);
    }
    match switch(&args) {
        Some(on) => store_switch("fim-ephemeral", on, fim_reserved::Reserved::set_ephemeral),
        None => bail!("usage: fim-ephemeral on|off|show"),
    }
}

/// `on (FIM_EPHEMERAL)`, `on (image)`, `off (default)`...
fn shown(on: bool, source: Source) -> String {
    let state = if on { "on" } else { "off" };
    let from = match source {
        Source::Environment => VARIABLE,
        Source::Image => "image",
        Source::Default => "default",
    };
    format!("{state} ({from})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_names_the_state_and_its_source() {
        assert_eq!(shown(true, Source::Environment), "on (FIM_EPHEMERAL)");
        assert_eq!(shown(false, Source::Environment), "off (FIM_EPHEMERAL)");
        assert_eq!(shown(true, Source::Image), "on (image)");
        assert_eq!(shown(false, Source::Default), "off (default)");
    }
}
