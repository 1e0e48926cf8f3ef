//! `fim-version`: the launcher's version, the format versions it reads and writes, and
//! the tools embedded in the image.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::bail;

use super::Command;
use super::image::self_image;
use crate::tools;

pub const VERSION: Command = Command {
    name: "fim-version",
    synopsis: "fim-version [short|full|deps]",
    summary: "Print the launcher version.",
    help: "`full` adds the image, layer and reserved-block format versions; `deps` lists the\n\
           programs a run uses (bwrap, fuse-overlayfs, unionfs), each with its version and\n\
           where it comes from: FIM_BWRAP, FIM_FUSE_OVERLAYFS or FIM_UNIONFS, else the copy\n\
           embedded in the image, else PATH.",
    run: Some(run),
};

fn run(args: &[OsString]) -> anyhow::Result<ExitCode> {
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
        Some("deps") => {
            for line in tools::describe(&self_image()?)? {
                println!("{line}");
            }
        }
        Some(other) => {
            bail!("fim-version: unknown argument '{other}' (expected short, full or deps)")
        }
    }
    Ok(ExitCode::SUCCESS)
}
