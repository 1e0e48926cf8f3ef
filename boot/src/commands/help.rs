//! `fim-help [TOPIC]`: the list of commands with their one-sentence summaries, or one
//! command's whole help, both read from the command table.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::bail;

use super::{COMMANDS, Command, find};

pub const HELP: Command = Command {
    name: "fim-help",
    synopsis: "fim-help [TOPIC]",
    summary: "List the commands, or explain one of them.",
    help: "TOPIC is a command, with or without its fim- prefix (`fim-help perms`).",
    run: Some(run),
};

/// Width the summaries are wrapped to.
const WIDTH: usize = 80;
/// Indent of a summary under its synopsis.
const INDENT: &str = "      ";

fn run(args: &[OsString]) -> anyhow::Result<ExitCode> {
    match args {
        [] => print!("{}", overview()),
        [topic] => {
            let topic = topic.to_string_lossy();
            match find(&topic) {
                Some(command) => print!("{}", topic_text(command)),
                None => bail!("fim-help: no topic '{topic}'; run fim-help for the list"),
            }
        }
        _ => bail!("fim-help takes at most one topic"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Every command with its summary; the ones this version lacks last.
fn overview() -> String {
    let mut text =
        String::from("Usage: IMAGE fim-COMMAND [ARGS...]   or   IMAGE [ARGS...] (runs the app)\n");
    let (available, planned): (Vec<&Command>, Vec<&Command>) =
        COMMANDS.iter().copied().partition(|c| c.run.is_some());
    for (title, commands) in [
        ("Commands", available),
        ("Not available in this version yet", planned),
    ] {
        if commands.is_empty() {
            continue;
        }
        text.push_str(&format!("\n{title}:\n"));
        for command in commands {
            text.push_str(&format!("  {}\n", command.synopsis));
            for line in wrap(command.summary, WIDTH - INDENT.len()) {
                text.push_str(&format!("{INDENT}{line}\n"));
            }
        }
    }
    text.push_str("\nRun `IMAGE fim-help COMMAND` for details.\n");
    text
}

/// One command's whole help.
fn topic_text(command: &Command) -> String {
    let mut text = format!("Usage: IMAGE {}\n\n", command.synopsis);
    for line in wrap(command.summary, WIDTH) {
        text.push_str(&format!("{line}\n"));
    }
    text.push_str(command.help);
    text.push('\n');
    if command.run.is_none() {
        text.push_str(&format!(
            "\n{} is a FlatImage command that this version does not have yet; it answers\n\
             \"not available in this version yet\" (exit 125).\n",
            command.name
        ));
    }
    text
}

/// `text` broken between words into lines of at most `width` characters.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapping_breaks_between_words_and_keeps_every_word() {
        let text = "one two three four five";
        assert_eq!(wrap(text, 9), ["one two", "three", "four five"]);
        assert_eq!(wrap(text, 100), [text]);
        assert_eq!(wrap("", 10), Vec::<String>::new());
        assert_eq!(wrap("unbreakableword", 4), ["unbreakableword"]);
    }

    #[test]
    fn the_overview_lists_every_command_with_its_whole_summary() {
        let text = overview();
        let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
        for command in COMMANDS {
            assert!(text.contains(command.synopsis), "{}", command.name);
            assert!(flat.contains(command.summary), "{}", command.name);
        }
        assert!(text.find("Not available").unwrap() > text.find("fim-exec").unwrap());
    }

    #[test]
    fn a_topic_shows_the_synopsis_the_summary_and_the_help() {
        for command in COMMANDS {
            let text = topic_text(command);
            assert!(text.starts_with(&format!("Usage: IMAGE {}\n", command.synopsis)));
            assert!(text.contains(command.help), "{}", command.name);
            assert_eq!(text.contains("not available"), command.run.is_none());
        }
    }
}
