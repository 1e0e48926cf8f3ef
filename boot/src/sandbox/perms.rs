//! What each of FlatImage's 15 permissions opens: the host resources it needs (binds,
//! sockets, devices) and the variables that point the app at them. A permission that is
//! off adds nothing, so its resource is simply not in the sandbox; a resource the host
//! lacks is skipped with a debug line. Pure over [`Host`], so tested without a desktop.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use fim_reserved::{BindKind, Permissions};

use super::bwrap::Mount;
use super::environment::Env;
use crate::debug;

/// What the permissions look at on the host.
pub trait Host {
    /// A variable of the host's environment.
    fn var(&self, name: &str) -> Option<OsString>;
    /// Whether `path` exists (following symlinks).
    fn exists(&self, path: &Path) -> bool;
    /// Names in directory `dir`, empty when it cannot be read.
    fn entries(&self, dir: &Path) -> Vec<OsString>;
}

/// The real host, with the environment the launcher was started with.
pub struct RealHost<'a>(pub &'a [(OsString, OsString)]);

impl Host for RealHost<'_> {
    fn var(&self, name: &str) -> Option<OsString> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn entries(&self, dir: &Path) -> Vec<OsString> {
        std::fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default()
    }
}

/// What the sandbox gets from the permissions.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Grants {
    /// The host's network namespace (`network`); otherwise loopback only.
    pub network: bool,
    /// The host's whole `/dev` (`dev`).
    pub host_dev: bool,
    /// The host's `/dev/shm` (`shm`).
    pub host_shm: bool,
    /// Binds and private directories, in order.
    pub mounts: Vec<Mount>,
    /// Variables that tell the app where the granted resources are.
    pub env: Env,
}

/// The host's X11 sockets, one per display.
const X11_SOCKETS: &str = "/tmp/.X11-unix";
/// Where removable media and manual mounts live.
const MEDIA: [&str; 3] = ["/media", "/run/media", "/mnt"];
/// Files that tell a program how to resolve names, bound with the network.
const NETWORK_FILES: [&str; 4] = [
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
];

pub fn grants(perms: Permissions, host: &impl Host) -> Grants {
    let mut g = Granting {
        host,
        runtime: host
            .var("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute() && p != Path::new("/")),
        runtime_private: false,
        grants: Grants {
            network: perms.contains(Permissions::network),
            host_dev: perms.contains(Permissions::dev),
            host_shm: perms.contains(Permissions::shm),
            ..Grants::default()
        },
    };
    for (name, flag) in perms.iter_names() {
        match flag {
            Permissions::home => g.home(),
            Permissions::media => MEDIA.iter().for_each(|m| g.bind(BindKind::Rw, m, name)),
            Permissions::audio => g.audio(),
            Permissions::wayland => g.wayland(),
            Permissions::xorg => g.xorg(),
            Permissions::dbus_user => g.dbus_user(),
            Permissions::dbus_system => g.dbus_system(),
            Permissions::udev => g.bind(BindKind::Ro, "/run/udev", name),
            Permissions::usb => g.device("/dev/bus/usb", name),
            Permissions::input => {
                g.device("/dev/input", name);
                g.device("/dev/uinput", name);
            }
            Permissions::gpu => {
                g.device("/dev/dri", name);
                g.devices_named(|n| n.starts_with(b"nvidia"), name);
                // Drivers find their device's PCI details through sysfs.
                g.bind(BindKind::Ro, "/sys/dev", name);
                g.bind(BindKind::Ro, "/sys/devices", name);
            }
            Permissions::optical => {
                g.devices_named(|n| numbered(n, b"sr") || numbered(n, b"sg"), name)
            }
            Permissions::network => NETWORK_FILES
                .iter()
                .for_each(|f| g.bind(BindKind::Ro, f, name)),
            // Whole namespaces or directories, handled by the sandbox itself.
            _ => {}
        }
    }
    g.grants
}

/// `sr0`, `sg12`: `prefix` followed by digits only.
fn numbered(name: &[u8], prefix: &[u8]) -> bool {
    name.strip_prefix(prefix)
        .is_some_and(|rest| !rest.is_empty() && rest.iter().all(u8::is_ascii_digit))
}

struct Granting<'h, H: Host> {
    host: &'h H,
    /// The host's `XDG_RUNTIME_DIR`, where the session's sockets live.
    runtime: Option<PathBuf>,
    /// Whether a private runtime directory was made to hold the granted sockets.
    runtime_private: bool,
    grants: Grants,
}

