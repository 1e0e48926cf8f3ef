//! `fim-help [topic]`: the command reference, one topic per command.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::bail;

const TOPICS: &[(&str, &str, &str)] = &[
    (
        "fim-help",
        "fim-help [TOPIC]",
        "List the commands, or explain one of them.",
    ),
    (
        "fim-version",
        "fim-version [short|full|deps]",
        "Print the launcher version; `full` adds the image, layer and reserved-block format\n\
         versions; `deps` lists embedded tools.",
    ),
    (
        "fim-overlay",
        "fim-overlay set bwrap|overlayfs|unionfs | fim-overlay show",
        "Choose the backend of the writable overlay, stored in the image (reserved byte 9).\n\
         `show` prints the effective type: the FIM_OVERLAY environment variable beats the\n\
         stored value, which beats the default (bwrap). An unknown value is an error.\n\
         The change is written to a new file renamed over the image, so it is safe while\n\
         the image runs and if interrupted.",
    ),
];

pub fn help(args: &[OsString]) -> anyhow::Result<ExitCode> {
    match args {
        [] => {
            println!("Usage: IMAGE fim-COMMAND [ARGS...]   or   IMAGE [ARGS...] (runs the app)\n");
            println!("Commands:");
            for (_, usage, text) in TOPICS {
                let first = text.lines().next().unwrap_or_default();
                println!("  {usage}\n      {first}");
            }
            println!("\nRun `IMAGE fim-help COMMAND` for details.");
            println!("Not yet available: running the app (fim-exec, fim-root, the boot command)");
            println!("and the other FlatImage commands; they come in later versions.");
        }
        [topic] => {
            let topic = topic.to_string_lossy();
            let name = if topic.starts_with("fim-") {
                topic.to_string()
            } else {
                format!("fim-{topic}")
            };
            let Some((_, usage, text)) = TOPICS.iter().find(|(n, _, _)| *n == name) else {
                bail!("fim-help: no topic '{topic}'; run fim-help for the list");
            };
            println!("Usage: IMAGE {usage}\n\n{text}");
        }
        _ => bail!("fim-help takes at most one topic"),
    }
    Ok(ExitCode::SUCCESS)
}
