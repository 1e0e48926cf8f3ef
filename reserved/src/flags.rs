//! The fixed-width settings: permission and namespace bitmasks and the overlay
//! choice. Bit values follow FlatImage so bytes 0..11 mean the same in both.

use std::fmt;
use std::str::FromStr;

use crate::error::ReservedError;

// Flag names are lower-case on purpose: bitflags derives `from_name`,
// `iter_names` and the serde text form from the constant names, and these are
// the names users type (`fim perms add network`) and FlatImage prints.
bitflags::bitflags! {
    /// What the sandboxed app may reach. Stored as `u64` LE at offset 0.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
    #[serde(transparent)]
    pub struct Permissions: u64 {
        #[allow(non_upper_case_globals)] const home = 1 << 0;
        #[allow(non_upper_case_globals)] const media = 1 << 1;
        #[allow(non_upper_case_globals)] const audio = 1 << 2;
        #[allow(non_upper_case_globals)] const wayland = 1 << 3;
        #[allow(non_upper_case_globals)] const xorg = 1 << 4;
        #[allow(non_upper_case_globals)] const dbus_user = 1 << 5;
        #[allow(non_upper_case_globals)] const dbus_system = 1 << 6;
        #[allow(non_upper_case_globals)] const udev = 1 << 7;
        #[allow(non_upper_case_globals)] const usb = 1 << 8;
        #[allow(non_upper_case_globals)] const input = 1 << 9;
        #[allow(non_upper_case_globals)] const gpu = 1 << 10;
        #[allow(non_upper_case_globals)] const network = 1 << 11;
        #[allow(non_upper_case_globals)] const dev = 1 << 12;
        #[allow(non_upper_case_globals)] const shm = 1 << 13;
        #[allow(non_upper_case_globals)] const optical = 1 << 14;
    }
}

bitflags::bitflags! {
    /// Which namespaces the launcher unshares. Stored as `u16` LE at offset 40.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
    #[serde(transparent)]
    pub struct Unshare: u16 {
        #[allow(non_upper_case_globals)] const user = 1 << 0;
        #[allow(non_upper_case_globals)] const ipc = 1 << 1;
        #[allow(non_upper_case_globals)] const pid = 1 << 2;
        #[allow(non_upper_case_globals)] const net = 1 << 3;
        #[allow(non_upper_case_globals)] const uts = 1 << 4;
        #[allow(non_upper_case_globals)] const cgroup = 1 << 5;
    }
}

impl Permissions {
    /// Every permission name, in bit order.
    pub fn all_names() -> Vec<&'static str> {
        Self::all().names()
    }

    /// Names of the set permissions, in bit order.
    pub fn names(&self) -> Vec<&'static str> {
        self.iter_names().map(|(name, _)| name).collect()
    }

    /// Like `from_name`, but case-insensitive and with an error that lists
    /// the valid names, for command-line input.
    pub fn parse_name(name: &str) -> Result<Self, ReservedError> {
        Self::all()
            .iter_names()
            .find(|(known, _)| known.eq_ignore_ascii_case(name.trim()))
            .map(|(_, flag)| flag)
            .ok_or_else(|| ReservedError::UnknownPermission {
                name: name.to_owned(),
                expected: Self::all_names().join(", "),
            })
    }
}

impl Unshare {
    /// Every namespace name, in bit order.
    pub fn all_names() -> Vec<&'static str> {
        Self::all().names()
    }

    /// Names of the set namespaces, in bit order.
    pub fn names(&self) -> Vec<&'static str> {
        self.iter_names().map(|(name, _)| name).collect()
    }

    /// Like `from_name`, but case-insensitive and with an error that lists
    /// the valid names, for command-line input.
    pub fn parse_name(name: &str) -> Result<Self, ReservedError> {
        Self::all()
            .iter_names()
            .find(|(known, _)| known.eq_ignore_ascii_case(name.trim()))
            .map(|(_, flag)| flag)
            .ok_or_else(|| ReservedError::UnknownUnshare {
                name: name.to_owned(),
                expected: Self::all_names().join(", "),
            })
    }
}

/// How the writable layer is stacked on the read-only ones. The byte values
/// are FlatImage's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overlay {
    Bwrap,
    Overlayfs,
    Unionfs,
}

impl Overlay {
    pub const ALL: [Overlay; 3] = [Overlay::Bwrap, Overlay::Overlayfs, Overlay::Unionfs];

    /// The byte stored at offset 9.
    pub fn to_byte(self) -> u8 {
        match self {
            Overlay::Bwrap => 0x02,
            Overlay::Overlayfs => 0x04,
            Overlay::Unionfs => 0x08,
        }
    }

