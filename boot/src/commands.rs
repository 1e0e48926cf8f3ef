//! Dispatch of `argv[1]`: the `fim-*` commands. Anything else runs the boot command with
//! the arguments appended.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;

use anyhow::{Context, bail};
use fim_image::{Image, ImageError, Updated, update_reserved};
use fim_reserved::{BootCommand, Overlay};

use crate::debug::{self, Step};
use crate::places::Places;
use crate::run::{self, Launch};
use crate::tools;
use crate::{help, instance, settings};
use crate::{layer_cmd, oci_boot};

/// FlatImage commands that later versions of this launcher implement.
pub const PLANNED: &[&str] = &["fim-casefold", "fim-desktop", "fim-remote", "fim-recipe"];

pub fn dispatch(args: &[OsString]) -> anyhow::Result<ExitCode> {
    let first = args.first().map(|a| a.to_string_lossy().into_owned());
    let rest = args.get(1..).unwrap_or_default();
    match first.as_deref() {
        Some("fim-version") => version(rest),
        Some("fim-help") => help::help(rest),
        Some("fim-overlay") => overlay(rest),
        Some("fim-boot") => boot(rest),
        Some("fim-exec") => launch("fim-exec", rest, root_from_env()),
        Some("fim-root") => launch("fim-root", rest, true),
        Some("fim-layer") => layer_cmd::run(&self_path()?, rest),
        Some("fim-perms") => settings::perms(rest),
        Some("fim-env") => settings::env(rest),
        Some("fim-bind") => settings::bind(rest),
        Some("fim-unshare") => settings::unshare(rest),
        Some("fim-notify") => settings::notify(rest),
        Some("fim-instance") => instance(rest),
        Some(cmd) if PLANNED.contains(&cmd) => {
            bail!("{cmd} is not available in this version yet (see fim-help)")
        }
        Some(cmd) if cmd.starts_with("fim-") => {
            bail!("unknown command '{cmd}': run fim-help for the list of commands")
        }
        _ => {
            let image = self_image()?;
            let boot = image.reserved().boot().unwrap_or_else(default_boot);
            let command = oci_boot::boot_argv(&boot, args);
            run_in(image, command, root_from_env())
        }
    }
}

/// The boot command of an image that has none.
fn default_boot() -> BootCommand {
    BootCommand {
        program: "/bin/sh".into(),
        ..BootCommand::default()
    }
}

/// `FIM_ROOT=1` runs as `fim-root` would, as in FlatImage.
fn root_from_env() -> bool {
    std::env::var_os("FIM_ROOT").is_some_and(|v| v == "1")
}

/// `fim-exec PROG ARGS...` and `fim-root PROG ARGS...`.
fn launch(name: &str, args: &[OsString], as_root: bool) -> anyhow::Result<ExitCode> {
    if args.is_empty() {
        bail!("usage: {name} PROGRAM [ARGS...]");
    }
    let image = self_image()?;
    run_in(image, args.to_vec(), as_root)
}

fn run_in(image: Image, command: Vec<OsString>, as_root: bool) -> anyhow::Result<ExitCode> {
    let (overlay, source) = effective_overlay(&image)?;
    debug::log(format!("overlay {overlay} (from {source:?})"));
    run::run(image, overlay, Launch { command, as_root })
}

/// `fim-instance list | exec ID PROGRAM [ARGS...]`.
fn instance(args: &[OsString]) -> anyhow::Result<ExitCode> {
    let verb = args.first().map(|a| a.to_string_lossy().into_owned());
    let listing = || -> anyhow::Result<Vec<(u32, instance::Record)>> {
        let image = self_image()?;
        let uid = nix::unistd::getuid().as_raw();
        Ok(Places::existing(image.path(), uid)?
            .map(|places| instance::list(&places.instances))
            .unwrap_or_default())
    };
    match verb.as_deref() {
        Some("list") if args.len() == 1 => {
            for (id, record) in listing()? {
                let command: Vec<String> = record.command.iter().map(|w| quoted(w)).collect();
                println!(
                    "{id} {} {} {}",
                    record.pid,
                    instance::utc(record.started),
                    command.join(" ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Some("exec") if args.len() >= 3 => {
            let wanted = args[1].to_string_lossy();
            let Some((_, record)) = listing()?
                .into_iter()
                .find(|(id, _)| id.to_string() == wanted)
            else {
                bail!("fim-instance exec: no running instance '{wanted}' (see fim-instance list)");
            };
            instance::exec(&record, &args[2..])
        }
        _ => bail!("usage: fim-instance list | fim-instance exec ID PROGRAM [ARGS...]"),
    }
}

/// `fim-boot set PROG ARGS... | show | clear`.
fn boot(args: &[OsString]) -> anyhow::Result<ExitCode> {
    let usage = "usage: fim-boot set PROGRAM [ARGS...] | fim-boot show | fim-boot clear";
    let text = |a: &OsString| {
        a.to_str()
            .map(str::to_string)
            .with_context(|| format!("fim-boot: {a:?} is not valid UTF-8"))
    };
    let verb = args.first().map(|a| a.to_string_lossy().into_owned());
    match verb.as_deref() {
        Some("set") if args.len() >= 2 => {
            let program = text(&args[1])?;
            let rest = args[2..]
                .iter()
                .map(text)
                .collect::<anyhow::Result<Vec<_>>>()?;
            let command =
                BootCommand::new(program, rest).map_err(|e| anyhow::anyhow!("fim-boot: {e}"))?;
            change_reserved("fim-boot set", |r| Ok(r.set_boot(Some(&command))?))
        }
        Some("clear") if args.len() == 1 => {
            change_reserved("fim-boot clear", |r| Ok(r.set_boot(None)?))
        }
        Some("show") if args.len() == 1 => {
            let image = self_image()?;
            let boot = image.reserved().boot().unwrap_or_else(default_boot);
            let words: Vec<String> = oci_boot::boot_argv(&boot, &[])
                .iter()
                .map(|w| quoted(&w.to_string_lossy()))
                .collect();
            println!("{}", words.join(" "));
            Ok(ExitCode::SUCCESS)
        }
        _ => bail!("{usage}"),
    }
}

/// A word as a POSIX shell would need it written to mean itself.
pub fn quoted(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@%".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
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
        Some("deps") => {
            let lines = tools::describe(&self_image()?)?;
            if lines.is_empty() {
                println!("embedded tools: none (the host's bwrap is used)");
            }
            for line in lines {
                println!("{line}");
            }
        }
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

#[cfg(test)]
mod tests {
    use super::quoted;

    #[test]
    fn plain_words_are_shown_as_they_are() {
        assert_eq!(quoted("/bin/sh"), "/bin/sh");
        assert_eq!(quoted("--level=3"), "--level=3");
    }

    #[test]
    fn words_a_shell_would_split_or_expand_are_quoted() {
        assert_eq!(quoted("echo $1"), "'echo $1'");
        assert_eq!(quoted(""), "''");
        assert_eq!(quoted("*"), "'*'");
    }

    #[test]
    fn a_single_quote_survives_quoting() {
        assert_eq!(quoted("it's"), "'it'\\''s'");
    }
}
