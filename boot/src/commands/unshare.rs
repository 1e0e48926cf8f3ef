//! `fim-unshare`: more namespaces of the app's own, stored as FlatImage's bitmask.

use std::ffi::OsString;
use std::process::ExitCode;

use fim_reserved::{Reserved, Unshare};

use super::Command;
use super::flags::Flags;

pub const UNSHARE: Command = Command {
    name: "fim-unshare",
    synopsis: "fim-unshare add|del|set NAMESPACE... | fim-unshare list | fim-unshare clear",
    summary: "Give the app more namespaces of its own: user, ipc, pid, net, uts or cgroup.",
    help: "pid is always unshared; net is unshared unless the network permission is set, and\n\
           `net` here unshares it even then; user adds a user namespace where the app would\n\
           have none (when root runs the image).",
    run: Some(run),
};

/// `fim-unshare add|del|set NAMESPACE... | list | clear`.
fn run(args: &[OsString]) -> anyhow::Result<ExitCode> {
    Flags {
        command: "fim-unshare",
        usage: "fim-unshare add|del|set NAMESPACE[,NAMESPACE...]... | fim-unshare list | fim-unshare clear",
        all: None,
        parse: Unshare::parse_name,
        names: Unshare::names,
        get: Reserved::unshare,
        set: Reserved::set_unshare,
    }
    .run(args)
}
