//! Byte layout of the reserved block: every offset and size in one place so
//! the encoder, the decoder, the docs and `FIELDS` can never disagree.

/// Total size of the block. Fixed so that editing the config never moves the
/// layers that follow it in the file.
pub const BLOCK_SIZE: usize = 524_288;

/// `u64` LE permission bitmask (FlatImage bit order).
pub const PERMISSIONS_OFFSET: usize = 0;
/// `u8`: 0 off, 1 on.
pub const NOTIFY_OFFSET: usize = 8;
/// `u8`: 0 unset, otherwise one FlatImage overlay bit.
pub const OVERLAY_OFFSET: usize = 9;
/// `u8`: 0 off, 1 on.
pub const CASEFOLD_OFFSET: usize = 10;
/// `u8`: 0 off, 1 on (layout version 3): runs forget their writes.
pub const EPHEMERAL_OFFSET: usize = 11;
/// Zero bytes between the head's flags and the magic.
pub const HEAD_PADDING_OFFSET: usize = 12;
pub const HEAD_PADDING_SIZE: usize = 4;

pub const MAGIC_OFFSET: usize = 16;
/// Identifies a fim reserved block (and tells it apart from a FlatImage one).
pub const MAGIC: [u8; 8] = *b"FIMCONF\0";

pub const VERSION_OFFSET: usize = 24;
/// The newest layout this crate reads and writes. Version 2 added the origin region,
/// version 3 the ephemeral byte; a block records the lowest version that describes it,
/// so a block using neither is written as version 1, byte for byte as before.
pub const LAYOUT_VERSION: u32 = 3;
/// The oldest layout this crate reads.
pub const FIRST_LAYOUT_VERSION: u32 = 1;

/// The block records its own size so a reader can reject a block cut from a
/// file written by a build with a different `BLOCK_SIZE`.
pub const SIZE_OFFSET: usize = 28;

pub const CHECKSUM_OFFSET: usize = 32;
pub const CHECKSUM_SIZE: usize = 8;

/// `u16` LE namespace bitmask (FlatImage bit order).
pub const UNSHARE_OFFSET: usize = 40;
/// Zero bytes between the fixed header and the first region.
pub const HEADER_PADDING_OFFSET: usize = 42;
pub const HEADER_PADDING_SIZE: usize = 22;

/// Every region starts with this many bytes of `u32` LE payload length.
pub const REGION_LENGTH_SIZE: usize = 4;

pub const BOOT_OFFSET: usize = 64;
pub const BOOT_SIZE: usize = 8_192;
pub const BOOT_CAPACITY: usize = BOOT_SIZE - REGION_LENGTH_SIZE;

pub const ENV_OFFSET: usize = BOOT_OFFSET + BOOT_SIZE;
pub const ENV_SIZE: usize = 65_536;
pub const ENV_CAPACITY: usize = ENV_SIZE - REGION_LENGTH_SIZE;

pub const BINDS_OFFSET: usize = ENV_OFFSET + ENV_SIZE;
pub const BINDS_SIZE: usize = 65_536;
pub const BINDS_CAPACITY: usize = BINDS_SIZE - REGION_LENGTH_SIZE;

pub const DESKTOP_OFFSET: usize = BINDS_OFFSET + BINDS_SIZE;
pub const DESKTOP_SIZE: usize = 4_096;
pub const DESKTOP_CAPACITY: usize = DESKTOP_SIZE - REGION_LENGTH_SIZE;

pub const ICON_OFFSET: usize = DESKTOP_OFFSET + DESKTOP_SIZE;
pub const ICON_SIZE: usize = 262_144;
pub const ICON_CAPACITY: usize = ICON_SIZE - REGION_LENGTH_SIZE;
/// The icon payload starts with the NUL-padded file extension.
pub const ICON_EXT_SIZE: usize = 8;
/// Largest icon image that fits after the extension.
pub const ICON_DATA_CAPACITY: usize = ICON_CAPACITY - ICON_EXT_SIZE;

pub const REMOTE_OFFSET: usize = ICON_OFFSET + ICON_SIZE;
pub const REMOTE_SIZE: usize = 4_096;
pub const REMOTE_CAPACITY: usize = REMOTE_SIZE - REGION_LENGTH_SIZE;

/// Layout version 2: where an imported image came from.
pub const ORIGIN_OFFSET: usize = REMOTE_OFFSET + REMOTE_SIZE;
pub const ORIGIN_SIZE: usize = 4_096;
pub const ORIGIN_CAPACITY: usize = ORIGIN_SIZE - REGION_LENGTH_SIZE;

