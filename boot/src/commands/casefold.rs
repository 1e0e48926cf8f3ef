//! `fim-casefold`: whether the app sees file names case-insensitively (the casefold view,
//! `crate::view::casefold`), stored in the image (reserved byte 10, FlatImage's), and
//! which state a run uses.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::bail;
use fim_image::Image;

use super::Command;
use super::args::texts;
use super::image::{self_image, store_switch, switch};
use super::overlay::Source;
use fim_reserved::Reserved;

pub const CASEFOLD: Command = Command {
    name: "fim-casefold",
    synopsis: "fim-casefold on|off | fim-casefold show",
    summary: "Make file names inside the image case-insensitive, as Windows programs expect.",
    help: "On, a name is found whatever its case (data.pak opens Data.PAK) and keeps the case\n\
           it was written with; writing save.dat where Save.DAT exists writes Save.DAT.\n\
           Cases are compared by Unicode simple case folding (Ä.txt is ä.txt). Where two\n\
           names differ only by case, the exact one wins, else the byte-wise smallest\n\
           (FIM_DEBUG=1 names it). Nothing is renamed on disk: off again, every file keeps\n\
           its real name. It works with every overlay backend and needs FUSE.\n\
           FIM_CASEFOLD=1 or 0 overrides the stored state for one run; `show` prints the\n\
           effective state and where it comes from. Instances running together share one\n\
           view: a new state applies once they have all exited.",
    run: Some(run),
};

/// `FIM_CASEFOLD` (`1` or `0`) beats reserved byte 10, whose `0` is the default (off).
pub fn effective_casefold(image: &Image) -> anyhow::Result<(bool, Source)> {
    if let Some(value) = std::env::var_os("FIM_CASEFOLD") {
        return match value.to_str() {
            Some("1") => Ok((true, Source::Environment)),
            Some("0") => Ok((false, Source::Environment)),
            _ => bail!(
                "FIM_CASEFOLD must be 1 or 0, not {:?}",
                value.to_string_lossy()
            ),
        };
    }
    Ok(match image.reserved().casefold() {
        true => (true, Source::Image),
        false => (false, Source::Default),
    })
}

/// `fim-casefold on|off|show`.
fn run(args: &[OsString]) -> anyhow::Result<ExitCode> {
    let args = texts("fim-casefold", args)?;
    if let Some(on) = switch(&args) {
        return store_switch("fim-casefold", on, Reserved::set_casefold);
    }
    if !matches!(args.as_slice(), [word] if word == "show") {
        bail!("usage: fim-casefold on|off | fim-casefold show");
    }
    let (on, source) = effective_casefold(&self_image()?)?;
    let from = match source {
        Source::Environment => "FIM_CASEFOLD",
        Source::Image => "the image",
        Source::Default => "the default",
    };
    println!("{} (from {from})", if on { "on" } else { "off" });
    Ok(ExitCode::SUCCESS)
}
