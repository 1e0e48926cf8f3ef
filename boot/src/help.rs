//! `fim-help [topic]`: the command reference, one topic per command.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::bail;

use crate::commands::PLANNED;

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
         use fim-root to change them. The sandbox denies by default: /tmp and /dev/shm are\n\
         private, /dev holds only null, zero, random, tty and the like, /proc is the\n\
         sandbox's own, there is no /sys, and the host's home, network, display, sound,\n\
         buses and devices are not there until fim-perms grants them. fim-bind adds host\n\
         paths, fim-unshare more namespaces.\n\
         \n\
         The host's environment is not passed, except TERM, COLORTERM, NO_COLOR, LANG,\n\
         LANGUAGE, LC_*, TZ and FIM_DEBUG; the app gets PATH (the image's), HOME, USER,\n\
         LOGNAME and SHELL (see fim-env for UID, GID, USER, HOME, SHELL), the variables of\n\
         what the permissions grant (DISPLAY, WAYLAND_DISPLAY, XDG_RUNTIME_DIR,\n\
         PULSE_SERVER, DBUS_SESSION_BUS_ADDRESS...), the image's fim-env variables, and\n\
         FIM_IMAGE, FIM_DIR_IMAGE, FIM_DIR_DATA, FIM_OVERLAY, FIM_VERSION and FIM_ROOT.\n\
         /etc/passwd and /etc/group hold your user, so id, whoami and ~ work.\n\
         \n\
         Instances of one image run at the same time share one view: each sees what the\n\
         others write (fim-instance lists them); after the last one ends normally the mounts\n\
         stay 2 s so a relaunch starts warm. Signals sent to the launcher (TERM, INT, HUP,\n\
         QUIT, USR1, USR2) go to the app; killing the launcher ends the app and everything\n\
         it mounted. FIM_DEBUG=1 logs each step with its duration (and what a permission or\n\
         bind skipped); FIM_BWRAP names the bwrap to use.",
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
        "fim-layer commit [--to TARGET] | create DIR OUT | add FILE | list | extract N DIR",
        "Manage the image's read-only layers. TARGET: image, layer, or file PATH.\n\
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
        "fim-perms",
        "fim-perms add|del|set PERMISSION... | fim-perms list | fim-perms clear",
        "Choose what the app may reach on the host; everything else is not in the sandbox.\n\
         Names may be given as separate words or comma-separated; `all` is every one.\n\
         home         your home directory (HOME), read-write\n\
         media        /media, /run/media and /mnt, read-write\n\
         audio        PulseAudio and PipeWire sockets, /dev/snd, /dev/dsp, /proc/asound\n\
         wayland      the Wayland socket (WAYLAND_DISPLAY, XDG_RUNTIME_DIR)\n\
         xorg         the X11 socket of DISPLAY in /tmp/.X11-unix and XAUTHORITY\n\
         dbus_user    the session bus (DBUS_SESSION_BUS_ADDRESS)\n\
         dbus_system  the system bus (/run/dbus/system_bus_socket)\n\
         udev         /run/udev, read-only\n\
         usb          /dev/bus/usb\n\
         input        /dev/input and /dev/uinput\n\
         gpu          /dev/dri, /dev/nvidia*, /sys/dev and /sys/devices (read-only)\n\
         network      the host's network and its /etc/resolv.conf, hosts, nsswitch.conf,\n\
         \x20            host.conf; without it the app has a loopback of its own only\n\
         dev          the host's whole /dev\n\
         shm          the host's /dev/shm (otherwise a private one)\n\
         optical      /dev/sr* and /dev/sg*\n\
         Sockets of XDG_RUNTIME_DIR are put in a private directory at the same path, so the\n\
         app sees the granted ones only; /tmp stays private, with just the X11 socket.\n\
         What the host lacks is skipped (FIM_DEBUG=1 says so). The bits are FlatImage's\n\
         (reserved offset 0); a change applies from the next run.",
    ),
    (
        "fim-env",
        "fim-env add|set KEY=VALUE... | fim-env del KEY... | fim-env list | fim-env clear",
        "Store variables for the app. `add` adds or replaces, `set` replaces them all.\n\
         A value may name variables as ${NAME} or $NAME: an earlier fim-env variable, else\n\
         one the launcher sets (PATH, FIM_DIR_DATA...), else the host's; an unknown one is\n\
         empty. That is the only expansion: values never reach a shell, so $(...),\n\
         backticks, quotes and globs stay as they are. Expansion happens at each run.\n\
         UID, GID, USER, HOME and SHELL set who the app is (uid, gid, name, home, shell,\n\
         as written in the sandbox's /etc/passwd and /etc/group; HOME is created in the\n\
         image if missing); by default you, with your HOME. fim-root is always root.",
    ),
    (
        "fim-bind",
        "fim-bind add ro|rw|dev SRC DST | fim-bind del INDEX | fim-bind list",
        "Mount host path SRC at DST inside the sandbox: ro read-only, rw read-write, dev\n\
         read-write with device nodes usable. SRC and DST may hold ${NAME} (SRC from the\n\
         host's environment, DST from the app's, then the host's), expanded as fim-env does.\n\
         A SRC missing at run time is skipped (FIM_DEBUG=1 says so). `list` shows each bind\n\
         with its INDEX (from 0) for `del`. Binds are mounted after the permissions' ones.",
    ),
    (
        "fim-unshare",
        "fim-unshare add|del|set NAMESPACE... | fim-unshare list | fim-unshare clear",
        "Give the app more namespaces of its own: user, ipc, pid, net, uts, cgroup. pid is\n\
         always unshared; net is unshared unless the network permission is set, and `net`\n\
         here unshares it even then; user adds a user namespace where the app would have\n\
         none (when root runs the image).",
    ),
    (
        "fim-instance",
        "fim-instance list | fim-instance exec ID PROGRAM [ARGS...]",
        "`list` shows the running instances of this image: ID, launcher pid, start time\n\
         (UTC) and command. `exec` runs PROGRAM inside instance ID: in its namespaces, with\n\
         its root, working directory and environment, so it sees what that instance sees,\n\
         its private /tmp included. The exit status is PROGRAM's.",
    ),
    (
        "fim-notify",
        "fim-notify on|off",
        "Show a desktop notification (notify-send, package libnotify-bin) when the app\n\
         starts. Nothing happens, silently, without a session bus or notify-send.",
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
            println!("Not available in this version yet: {}.", PLANNED.join(", "));
        }
        [topic] => {
            let topic = topic.to_string_lossy();
            let name = if topic.starts_with("fim-") {
                topic.to_string()
            } else {
                format!("fim-{topic}")
            };
            match TOPICS.iter().find(|(n, _, _)| *n == name) {
                Some((_, usage, text)) => println!("Usage: IMAGE {usage}\n\n{text}"),
                None if PLANNED.contains(&name.as_str()) => println!(
                    "{name}: a FlatImage command that this version does not have yet; it\n\
                     answers \"not available in this version yet\" (exit 125)."
                ),
                None => bail!("fim-help: no topic '{topic}'; run fim-help for the list"),
            }
        }
        _ => bail!("fim-help takes at most one topic"),
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_has_a_topic_and_planned_ones_do_not() {
        let names: Vec<&str> = TOPICS.iter().map(|(n, _, _)| *n).collect();
        for command in [
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
        ] {
            assert!(names.contains(&command), "{command} has no topic");
        }
        assert!(PLANNED.iter().all(|p| !names.contains(p)));
    }

    #[test]
    fn topics_fit_a_terminal() {
        for (name, usage, text) in TOPICS {
            for line in std::iter::once(*usage).chain(text.lines()) {
                assert!(line.chars().count() <= 88, "{name}: {line:?}");
            }
        }
    }
}