/// Zero bytes kept free so future fields can be added without resizing.
pub const TAIL_OFFSET: usize = ORIGIN_OFFSET + ORIGIN_SIZE;
pub const TAIL_SIZE: usize = BLOCK_SIZE - TAIL_OFFSET;

// The published layout is a contract; fail the build if arithmetic drifts.
const _: () = {
    assert!(ENV_OFFSET == 8_256);
    assert!(BINDS_OFFSET == 73_792);
    assert!(DESKTOP_OFFSET == 139_328);
    assert!(ICON_OFFSET == 143_424);
    assert!(REMOTE_OFFSET == 405_568);
    assert!(ORIGIN_OFFSET == 409_664);
    assert!(TAIL_OFFSET == 413_760);
    assert!(TAIL_SIZE == 110_528);
    // Region lengths and the recorded size are stored as u32.
    assert!(BLOCK_SIZE <= u32::MAX as usize);
    assert!(HEAD_PADDING_OFFSET + HEAD_PADDING_SIZE == MAGIC_OFFSET);
    assert!(HEADER_PADDING_OFFSET + HEADER_PADDING_SIZE == BOOT_OFFSET);
};

/// One row of the layout table, for tools that print or document it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldSpec {
    pub name: &'static str,
    pub offset: usize,
    pub size: usize,
    pub description: &'static str,
}

/// The whole block, in offset order, with no gaps or overlaps.
pub const FIELDS: &[FieldSpec] = &[
    FieldSpec {
        name: "permissions",
        offset: PERMISSIONS_OFFSET,
        size: 8,
        description: "u64 LE bitmask: home 0, media 1, audio 2, wayland 3, xorg 4, dbus_user 5, \
                      dbus_system 6, udev 7, usb 8, input 9, gpu 10, network 11, dev 12, shm 13, \
                      optical 14 (FlatImage-compatible)",
    },
    FieldSpec {
        name: "notify",
        offset: NOTIFY_OFFSET,
        size: 1,
        description: "u8: 0 off, 1 on (FlatImage-compatible)",
    },
    FieldSpec {
        name: "overlay",
        offset: OVERLAY_OFFSET,
        size: 1,
        description: "u8: 0 unset, 0x02 bwrap, 0x04 overlayfs, 0x08 unionfs (FlatImage-compatible)",
    },
    FieldSpec {
        name: "casefold",
        offset: CASEFOLD_OFFSET,
        size: 1,
        description: "u8: 0 off, 1 on (FlatImage-compatible)",
    },
    FieldSpec {
        name: "ephemeral",
        offset: EPHEMERAL_OFFSET,
        size: 1,
        description: "u8 (layout 3): 0 off, 1 on",
    },
    FieldSpec {
        name: "head_padding",
        offset: HEAD_PADDING_OFFSET,
        size: HEAD_PADDING_SIZE,
        description: "zero",
    },
    FieldSpec {
        name: "magic",
        offset: MAGIC_OFFSET,
        size: 8,
        description: "b\"FIMCONF\\0\"",
    },
    FieldSpec {
        name: "layout_version",
        offset: VERSION_OFFSET,
        size: 4,
        description: "u32 LE: 3 when ephemeral is on, else 2 when the origin region is set, else 1",
    },
    FieldSpec {
        name: "block_size",
        offset: SIZE_OFFSET,
        size: 4,
        description: "u32 LE, 524288",
    },
    FieldSpec {
        name: "checksum",
        offset: CHECKSUM_OFFSET,
        size: CHECKSUM_SIZE,
        description: "u64 LE XXH3-64 (seed 0) of the whole block with these 8 bytes zeroed",
    },
    FieldSpec {
        name: "unshare",
        offset: UNSHARE_OFFSET,
        size: 2,
        description: "u16 LE bitmask: user 0, ipc 1, pid 2, net 3, uts 4, cgroup 5",
    },
    FieldSpec {
        name: "header_padding",
        offset: HEADER_PADDING_OFFSET,
        size: HEADER_PADDING_SIZE,
        description: "zero, reserved",
    },
    FieldSpec {
        name: "boot",
        offset: BOOT_OFFSET,
        size: BOOT_SIZE,
        description: "region: u32 LE length + JSON {\"program\": str, \"args\": [str], \"cmd\": [str], \"workdir\": str}",
    },
    FieldSpec {
        name: "environment",
        offset: ENV_OFFSET,
        size: ENV_SIZE,
        description: "region: u32 LE length + JSON array of \"KEY=VALUE\" strings",
    },
    FieldSpec {
        name: "binds",
        offset: BINDS_OFFSET,
        size: BINDS_SIZE,
        description: "region: u32 LE length + JSON array of {\"type\": ro|rw|dev, \"src\", \"dst\"}",
    },
    FieldSpec {
        name: "desktop",
        offset: DESKTOP_OFFSET,
        size: DESKTOP_SIZE,
        description: "region: u32 LE length + JSON object (desktop integration settings)",
    },
    FieldSpec {
        name: "icon",
        offset: ICON_OFFSET,
        size: ICON_SIZE,
        description: "region: u32 LE length + 8-byte NUL-padded extension + image bytes",
    },
    FieldSpec {
        name: "remote",
        offset: REMOTE_OFFSET,
        size: REMOTE_SIZE,
        description: "region: u32 LE length + UTF-8 URL",
    },
    FieldSpec {
        name: "origin",
        offset: ORIGIN_OFFSET,
        size: ORIGIN_SIZE,
        description: "region (layout 2): u32 LE length + JSON {\"format\", \"reference\", \"digest\", \"config\"}",
    },
    FieldSpec {
        name: "tail",
        offset: TAIL_OFFSET,
        size: TAIL_SIZE,
        description: "zero, reserved for future fields",
    },
];