impl<H: Host> Granting<'_, H> {
    /// Binds host `path` at the same place inside, if the host has it.
    fn bind(&mut self, kind: BindKind, path: impl AsRef<Path>, why: &str) {
        let path = path.as_ref();
        if !self.host.exists(path) {
            debug::log(format!(
                "permission {why}: {} is not on this host; skipped",
                path.display()
            ));
            return;
        }
        self.grants.mounts.push(Mount::Bind {
            kind,
            src: path.to_path_buf(),
            dst: path.to_path_buf(),
        });
    }

    /// A device or device directory, unless the whole of `/dev` is there already.
    fn device(&mut self, path: &str, why: &str) {
        if !self.grants.host_dev {
            self.bind(BindKind::Dev, path, why);
        }
    }

    /// Every device in `/dev` whose name `matches`.
    fn devices_named(&mut self, matches: impl Fn(&[u8]) -> bool, why: &str) {
        let mut names: Vec<OsString> = self
            .host
            .entries(Path::new("/dev"))
            .into_iter()
            .filter(|n| matches(n.as_bytes()))
            .collect();
        names.sort();
        for name in names {
            self.device(&format!("/dev/{}", name.to_string_lossy()), why);
        }
    }

    fn set(&mut self, name: &str, value: impl Into<OsString>) {
        self.grants.env.set(name, value);
    }

    /// A socket of the host's session. One inside the host's runtime directory goes into
    /// a private runtime directory at the same path, so the app sees that socket and no
    /// other. Returns whether the host has it.
    fn socket(&mut self, path: &Path, why: &str) -> bool {
        if !self.host.exists(path) {
            debug::log(format!(
                "permission {why}: no socket {} on this host; skipped",
                path.display()
            ));
            return false;
        }
        if let Some(runtime) = self.runtime.clone().filter(|r| path.starts_with(r))
            && !self.runtime_private
        {
            self.runtime_private = true;
            self.grants.mounts.push(Mount::Private {
                dst: runtime.clone(),
            });
            self.set("XDG_RUNTIME_DIR", runtime);
        }
        self.bind(BindKind::Rw, path, why);
        true
    }

    /// `name` resolved in the host's runtime directory, unless absolute.
    fn in_runtime(&self, name: &OsStr) -> Option<PathBuf> {
        let path = Path::new(name);
        if path.is_absolute() {
            return Some(path.to_path_buf());
        }
        self.runtime.as_ref().map(|r| r.join(path))
    }

    fn home(&mut self) {
        match self.host.var("HOME").map(PathBuf::from) {
            Some(home) if home.is_absolute() && home != Path::new("/") => {
                self.bind(BindKind::Rw, home, "home")
            }
            _ => debug::log("permission home: HOME is not set to a directory; skipped"),
        }
    }

    fn audio(&mut self) {
        let pulse = match self.host.var("PULSE_SERVER") {
            Some(server) => server
                .as_bytes()
                .strip_prefix(b"unix:")
                .map(|p| PathBuf::from(OsStr::from_bytes(p))),
            None => self.in_runtime(OsStr::new("pulse/native")),
        };
        if let Some(pulse) = pulse
            && self.socket(&pulse, "audio")
        {
            let mut server = OsString::from("unix:");
            server.push(&pulse);
            self.set("PULSE_SERVER", server);
        }
        if let Some(pipewire) = self.in_runtime(OsStr::new("pipewire-0")) {
            self.socket(&pipewire, "audio");
        }
        self.device("/dev/snd", "audio");
        self.device("/dev/dsp", "audio");
        self.bind(BindKind::Ro, "/proc/asound", "audio");
    }

    fn wayland(&mut self) {
        let display = self
            .host
            .var("WAYLAND_DISPLAY")
            .unwrap_or_else(|| "wayland-0".into());
        if let Some(socket) = self.in_runtime(&display)
            && self.socket(&socket, "wayland")
        {
            self.set("WAYLAND_DISPLAY", display);
        }
    }

    fn xorg(&mut self) {
        let Some(display) = self.host.var("DISPLAY") else {
            debug::log("permission xorg: DISPLAY is not set; skipped");
            return;
        };
        // A local display, `:N`, `:N.S` or `unix:N`, is the socket XN; any other is
        // reached over the network, which only the network permission opens.
        if let Some(number) = x11_display_number(&display.to_string_lossy()) {
            self.bind(
                BindKind::Rw,
                Path::new(X11_SOCKETS).join(format!("X{number}")),
                "xorg",
            );
        }
        self.set("DISPLAY", display);
        let authority = self.host.var("XAUTHORITY").map(PathBuf::from).or_else(|| {
            self.host
                .var("HOME")
                .map(|home| Path::new(&home).join(".Xauthority"))
        });
        if let Some(authority) = authority.filter(|a| a.is_absolute() && self.host.exists(a)) {
            self.bind(BindKind::Ro, &authority, "xorg");
            self.set("XAUTHORITY", authority);
        }
    }

    fn dbus_user(&mut self) {
        let address = self.host.var("DBUS_SESSION_BUS_ADDRESS");
        let socket = match &address {
            Some(address) => dbus_socket(&address.to_string_lossy()),
            None => self.in_runtime(OsStr::new("bus")),
        };
        let reachable = socket.is_some_and(|s| self.socket(&s, "dbus_user"));
        match address {
            // An abstract socket, or one on another machine: the address is all there is.
            Some(address) => self.set("DBUS_SESSION_BUS_ADDRESS", address),
            None if reachable => {
                let mut address = OsString::from("unix:path=");
                address.push(self.in_runtime(OsStr::new("bus")).unwrap_or_default());
                self.set("DBUS_SESSION_BUS_ADDRESS", address);
            }
            None => {}
        }
    }

    fn dbus_system(&mut self) {
        let address = self.host.var("DBUS_SYSTEM_BUS_ADDRESS");
        let socket = address
            .as_ref()
            .and_then(|a| dbus_socket(&a.to_string_lossy()))
            .unwrap_or_else(|| PathBuf::from("/run/dbus/system_bus_socket"));
        self.socket(&socket, "dbus_system");
        if let Some(address) = address {
            self.set("DBUS_SYSTEM_BUS_ADDRESS", address);
        }
    }
}

