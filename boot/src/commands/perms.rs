//! `fim-perms`: what the app may reach on the host (FlatImage's 15 permission bits at
//! reserved offset 0). What each one opens is `crate::sandbox::perms`.

use std::ffi::OsString;
use std::process::ExitCode;

use fim_reserved::{Permissions, Reserved};

use super::Command;
use super::flags::Flags;

pub const PERMS: Command = Command {
    name: "fim-perms",
    synopsis: "fim-perms add|del|set PERMISSION... | fim-perms list | fim-perms clear",
    summary: "Choose what the app may reach on the host, everything else staying out of the sandbox.",
    help: "Names may be given as separate words or comma-separated; `all` is every one.\n\
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
    run: Some(run),
};

/// `fim-perms add|del|set PERM... | list | clear`.
fn run(args: &[OsString]) -> anyhow::Result<ExitCode> {
    Flags {
        command: "fim-perms",
        usage: "fim-perms add|del|set PERMISSION[,PERMISSION...]... | fim-perms list | fim-perms clear",
        all: Some(Permissions::all()),
        parse: Permissions::parse_name,
        names: Permissions::names,
        get: Reserved::permissions,
        set: Reserved::set_permissions,
    }
    .run(args)
}
