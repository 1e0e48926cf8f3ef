//! `fim-casefold`: whether the app sees file names case-insensitively (the casefold view,
//! `crate::view::casefold`), stored in the image (reserved byte 10, FlatImage's), and
//! which state a run uses.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::bail;
use fim_image::Image;

use super::Command;
use super::args::texts;
use super::image::{change_reserved, self_image};

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

/// Where the effective casefold state came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Environment,
    Image,
    Default,
}

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
    let on = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["on"] => true,
        ["off"] => false,
        ["show"] => {
            let (on, source) = effective_casefold(&self_image()?)?;
            let from = match source {
                Source::Environment => "FIM_CASEFOLD",
                Source::Image => "the image",
                Source::Default => "the default",
            };
            println!("{} (from {from})", if on { "on" } else { "off" });
            return Ok(ExitCode::SUCCESS);
        }
        _ => bail!("usage: fim-casefold on|off | fim-casefold show"),
    };
    change_reserved(&format!("fim-casefold {}", args[0]), move |r| {
        r.set_casefold(on);
        Ok(())
    })
}