/// The display number of a local X11 display name (`:0`, `:1.0`, `unix:2`).
fn x11_display_number(display: &str) -> Option<u32> {
    let rest = display
        .strip_prefix("unix:")
        .or_else(|| display.strip_prefix(':'))?;
    let number = rest.split('.').next()?;
    number.parse().ok()
}

/// The socket path of the first `unix:path=...` address of a D-Bus address list.
fn dbus_socket(addresses: &str) -> Option<PathBuf> {
    addresses.split(';').find_map(|address| {
        address
            .strip_prefix("unix:")?
            .split(',')
            .find_map(|kv| kv.strip_prefix("path="))
            .map(PathBuf::from)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// A host with these variables and these existing paths.
    struct Fake {
        vars: Vec<(&'static str, &'static str)>,
        paths: BTreeSet<&'static str>,
    }

    impl Host for Fake {
        fn var(&self, name: &str) -> Option<OsString> {
            self.vars
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.into())
        }
        fn exists(&self, path: &Path) -> bool {
            self.paths.contains(path.to_str().unwrap_or_default())
        }
        fn entries(&self, dir: &Path) -> Vec<OsString> {
            let prefix = format!("{}/", dir.display());
            self.paths
                .iter()
                .filter_map(|p| p.strip_prefix(&prefix))
                .filter(|rest| !rest.contains('/'))
                .map(OsString::from)
                .collect()
        }
    }

    fn desktop() -> Fake {
        Fake {
            vars: vec![
                ("HOME", "/home/u"),
                ("XDG_RUNTIME_DIR", "/run/user/1000"),
                ("WAYLAND_DISPLAY", "wayland-1"),
                ("DISPLAY", ":3.0"),
                ("XAUTHORITY", "/run/user/1000/xauth"),
                (
                    "DBUS_SESSION_BUS_ADDRESS",
                    "unix:path=/run/user/1000/bus,guid=ab",
                ),
            ],
            paths: [
                "/home/u",
                "/mnt",
                "/media",
                "/run/user/1000/pulse/native",
                "/run/user/1000/pipewire-0",
                "/run/user/1000/wayland-1",
                "/run/user/1000/xauth",
                "/run/user/1000/bus",
                "/run/dbus/system_bus_socket",
                "/tmp/.X11-unix/X3",
                "/dev/snd",
                "/dev/dri",
                "/dev/nvidia0",
                "/dev/nvidiactl",
                "/dev/sr0",
                "/dev/sg1",
                "/dev/sda",
                "/dev/input",
                "/etc/resolv.conf",
                "/etc/hosts",
            ]
            .into_iter()
            .collect(),
        }
    }

    fn bind(kind: BindKind, path: &str) -> Mount {
        Mount::Bind {
            kind,
            src: path.into(),
            dst: path.into(),
        }
    }

    fn private(path: &str) -> Mount {
        Mount::Private { dst: path.into() }
    }

    fn env<'a>(g: &'a Grants, key: &str) -> Option<&'a OsStr> {
        g.env.get(key)
    }

    #[test]
    fn no_permission_grants_nothing() {
        assert_eq!(grants(Permissions::empty(), &desktop()), Grants::default());
    }

    #[test]
    fn home_binds_the_host_home_read_write() {
        let g = grants(Permissions::home, &desktop());
        assert_eq!(g.mounts, [bind(BindKind::Rw, "/home/u")]);
    }

    #[test]
    fn home_is_never_the_whole_root() {
        let mut host = desktop();
        host.vars = vec![("HOME", "/")];
        host.paths.insert("/");
        assert_eq!(grants(Permissions::home, &host).mounts, []);
    }

    #[test]
    fn media_binds_what_the_host_has() {
        let g = grants(Permissions::media, &desktop());
        assert_eq!(
            g.mounts,
            [bind(BindKind::Rw, "/media"), bind(BindKind::Rw, "/mnt")]
        );
    }

    #[test]
    fn sockets_go_into_one_private_runtime_directory() {
        let g = grants(
            Permissions::audio | Permissions::wayland | Permissions::dbus_user,
            &desktop(),
        );
        assert_eq!(
            g.mounts,
            [
                private("/run/user/1000"),
                bind(BindKind::Rw, "/run/user/1000/pulse/native"),
                bind(BindKind::Rw, "/run/user/1000/pipewire-0"),
                bind(BindKind::Dev, "/dev/snd"),
                bind(BindKind::Rw, "/run/user/1000/wayland-1"),
                bind(BindKind::Rw, "/run/user/1000/bus"),
            ]
        );
        assert_eq!(
            env(&g, "XDG_RUNTIME_DIR"),
            Some(OsStr::new("/run/user/1000"))
        );
        assert_eq!(
            env(&g, "PULSE_SERVER"),
            Some(OsStr::new("unix:/run/user/1000/pulse/native"))
        );
        assert_eq!(env(&g, "WAYLAND_DISPLAY"), Some(OsStr::new("wayland-1")));
        assert_eq!(
            env(&g, "DBUS_SESSION_BUS_ADDRESS"),
            Some(OsStr::new("unix:path=/run/user/1000/bus,guid=ab"))
        );
    }

    #[test]
    fn a_pulse_server_variable_names_the_socket() {
        let mut host = desktop();
        host.vars.push(("PULSE_SERVER", "unix:/tmp/pulse.sock"));
        host.paths.insert("/tmp/pulse.sock");
        let g = grants(Permissions::audio, &host);
        assert_eq!(g.mounts[0], bind(BindKind::Rw, "/tmp/pulse.sock"));
        assert_eq!(
            env(&g, "PULSE_SERVER"),
            Some(OsStr::new("unix:/tmp/pulse.sock"))
        );
    }

    #[test]
    fn xorg_binds_the_display_socket_and_authority() {
        let g = grants(Permissions::xorg, &desktop());
        assert_eq!(
            g.mounts,
            [
                bind(BindKind::Rw, "/tmp/.X11-unix/X3"),
                bind(BindKind::Ro, "/run/user/1000/xauth"),
            ]
        );
        assert_eq!(env(&g, "DISPLAY"), Some(OsStr::new(":3.0")));
        assert_eq!(
            env(&g, "XAUTHORITY"),
            Some(OsStr::new("/run/user/1000/xauth"))
        );
    }

    #[test]
    fn a_missing_socket_grants_no_variable() {
        let mut host = desktop();
        host.paths.remove("/run/user/1000/wayland-1");
        let g = grants(Permissions::wayland, &host);
        assert_eq!(g.mounts, []);
        assert_eq!(g.env, Env::default());
    }

    #[test]
    fn x11_display_names() {
        assert_eq!(x11_display_number(":0"), Some(0));
        assert_eq!(x11_display_number(":12.1"), Some(12));
        assert_eq!(x11_display_number("unix:4"), Some(4));
        assert_eq!(x11_display_number("host:0"), None);
        assert_eq!(x11_display_number(":x"), None);
    }

    #[test]
    fn dbus_addresses() {
        assert_eq!(
            dbus_socket("unix:path=/run/bus,guid=1"),
            Some(PathBuf::from("/run/bus"))
        );
        assert_eq!(
            dbus_socket("unix:abstract=/tmp/x;unix:path=/b"),
            Some(PathBuf::from("/b"))
        );
        assert_eq!(dbus_socket("tcp:host=h,port=1"), None);
    }

    #[test]
    fn devices_by_permission() {
        let g = grants(Permissions::gpu | Permissions::optical, &desktop());
        let devices: Vec<&Mount> = g
            .mounts
            .iter()
            .filter(|m| {
                matches!(
                    m,
                    Mount::Bind {
                        kind: BindKind::Dev,
                        ..
                    }
                )
            })
            .collect();
        assert_eq!(
            devices,
            [
                &bind(BindKind::Dev, "/dev/dri"),
                &bind(BindKind::Dev, "/dev/nvidia0"),
                &bind(BindKind::Dev, "/dev/nvidiactl"),
                &bind(BindKind::Dev, "/dev/sg1"),
                &bind(BindKind::Dev, "/dev/sr0"),
            ]
        );
    }

    #[test]
    fn the_whole_dev_makes_single_devices_redundant() {
        let g = grants(
            Permissions::dev | Permissions::input | Permissions::shm,
            &desktop(),
        );
        assert!(g.host_dev && g.host_shm);
        assert_eq!(g.mounts, []);
    }

    #[test]
    fn network_shares_the_namespace_and_the_resolver_files() {
        let g = grants(Permissions::network, &desktop());
        assert!(g.network);
        assert_eq!(
            g.mounts,
            [
                bind(BindKind::Ro, "/etc/resolv.conf"),
                bind(BindKind::Ro, "/etc/hosts"),
            ]
        );
    }

    #[test]
    fn every_permission_is_handled_without_panicking() {
        let g = grants(Permissions::all(), &desktop());
        assert!(g.network && g.host_dev && g.host_shm);
    }
}
