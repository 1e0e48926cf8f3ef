//! `fim`: builds images from a root filesystem, and inspects, verifies, extracts and
//! mounts them.

mod build;
mod inspect;
mod mount;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Exit status for every failure of `fim` itself, as the launcher uses it.
const FAILURE: u8 = 125;

#[derive(Parser)]
#[command(
    name = "fim",
    version,
    about = "Pack a root filesystem into one self-contained executable image"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build an image from a root filesystem (a directory or a tarball) or a Docker/OCI image.
    Build(Box<build::BuildArgs>),
    /// Show where everything is in an image and every config field.
    Inspect {
        image: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check every checksum and digest of an image; exit 0 only when all hold.
    Verify { image: PathBuf },
    /// Write the image's files into a directory (the merged view of all layers by default).
    Extract {
        image: PathBuf,
        /// Destination directory; created, or must be empty.
        dir: PathBuf,
        /// Extract only layer N as stored (whiteouts become OCI `.wh.` markers).
        #[arg(long, value_name = "N")]
        layer: Option<usize>,
    },
    /// Mount the merged layers read-only at DIR in the foreground; Ctrl-C unmounts.
    Mount {
        image: PathBuf,
        dir: PathBuf,
        /// Let other users see the mount (needs user_allow_other in /etc/fuse.conf
        /// unless run as root).
        #[arg(long)]
        allow_other: bool,
    },
}

/// Deletion markers to honour in build inputs above the first.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Whiteouts {
    /// Take every entry literally.
    None,
    /// `.wh.NAME` hides NAME; `.wh..wh..opq` makes its directory opaque.
    Oci,
    /// 0/0 character devices hide; `*.overlay.opaque=y` xattrs make directories opaque.
    Overlay,
}

fn main() -> ExitCode {
    // A reader that stops early (`fim inspect IMAGE | head`) ends us quietly, as it ends
    // any Unix tool, instead of a panic on the next print. Nothing here writes to a pipe
    // it must survive losing.
    // SAFETY: restoring the default disposition of a signal installs no handler.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { FAILURE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let result = match cli.command {
        Command::Build(args) => build::run(*args),
        Command::Inspect { image, json } => inspect::inspect(&image, json),
        Command::Verify { image } => inspect::verify(&image),
        Command::Extract { image, dir, layer } => inspect::extract(&image, &dir, layer),
        Command::Mount {
            image,
            dir,
            allow_other,
        } => mount::run(&image, &dir, allow_other),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fim: {e:#}");
            ExitCode::from(FAILURE)
        }
    }
}