    /// Inverse of `to_byte`; `None` for 0 (unset) and for any unknown byte.
    pub fn from_byte(byte: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.to_byte() == byte)
    }

    /// Lower-case name, as accepted by `FromStr`.
    pub fn name(self) -> &'static str {
        match self {
            Overlay::Bwrap => "bwrap",
            Overlay::Overlayfs => "overlayfs",
            Overlay::Unionfs => "unionfs",
        }
    }
}

impl fmt::Display for Overlay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Overlay {
    type Err = ReservedError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|o| o.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| ReservedError::UnknownOverlay(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_bits_match_flatimage() {
        let expected: [(&str, u64); 15] = [
            ("home", 1 << 0),
            ("media", 1 << 1),
            ("audio", 1 << 2),
            ("wayland", 1 << 3),
            ("xorg", 1 << 4),
            ("dbus_user", 1 << 5),
            ("dbus_system", 1 << 6),
            ("udev", 1 << 7),
            ("usb", 1 << 8),
            ("input", 1 << 9),
            ("gpu", 1 << 10),
            ("network", 1 << 11),
            ("dev", 1 << 12),
            ("shm", 1 << 13),
            ("optical", 1 << 14),
        ];
        for (name, bit) in expected {
            assert_eq!(
                Permissions::from_name(name).map(|p| p.bits()),
                Some(bit),
                "{name}"
            );
        }
        assert_eq!(Permissions::all().bits(), 0x7fff);
    }

    #[test]
    fn unshare_bits_match_flatimage() {
        let expected: [(&str, u16); 6] = [
            ("user", 1 << 0),
            ("ipc", 1 << 1),
            ("pid", 1 << 2),
            ("net", 1 << 3),
            ("uts", 1 << 4),
            ("cgroup", 1 << 5),
        ];
        for (name, bit) in expected {
            assert_eq!(
                Unshare::from_name(name).map(|u| u.bits()),
                Some(bit),
                "{name}"
            );
        }
    }

    #[test]
    fn permission_names_list_in_bit_order() {
        let set = Permissions::network | Permissions::home | Permissions::gpu;
        assert_eq!(set.names(), ["home", "gpu", "network"]);
        assert_eq!(Permissions::all_names().len(), 15);
        assert_eq!(Permissions::all_names()[5], "dbus_user");
    }

    #[test]
    fn permission_parse_name_is_case_insensitive_and_lists_choices() {
        assert_eq!(Permissions::parse_name("Network"), Ok(Permissions::network));
        assert_eq!(
            Permissions::parse_name("DBUS_SYSTEM"),
            Ok(Permissions::dbus_system)
        );
        let err = Permissions::parse_name("camera").unwrap_err().to_string();
        assert!(
            err.starts_with("unknown permission 'camera' (expected one of: home, media,"),
            "{err}"
        );
    }

    #[test]
    fn unshare_parse_name_rejects_unknown() {
        assert_eq!(Unshare::parse_name("PID"), Ok(Unshare::pid));
        let err = Unshare::parse_name("mnt").unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown unshare namespace 'mnt' (expected one of: user, ipc, pid, net, uts, cgroup)"
        );
    }

    #[test]
    fn overlay_from_str_is_case_insensitive_and_rejects_unknown() {
        assert_eq!("bwrap".parse(), Ok(Overlay::Bwrap));
        assert_eq!("OverlayFS".parse(), Ok(Overlay::Overlayfs));
        assert_eq!("UNIONFS".parse(), Ok(Overlay::Unionfs));
        let err = "foo".parse::<Overlay>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown overlay type 'foo' (expected bwrap, overlayfs or unionfs)"
        );
    }

    #[test]
    fn overlay_display_round_trips_through_from_str() {
        for overlay in Overlay::ALL {
            assert_eq!(overlay.to_string().parse(), Ok(overlay));
        }
        assert_eq!(Overlay::Overlayfs.to_string(), "overlayfs");
    }

    #[test]
    fn overlay_bytes_are_flatimage_values_and_invert() {
        assert_eq!(Overlay::Bwrap.to_byte(), 0x02);
        assert_eq!(Overlay::Overlayfs.to_byte(), 0x04);
        assert_eq!(Overlay::Unionfs.to_byte(), 0x08);
        for overlay in Overlay::ALL {
            assert_eq!(Overlay::from_byte(overlay.to_byte()), Some(overlay));
        }
        for byte in [0x00, 0x01, 0x03, 0x06, 0x10, 0xff] {
            assert_eq!(Overlay::from_byte(byte), None, "{byte:#x}");
        }
    }
}
