//! The `fim-*` commands, one file each, and the one table that routes `argv[1]` to them.
//!
//! Each command file declares a [`Command`]: its name, synopsis, one-sentence summary,
//! full help and the function that runs it, next to its parsing and its work. The table
//! below is the single source for dispatch, `fim-help` and `fim-help TOPIC`. Anything
//! that is not a `fim-*` command runs the image's boot command with the arguments
//! appended (`exec::boot`), untouched: they belong to the app.
//!
//! The grammar is parsed by hand rather than with clap: every command is a verb and a
//! few positional words (`fim-bind add ro SRC DST`), the app's own arguments must pass
//! through without any option parsing, and the launcher heads every image, so what it
//! links is paid for in each file a user downloads.

mod args;
mod bind;
mod boot;
mod casefold;
mod desktop;
mod env;
mod ephemeral;
mod exec;
mod flags;
mod help;
mod image;
mod instance;
mod layer;
mod notify;
mod overlay;
mod perms;
mod planned;
mod unshare;
mod version;

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::bail;

/// What runs a command, given its arguments after the name.
pub type Run = fn(&[OsString]) -> anyhow::Result<ExitCode>;

/// One `fim-*` command: what `fim-help` says of it and what runs it.
pub struct Command {
    /// `fim-...`, as typed.
    pub name: &'static str,
    /// The usage line, name included.
    pub synopsis: &'static str,
    /// One sentence: what the command does, for the `fim-help` list.
    pub summary: &'static str,
    /// The rest of `fim-help NAME`: details, paragraphs of lines that fit a terminal.
    pub help: &'static str,
    /// Runs the command on its arguments (after the name); `None` for a FlatImage command
    /// that this version does not have yet.
    pub run: Option<Run>,
}

/// Every command, in the order `fim-help` lists them.
pub const COMMANDS: &[&Command] = &[
    &exec::EXEC,
    &exec::ROOT,
    &boot::BOOT,
    &layer::LAYER,
    &perms::PERMS,
    &env::ENV,
    &bind::BIND,
    &unshare::UNSHARE,
    &instance::INSTANCE,
    &notify::NOTIFY,
    &overlay::OVERLAY,
    &ephemeral::EPHEMERAL,
    &help::HELP,
    &version::VERSION,
    &casefold::CASEFOLD,
    &desktop::DESKTOP,
    &planned::REMOTE,
    &planned::RECIPE,
];

/// The command named `name`, with or without its `fim-` prefix.
pub fn find(name: &str) -> Option<&'static Command> {
    let name = name.strip_prefix("fim-").unwrap_or(name);
    COMMANDS
        .iter()
        .copied()
        .find(|c| c.name.strip_prefix("fim-") == Some(name))
}

/// Routes `argv[1..]`: a `fim-*` command, or the boot command with these arguments.
pub fn dispatch(args: &[OsString]) -> anyhow::Result<ExitCode> {
    let first = args.first().map(|a| a.to_string_lossy().into_owned());
    let rest = args.get(1..).unwrap_or_default();
    match first {
        Some(name) if name.starts_with("fim-") => match find(&name) {
            Some(Command { run: Some(run), .. }) => run(rest),
            Some(_) => bail!("{name} is not available in this version yet (see fim-help)"),
            None => bail!("unknown command '{name}': run fim-help for the list of commands"),
        },
        _ => exec::boot(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_unique_and_found_with_or_without_its_prefix() {
        for command in COMMANDS {
            assert!(command.name.starts_with("fim-"), "{}", command.name);
            let bare = &command.name["fim-".len()..];
            assert_eq!(find(command.name).map(|c| c.name), Some(command.name));
            assert_eq!(find(bare).map(|c| c.name), Some(command.name));
            let same = COMMANDS.iter().filter(|c| c.name == command.name).count();
            assert_eq!(same, 1, "{} is in the table twice", command.name);
        }
        assert!(find("fim-nope").is_none());
        assert!(find("").is_none());
    }

    #[test]
    fn every_synopsis_starts_with_its_command() {
        for command in COMMANDS {
            assert!(
                command.synopsis.starts_with(command.name),
                "{}: {}",
                command.name,
                command.synopsis
            );
        }
    }

    #[test]
    fn every_summary_is_one_whole_sentence() {
        for command in COMMANDS {
            let s = command.summary;
            assert!(
                s.starts_with(|c: char| c.is_ascii_uppercase()),
                "{}: {s}",
                command.name
            );
            assert!(s.ends_with('.'), "{}: {s}", command.name);
            assert!(!s.contains('\n'), "{}: {s}", command.name);
            let inner = &s[..s.len() - 1];
            assert!(
                !inner.contains(". ") && !inner.contains("; "),
                "{}: one sentence: {s}",
                command.name
            );
        }
    }

    #[test]
    fn the_commands_flatimage_users_know_are_all_in_the_table() {
        for name in [
            "fim-exec",
            "fim-root",
            "fim-boot",
            "fim-help",
            "fim-version",
            "fim-overlay",
            "fim-perms",
            "fim-env",
            "fim-bind",
            "fim-unshare",
            "fim-instance",
            "fim-notify",
            "fim-layer",
            "fim-casefold",
            "fim-desktop",
            "fim-remote",
            "fim-recipe",
        ] {
            assert!(find(name).is_some(), "{name} is not in the table");
        }
    }

    #[test]
    fn help_fits_a_terminal() {
        for command in COMMANDS {
            for line in std::iter::once(command.synopsis).chain(command.help.lines()) {
                assert!(line.chars().count() <= 88, "{}: {line:?}", command.name);
            }
        }
    }
}
