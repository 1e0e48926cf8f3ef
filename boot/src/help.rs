//! `fim-help [topic]`: the command reference, one topic per command.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::bail;

const TOPICS: &[(&str, &str, &str)] = &[
    (
        "fim-exec",
        "fim-exec PROGRAM [ARGS...]",
        "Run PROGRAM inside the image, as you. Without a fim- command, the image runs its\n\
         boot command (fim-boot) with your arguments appended. The app's exit status passes\n\
         through; 127 means the program is not in the image; the launcher's own failures\n\
         exit 125.\n\
         \n\
         The app sees the image as /, writable: changes are kept in the data directory\n\
         .<image name>.data/ beside the image (FIM_DIR_DATA overrides it); when the image's\n\
         directory is read-only, in $XDG_DATA_HOME/fim/<image name>-<hash of its path>/\n\
         (~/.local/share/fim/... without XDG_DATA_HOME). The image's\n\
         system directories (/usr, /etc, /bin, /sbin, /lib*, /boot) are read-only here;\n\
         use fim-root to change them. /tmp is private, /dev and /proc are the sandbox's own,\n\
         the network is off unless the image has the network permission, and the host's\n\
         environment is not passed except TERM, COLORTERM, NO_COLOR, LANG, LANGUAGE, LC_*,\n\
         TZ, HOME, USER and LOGNAME. The app gets FIM_IMAGE, FIM_DIR_IMAGE, FIM_DIR_DATA,\n\
         FIM_OVERLAY, FIM_VERSION and FIM_ROOT.\n\
         \n\
         Instances of one image run at the same time share one view: each sees what the\n\
         others write; after the last one ends normally the mounts stay 2 s so a relaunch\n\
         starts warm. Signals sent to the launcher (TERM, INT, HUP, QUIT, USR1, USR2) go to\n\
         the app; killing the launcher ends the app and everything it mounted.\n\
         FIM_DEBUG=1 logs each step with its duration; FIM_BWRAP names the bwrap to use.",
    ),
    (
        "fim-root",
        "fim-root PROGRAM [ARGS...]",
        "Run PROGRAM inside the image as uid 0, with the system directories writable, so\n\
         a package manager can install into the image's writable layer. FIM_ROOT=1 makes\n\
         every run do so. On the host, files it creates belong to you.",
    ),
    (
        "fim-boot",
        "fim-boot set PROGRAM [ARGS...] | fim-boot show | fim-boot clear",
        "Store the command the image runs when started without a fim- command (default\n\
         /bin/sh). Arguments given at run time are appended. `fim build --boot` sets it too.",
    ),
    (
        "fim-layer",
        "fim-layer commit [--to image|layer|file PATH] | create DIR OUT | add FILE | list | extract N DIR",
        "Manage the image's read-only layers.\n\
         commit: turn your changes (the data directory's upper directory) into a new layer:\n\
         appended to the image (default), saved as the next managed layer in\n\
         .<image name>.data/layers/ (--to layer), or written to a layer file (--to file\n\
         PATH, which leaves your changes where they are). Deleted files and replaced\n\
         directories stay deleted and replaced. Your changes are emptied only once the\n\
         layer is safely in place; interrupted at any moment, nothing is lost or committed\n\
         twice. Files copied up but left unchanged are not stored again.\n\
         create: write a layer file from a directory. add: append a layer file to the\n\
         image after checking every byte of it. list: the stack, bottom first, with origin,\n\
         size, entry count and digest. extract: one layer as stored (deletions as .wh.\n\
         files) into a new directory.\n\
         \n\
         The stack, bottom first: the image's layers, the managed layers, then the layer\n\
         files and directories of layer files named by FIM_LAYERS (colon-separated, in that\n\
         order). In a directory, files are ordered by the number their name starts with\n\
         (2.layer before 10.layer). commit and add refuse while instances of the image run\n\
         (saying how many); instances started meanwhile wait for them to finish.",
    ),
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
         bwrap: the kernel's overlayfs (fastest). overlayfs: fuse-overlayfs from the host's\n\
         PATH (package fuse-overlayfs). unionfs: `unionfs -o cow` (package unionfs-fuse; no\n\
         xattrs). If the kernel refuses its overlay, the installed FUSE backend takes over\n\
         and one line says so. All three share the upper directory in the data directory:\n\
         switching keeps every change, deleted files included. Instances running together\n\
         share one backend: a new choice applies once they have all exited.\n\
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