/// The variable-length regions, so encode/decode share one description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Region {
    Boot,
    Env,
    Binds,
    Desktop,
    Icon,
    Remote,
    Origin,
}

impl Region {
    pub(crate) const ALL: [Region; 7] = [
        Region::Boot,
        Region::Env,
        Region::Binds,
        Region::Desktop,
        Region::Icon,
        Region::Remote,
        Region::Origin,
    ];

    /// Human name used in error messages and the summary.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Region::Boot => "boot command",
            Region::Env => "environment",
            Region::Binds => "binds",
            Region::Desktop => "desktop entry",
            Region::Icon => "icon",
            Region::Remote => "remote URL",
            Region::Origin => "origin",
        }
    }

    pub(crate) fn offset(self) -> usize {
        match self {
            Region::Boot => BOOT_OFFSET,
            Region::Env => ENV_OFFSET,
            Region::Binds => BINDS_OFFSET,
            Region::Desktop => DESKTOP_OFFSET,
            Region::Icon => ICON_OFFSET,
            Region::Remote => REMOTE_OFFSET,
            Region::Origin => ORIGIN_OFFSET,
        }
    }

    pub(crate) fn size(self) -> usize {
        match self {
            Region::Boot => BOOT_SIZE,
            Region::Env => ENV_SIZE,
            Region::Binds => BINDS_SIZE,
            Region::Desktop => DESKTOP_SIZE,
            Region::Icon => ICON_SIZE,
            Region::Remote => REMOTE_SIZE,
            Region::Origin => ORIGIN_SIZE,
        }
    }

    pub(crate) fn capacity(self) -> usize {
        self.size() - REGION_LENGTH_SIZE
    }

    /// Where the payload bytes start.
    pub(crate) fn payload_offset(self) -> usize {
        self.offset() + REGION_LENGTH_SIZE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_tile_the_block_without_gaps_or_overlaps() {
        let mut next = 0;
        for field in FIELDS {
            assert_eq!(
                field.offset, next,
                "field {} starts off the grid",
                field.name
            );
            next = field.offset + field.size;
        }
        assert_eq!(next, BLOCK_SIZE);
    }

    #[test]
    fn region_capacities_are_size_minus_length_prefix() {
        assert_eq!(BOOT_CAPACITY, 8_188);
        assert_eq!(ENV_CAPACITY, 65_532);
        assert_eq!(BINDS_CAPACITY, 65_532);
        assert_eq!(DESKTOP_CAPACITY, 4_092);
        assert_eq!(ICON_CAPACITY, 262_140);
        assert_eq!(REMOTE_CAPACITY, 4_092);
        assert_eq!(ORIGIN_CAPACITY, 4_092);
        for region in Region::ALL {
            assert_eq!(region.capacity(), region.size() - 4);
        }
    }

    #[test]
    fn regions_match_their_field_rows() {
        let names = [
            "boot",
            "environment",
            "binds",
            "desktop",
            "icon",
            "remote",
            "origin",
        ];
        for (region, name) in Region::ALL.into_iter().zip(names) {
            let row = FIELDS.iter().find(|f| f.name == name);
            assert_eq!(
                row.map(|f| (f.offset, f.size)),
                Some((region.offset(), region.size()))
            );
        }
    }
}
