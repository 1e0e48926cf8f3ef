//! `Reserved`: the block as bytes plus typed accessors. Every way to obtain
//! or change one validates, so a value of this type is always a block that
//! `decode` would accept.

use std::fmt;

use xxhash_rust::xxh3::{Xxh3, xxh3_64};

use crate::error::ReservedError;
use crate::flags::{Overlay, Permissions, Unshare};
use crate::layout::*;
use crate::payload::{
    Bind, BootCommand, EnvVar, Icon, Origin, decode_desktop, decode_remote, validate_desktop,
    validate_remote,
};
use crate::summary::{IconSummary, RegionUsage, ReservedSummary};

/// The reserved config block.
#[derive(Clone, PartialEq)]
pub struct Reserved {
    /// Exactly `BLOCK_SIZE` bytes. The checksum field is kept zero here and
    /// only filled in by `to_bytes`, so `checksum()` is a plain hash.
    bytes: Vec<u8>,
    /// Region payloads in parsed form, updated together with `bytes`, so
    /// getters never re-parse and cannot fail.
    parsed: Parsed,
}

#[derive(Clone, PartialEq, Default)]
struct Parsed {
    boot: Option<BootCommand>,
    env: Vec<EnvVar>,
    binds: Vec<Bind>,
    desktop: Option<(String, serde_json::Value)>,
    icon: Option<Icon>,
    remote: Option<String>,
    origin: Option<Origin>,
}

fn read_u16(bytes: &[u8], offset: usize) -> u16 {
    let mut buf = [0u8; 2];
    buf.copy_from_slice(&bytes[offset..offset + 2]);
    u16::from_le_bytes(buf)
}

fn read_u32(bytes: &[u8], offset: usize) -> u32 {
    let mut buf = [0u8; 4];
    buf.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(buf)
}

fn read_u64(bytes: &[u8], offset: usize) -> u64 {
    let mut buf = [0u8; 8];
    buf.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_le_bytes(buf)
}

fn write(bytes: &mut [u8], offset: usize, value: &[u8]) {
    bytes[offset..offset + value.len()].copy_from_slice(value);
}

/// Reports the first non-zero byte in `bytes[offset..offset + size]`.
fn check_zero(
    bytes: &[u8],
    field: &'static str,
    offset: usize,
    size: usize,
) -> Result<(), ReservedError> {
    let area = &bytes[offset..offset + size];
    // Every launch checks nearly 512 KiB: an OR over whole words is several times faster
    // than looking for the first non-zero byte, which is done only when there is one.
    let words = area.chunks_exact(8);
    let tail = words
        .remainder()
        .iter()
        .fold(0, |acc, &b| acc | u64::from(b));
    let any = words.fold(tail, |acc, word| {
        acc | <[u8; 8]>::try_from(word).map_or(0, u64::from_ne_bytes)
    });
    if any == 0 {
        return Ok(());
    }
    match area.iter().position(|&b| b != 0) {
        Some(i) => Err(ReservedError::NonZeroPadding {
            field,
            offset: offset + i,
        }),
        None => Ok(()),
    }
}

fn read_bool(bytes: &[u8], field: &'static str, offset: usize) -> Result<bool, ReservedError> {
    match bytes[offset] {
        0 => Ok(false),
        1 => Ok(true),
        value => Err(ReservedError::InvalidBool { field, value }),
    }
}

/// The XXH3-64 of `block` with the checksum field taken as zero, hashed in place.
fn compute_checksum(block: &[u8]) -> u64 {
    let mut hasher = Xxh3::new();
    hasher.update(&block[..CHECKSUM_OFFSET]);
    hasher.update(&[0; CHECKSUM_SIZE]);
    hasher.update(&block[CHECKSUM_OFFSET + CHECKSUM_SIZE..]);
    hasher.digest()
}

impl Default for Reserved {
    fn default() -> Self {
        Self::new()
    }
}

impl Reserved {
    /// An empty block: every setting off or unset, header filled in.
    pub fn new() -> Self {
        let mut bytes = vec![0u8; BLOCK_SIZE];
        write(&mut bytes, MAGIC_OFFSET, &MAGIC);
        write(
            &mut bytes,
            VERSION_OFFSET,
            &FIRST_LAYOUT_VERSION.to_le_bytes(),
        );
        write(&mut bytes, SIZE_OFFSET, &(BLOCK_SIZE as u32).to_le_bytes());
        Reserved {
            bytes,
            parsed: Parsed::default(),
        }
    }

    /// Parses and fully validates a block read from an image, so corruption
    /// surfaces here as one clear error instead of later as odd behaviour.
    pub fn decode(bytes: &[u8]) -> Result<Self, ReservedError> {
        if bytes.len() != BLOCK_SIZE {
            return Err(ReservedError::WrongLength {
                actual: bytes.len(),
                expected: BLOCK_SIZE,
            });
        }
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&bytes[MAGIC_OFFSET..MAGIC_OFFSET + 8]);
        if magic != MAGIC {
            return Err(ReservedError::BadMagic { found: magic });
        }
        let version = read_u32(bytes, VERSION_OFFSET);
        if !(FIRST_LAYOUT_VERSION..=LAYOUT_VERSION).contains(&version) {
            return Err(ReservedError::UnsupportedVersion {
                found: version,
                supported: LAYOUT_VERSION,
            });
        }
        let size = read_u32(bytes, SIZE_OFFSET);
        if size as usize != BLOCK_SIZE {
            return Err(ReservedError::BlockSizeMismatch {
                found: size,
                expected: BLOCK_SIZE,
            });
        }
        let stored = read_u64(bytes, CHECKSUM_OFFSET);
        let computed = compute_checksum(bytes);
        if stored != computed && !crate::FUZZING {
            return Err(ReservedError::ChecksumMismatch { stored, computed });
        }

        // The checksum only proves the bytes are as written; a buggy or
        // foreign writer can still have written nonsense, so check values too.
        let permissions = read_u64(bytes, PERMISSIONS_OFFSET);
        if permissions & !Permissions::all().bits() != 0 {
            return Err(ReservedError::UnknownPermissionBits(
                permissions & !Permissions::all().bits(),
            ));
        }
        read_bool(bytes, "notify", NOTIFY_OFFSET)?;
        let overlay = bytes[OVERLAY_OFFSET];
        if overlay != 0 && Overlay::from_byte(overlay).is_none() {
            return Err(ReservedError::UnknownOverlayByte(overlay));
        }
        read_bool(bytes, "casefold", CASEFOLD_OFFSET)?;
        let ephemeral = read_bool(bytes, "ephemeral", EPHEMERAL_OFFSET)?;
        let unshare = read_u16(bytes, UNSHARE_OFFSET);
        if unshare & !Unshare::all().bits() != 0 {
            return Err(ReservedError::UnknownUnshareBits(
                unshare & !Unshare::all().bits(),
            ));
        }
        check_zero(bytes, "head", HEAD_PADDING_OFFSET, HEAD_PADDING_SIZE)?;
        check_zero(bytes, "header", HEADER_PADDING_OFFSET, HEADER_PADDING_SIZE)?;
        check_zero(bytes, "tail", TAIL_OFFSET, TAIL_SIZE)?;
        if version == 1 {
            // Version 1 had no origin region: those bytes were its tail.
            check_zero(bytes, "tail", ORIGIN_OFFSET, ORIGIN_SIZE)?;
        }

        // The copy kept has the checksum field zero, as `checksum` wants it. Every launch
        // decodes this block, so only what is not padding (checked zero above and below) is
        // copied: the header and each region's length and payload. The rest of the zeroed
        // allocation is never written, so its pages are never touched.
        let mut owned = vec![0; BLOCK_SIZE];
        owned[..BOOT_OFFSET].copy_from_slice(&bytes[..BOOT_OFFSET]);
        owned[CHECKSUM_OFFSET..CHECKSUM_OFFSET + CHECKSUM_SIZE].fill(0);
        let mut parsed = Parsed::default();
        for region in Region::ALL {
            let payload = region_payload(bytes, region)?;
            let used = region.offset()..region.payload_offset() + payload.len();
            owned[used.clone()].copy_from_slice(&bytes[used]);
            if payload.is_empty() {
                continue;
            }
            let wrap = |error| ReservedError::InvalidRegion {
                field: region.name(),
                error: Box::new(error),
            };
            match region {
                Region::Boot => parsed.boot = Some(BootCommand::decode(payload).map_err(wrap)?),
                Region::Env => parsed.env = EnvVar::decode_list(payload).map_err(wrap)?,
                Region::Binds => parsed.binds = Bind::decode_list(payload).map_err(wrap)?,
                Region::Desktop => parsed.desktop = Some(decode_desktop(payload).map_err(wrap)?),
                Region::Icon => parsed.icon = Some(Icon::decode(payload).map_err(wrap)?),
                Region::Remote => parsed.remote = Some(decode_remote(payload).map_err(wrap)?),
                Region::Origin => parsed.origin = Some(Origin::decode(payload).map_err(wrap)?),
            }
        }
        let expected = needed_version(&parsed, ephemeral);
        if version != expected {
            return Err(ReservedError::WrongVersion {
                found: version,
                expected,
            });
        }

        Ok(Reserved {
            bytes: owned,
            parsed,
        })
    }

    /// The block as it is written into the image, checksum included.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = self.bytes.clone();
        write(&mut bytes, CHECKSUM_OFFSET, &self.checksum().to_le_bytes());
        bytes
    }

    /// The checksum `to_bytes` stores at offset 32.
    pub fn checksum(&self) -> u64 {
        // `self.bytes` keeps the checksum field zero, so hash it directly.
        xxh3_64(&self.bytes)
    }

    pub fn permissions(&self) -> Permissions {
        Permissions::from_bits_truncate(read_u64(&self.bytes, PERMISSIONS_OFFSET))
    }

    /// Unknown bits are dropped so the block stays decodable.
    pub fn set_permissions(&mut self, permissions: Permissions) {
        let bits = Permissions::from_bits_truncate(permissions.bits()).bits();
        write(&mut self.bytes, PERMISSIONS_OFFSET, &bits.to_le_bytes());
    }

    pub fn notify(&self) -> bool {
        self.bytes[NOTIFY_OFFSET] == 1
    }

    pub fn set_notify(&mut self, on: bool) {
        self.bytes[NOTIFY_OFFSET] = u8::from(on);
    }

    pub fn casefold(&self) -> bool {
        self.bytes[CASEFOLD_OFFSET] == 1
    }

    pub fn set_casefold(&mut self, on: bool) {
        self.bytes[CASEFOLD_OFFSET] = u8::from(on);
    }

    /// Whether runs forget their writes (layout version 3).
    pub fn ephemeral(&self) -> bool {
        self.bytes[EPHEMERAL_OFFSET] == 1
    }

    /// Turning it on makes the block layout version 3; off, the lowest version again.
    pub fn set_ephemeral(&mut self, on: bool) {
        self.bytes[EPHEMERAL_OFFSET] = u8::from(on);
        self.record_version();
    }

    /// `None` means unset: the launcher picks its default.
    pub fn overlay(&self) -> Option<Overlay> {
        Overlay::from_byte(self.bytes[OVERLAY_OFFSET])
    }

    pub fn set_overlay(&mut self, overlay: Option<Overlay>) {
        self.bytes[OVERLAY_OFFSET] = overlay.map_or(0, Overlay::to_byte);
    }

    pub fn unshare(&self) -> Unshare {
        Unshare::from_bits_truncate(read_u16(&self.bytes, UNSHARE_OFFSET))
    }

    /// Unknown bits are dropped so the block stays decodable.
    pub fn set_unshare(&mut self, unshare: Unshare) {
        let bits = Unshare::from_bits_truncate(unshare.bits()).bits();
        write(&mut self.bytes, UNSHARE_OFFSET, &bits.to_le_bytes());
    }

    pub fn boot(&self) -> Option<BootCommand> {
        self.parsed.boot.clone()
    }

    pub fn set_boot(&mut self, boot: Option<&BootCommand>) -> Result<(), ReservedError> {
        let payload = boot
            .map(BootCommand::encode)
            .transpose()?
            .unwrap_or_default();
        self.write_region(Region::Boot, &payload)?;
        self.parsed.boot = boot.cloned();
        Ok(())
    }

    pub fn env(&self) -> Vec<EnvVar> {
        self.parsed.env.clone()
    }

    /// Replaces the whole environment. A key given twice keeps its first
    /// position and its last value; an empty slice clears the region.
    pub fn set_env(&mut self, vars: &[EnvVar]) -> Result<(), ReservedError> {
        let vars = EnvVar::normalize(vars)?;
        let payload = if vars.is_empty() {
            Vec::new()
        } else {
            EnvVar::encode_list(&vars)?
        };
        self.write_region(Region::Env, &payload)?;
        self.parsed.env = vars;
        Ok(())
    }

    pub fn binds(&self) -> Vec<Bind> {
        self.parsed.binds.clone()
    }

    /// Replaces all binds, in order; an empty slice clears the region.
    pub fn set_binds(&mut self, binds: &[Bind]) -> Result<(), ReservedError> {
        let payload = if binds.is_empty() {
            Vec::new()
        } else {
            Bind::encode_list(binds)?
        };
        self.write_region(Region::Binds, &payload)?;
        self.parsed.binds = binds.to_vec();
        Ok(())
    }

    /// The desktop-integration JSON object, as text exactly as it was set.
    pub fn desktop(&self) -> Option<String> {
        self.parsed.desktop.as_ref().map(|(text, _)| text.clone())
    }

    pub fn set_desktop(&mut self, json: Option<&str>) -> Result<(), ReservedError> {
        let parsed = json
            .map(|text| validate_desktop(text).map(|value| (text.to_owned(), value)))
            .transpose()?;
        self.write_region(Region::Desktop, json.unwrap_or_default().as_bytes())?;
        self.parsed.desktop = parsed;
        Ok(())
    }

    pub fn icon(&self) -> Option<Icon> {
        self.parsed.icon.clone()
    }

    pub fn set_icon(&mut self, icon: Option<&Icon>) -> Result<(), ReservedError> {
        let payload = icon.map(Icon::encode).transpose()?.unwrap_or_default();
        self.write_region(Region::Icon, &payload)?;
        self.parsed.icon = icon.cloned();
        Ok(())
    }

    pub fn remote(&self) -> Option<String> {
        self.parsed.remote.clone()
    }

    pub fn set_remote(&mut self, url: Option<&str>) -> Result<(), ReservedError> {
        if let Some(url) = url {
            validate_remote(url)?;
        }
        self.write_region(Region::Remote, url.unwrap_or_default().as_bytes())?;
        self.parsed.remote = url.map(str::to_owned);
        Ok(())
    }

    /// Where an imported image came from.
    pub fn origin(&self) -> Option<Origin> {
        self.parsed.origin.clone()
    }

    /// Setting an origin makes the block layout version 2; clearing it, 1 again.
    pub fn set_origin(&mut self, origin: Option<&Origin>) -> Result<(), ReservedError> {
        let payload = origin.map(Origin::encode).transpose()?.unwrap_or_default();
        self.write_region(Region::Origin, &payload)?;
        self.parsed.origin = origin.cloned();
        self.record_version();
        Ok(())
    }

    /// Writes the lowest layout version that describes the block.
    fn record_version(&mut self) {
        let version = needed_version(&self.parsed, self.ephemeral());
        write(&mut self.bytes, VERSION_OFFSET, &version.to_le_bytes());
    }

    /// The layout version this block records.
    pub fn layout_version(&self) -> u32 {
        read_u32(&self.bytes, VERSION_OFFSET)
    }

    /// Every field decoded into human-meaningful values, for `inspect --json`.
    pub fn summary(&self) -> ReservedSummary {
        ReservedSummary {
            layout_version: self.layout_version(),
            block_size: BLOCK_SIZE,
            checksum: format!("{:#018x}", self.checksum()),
            permissions: self.permissions().names(),
            notify: self.notify(),
            overlay: self.overlay(),
            casefold: self.casefold(),
            ephemeral: self.ephemeral(),
            unshare: self.unshare().names(),
            boot: self.boot(),
            environment: self.env(),
            binds: self.binds(),
            desktop: self.parsed.desktop.as_ref().map(|(_, value)| value.clone()),
            icon: self.parsed.icon.as_ref().map(|icon| IconSummary {
                extension: icon.extension.clone(),
                size: icon.data.len(),
            }),
            remote: self.remote(),
            origin: self.origin(),
            regions: Region::ALL
                .into_iter()
                .map(|region| RegionUsage {
                    name: region.name(),
                    offset: region.offset(),
                    used: read_u32(&self.bytes, region.offset()) as usize,
                    capacity: region.capacity(),
                })
                .collect(),
        }
    }

    /// Checks capacity before touching anything, so a failed set leaves the
    /// block unchanged.
    fn write_region(&mut self, region: Region, payload: &[u8]) -> Result<(), ReservedError> {
        if payload.len() > region.capacity() {
            return Err(ReservedError::DoesNotFit {
                field: region.name(),
                length: payload.len(),
                capacity: region.capacity(),
            });
        }
        let start = region.offset();
        self.bytes[start..start + region.size()].fill(0);
        // Fits in u32: capacity is far below u32::MAX.
        write(
            &mut self.bytes,
            start,
            &(payload.len() as u32).to_le_bytes(),
        );
        write(&mut self.bytes, region.payload_offset(), payload);
        Ok(())
    }
}

/// The lowest layout version that holds what `parsed` and the ephemeral byte hold.
fn needed_version(parsed: &Parsed, ephemeral: bool) -> u32 {
    if ephemeral {
        3
    } else if parsed.origin.is_some() {
        2
    } else {
        FIRST_LAYOUT_VERSION
    }
}

/// The length-checked payload of `region`, with its trailing padding checked
/// to be zero so every valid block has one canonical byte form.
fn region_payload(bytes: &[u8], region: Region) -> Result<&[u8], ReservedError> {
    let length = read_u32(bytes, region.offset()) as usize;
    if length > region.capacity() {
        return Err(ReservedError::RegionOverflow {
            field: region.name(),
            length,
            capacity: region.capacity(),
        });
    }
    let start = region.payload_offset();
    let end = region.offset() + region.size();
    check_zero(bytes, region.name(), start + length, end - (start + length))?;
    Ok(&bytes[start..start + length])
}

impl fmt::Debug for Reserved {
    /// The summary, not 512 KiB of bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Reserved").field(&self.summary()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::BindKind;

    /// Rewrites the checksum after a test edits raw bytes, so the check
    /// under test is the one that fires rather than the checksum.
    fn reseal(bytes: &mut [u8]) {
        let sum = compute_checksum(bytes);
        write(bytes, CHECKSUM_OFFSET, &sum.to_le_bytes());
    }

    fn var(s: &str) -> EnvVar {
        EnvVar::parse(s).unwrap()
    }

    fn full_block() -> Reserved {
        let mut r = Reserved::new();
        r.set_permissions(Permissions::all());
        r.set_notify(true);
        r.set_casefold(true);
        r.set_ephemeral(true);
        r.set_overlay(Some(Overlay::Overlayfs));
        r.set_unshare(Unshare::user | Unshare::pid | Unshare::cgroup);
        r.set_boot(Some(
            &BootCommand::new("/usr/bin/app", ["--flag", "x y"]).unwrap(),
        ))
        .unwrap();
        r.set_env(&[var("A=1"), var("PATH=/bin:/usr/bin")]).unwrap();
        r.set_binds(&[
            Bind::new(BindKind::Ro, "/etc/hosts", "/etc/hosts").unwrap(),
            Bind::new(BindKind::Dev, "/dev/dri", "/dev/dri").unwrap(),
        ])
        .unwrap();
        r.set_desktop(Some(r#"{"name":"App","integrations":["menu","icon"]}"#))
            .unwrap();
        r.set_icon(Some(
            &Icon::new("png", b"\x89PNG\r\n\x1a\n".to_vec()).unwrap(),
        ))
        .unwrap();
        r.set_remote(Some("https://example.org/app.flatimage"))
            .unwrap();
        r
    }

    #[test]
    fn new_block_has_magic_version_and_valid_checksum() {
        let bytes = Reserved::new().to_bytes();
        assert_eq!(bytes.len(), BLOCK_SIZE);
        assert_eq!(&bytes[16..24], b"FIMCONF\0");
        assert_eq!(read_u32(&bytes, 24), 1);
        assert_eq!(read_u32(&bytes, 28), 524_288);
        assert_eq!(read_u64(&bytes, 32), compute_checksum(&bytes));
        assert!(Reserved::decode(&bytes).is_ok());
    }

    #[test]
    fn new_block_has_every_setting_off_or_unset() {
        let r = Reserved::new();
        assert_eq!(r.permissions(), Permissions::empty());
        assert!(!r.notify() && !r.casefold() && !r.ephemeral());
        assert_eq!(r.overlay(), None);
        assert_eq!(r.unshare(), Unshare::empty());
        assert_eq!(r.boot(), None);
        assert!(r.env().is_empty() && r.binds().is_empty());
        assert_eq!((r.desktop(), r.icon(), r.remote()), (None, None, None));
    }

    #[test]
    fn empty_block_checksum_is_known_value() {
        // Cross-checked with Python's `xxhash.xxh3_64_intdigest`; pins both the
        // algorithm and the header bytes. Also quoted in docs/reserved-block.md.
        assert_eq!(Reserved::new().checksum(), 0xed77_267c_29f0_b8f2);
    }

    #[test]
    fn checksum_is_xxh3_of_block_with_checksum_field_zeroed() {
        let r = full_block();
        let bytes = r.to_bytes();
        let mut zeroed = bytes.clone();
        zeroed[32..40].fill(0);
        assert_eq!(r.checksum(), xxh3_64(&zeroed));
        assert_eq!(bytes[32..40], r.checksum().to_le_bytes());
    }

    #[test]
    fn flatimage_offsets_hold_permissions_notify_overlay_casefold() {
        let mut r = Reserved::new();
        r.set_permissions(Permissions::network | Permissions::home);
        assert_eq!(read_u64(&r.to_bytes(), 0), 0x801);
        r.set_notify(true);
        assert_eq!(r.to_bytes()[8], 1);
        r.set_overlay(Some(Overlay::Unionfs));
        assert_eq!(r.to_bytes()[9], 0x08);
        r.set_overlay(Some(Overlay::Bwrap));
        assert_eq!(r.to_bytes()[9], 0x02);
        r.set_overlay(Some(Overlay::Overlayfs));
        assert_eq!(r.to_bytes()[9], 0x04);
        r.set_overlay(None);
        assert_eq!(r.to_bytes()[9], 0x00);
        r.set_casefold(true);
        assert_eq!(r.to_bytes()[10], 1);
        assert_eq!(r.to_bytes()[11..16], [0; 5]);
    }

    #[test]
    fn ephemeral_is_byte_11_and_makes_the_block_version_3() {
        let plain = Reserved::new().to_bytes();
        let mut r = Reserved::new();
        r.set_ephemeral(true);
        assert!(r.ephemeral());
        let bytes = r.to_bytes();
        assert_eq!(bytes[EPHEMERAL_OFFSET], 1);
        assert_eq!(bytes[12..16], [0; 4]);
        assert_eq!(read_u32(&bytes, VERSION_OFFSET), 3);
        let back = Reserved::decode(&bytes).unwrap();
        assert!(back.ephemeral());
        assert_eq!(back.summary().layout_version, 3);
        r.set_ephemeral(false);
        assert_eq!(r.to_bytes(), plain, "off again is version 1, as before");
    }

    #[test]
    fn ephemeral_off_keeps_the_version_an_origin_needs() {
        let mut r = Reserved::new();
        r.set_origin(Some(&origin())).unwrap();
        r.set_ephemeral(true);
        assert_eq!(r.layout_version(), 3);
        r.set_ephemeral(false);
        assert_eq!(r.layout_version(), 2);
        r.set_ephemeral(true);
        r.set_origin(None).unwrap();
        assert_eq!(r.layout_version(), 3, "ephemeral alone still needs 3");
        assert!(Reserved::decode(&r.to_bytes()).is_ok());
    }

    #[test]
    fn version_3_needs_ephemeral_on_and_older_versions_need_byte_11_zero() {
        let mut bytes = Reserved::new().to_bytes();
        write(&mut bytes, VERSION_OFFSET, &3u32.to_le_bytes());
        reseal(&mut bytes);
        assert_eq!(
            Reserved::decode(&bytes),
            Err(ReservedError::WrongVersion {
                found: 3,
                expected: 1
            })
        );
        let mut on = Reserved::new();
        on.set_ephemeral(true);
        let mut bytes = on.to_bytes();
        write(&mut bytes, VERSION_OFFSET, &1u32.to_le_bytes());
        reseal(&mut bytes);
        assert_eq!(
            Reserved::decode(&bytes),
            Err(ReservedError::WrongVersion {
                found: 1,
                expected: 3
            })
        );
    }

    #[test]
    fn unshare_is_u16_le_at_offset_40() {
        let mut r = Reserved::new();
        r.set_unshare(Unshare::ipc | Unshare::cgroup);
        assert_eq!(read_u16(&r.to_bytes(), 40), 0b10_0010);
    }

    #[test]
    fn regions_are_length_prefixed_at_their_offsets() {
        let mut r = Reserved::new();
        r.set_remote(Some("https://x")).unwrap();
        let bytes = r.to_bytes();
        assert_eq!(read_u32(&bytes, REMOTE_OFFSET), 9);
        assert_eq!(&bytes[REMOTE_OFFSET + 4..REMOTE_OFFSET + 13], b"https://x");
        assert_eq!(bytes[REMOTE_OFFSET + 13], 0);
    }

    #[test]
    fn setters_drop_unknown_flag_bits() {
        let mut r = Reserved::new();
        r.set_permissions(Permissions::from_bits_retain(1 << 40 | 1));
        r.set_unshare(Unshare::from_bits_retain(1 << 9 | 1));
        assert_eq!(r.permissions(), Permissions::home);
        assert_eq!(r.unshare(), Unshare::user);
        assert!(Reserved::decode(&r.to_bytes()).is_ok());
    }

    #[test]
    fn decode_rejects_wrong_length() {
        let bytes = Reserved::new().to_bytes();
        for len in [0, BLOCK_SIZE - 1, BLOCK_SIZE + 1] {
            let mut b = bytes.clone();
            b.resize(len, 0);
            assert_eq!(
                Reserved::decode(&b),
                Err(ReservedError::WrongLength {
                    actual: len,
                    expected: BLOCK_SIZE
                })
            );
        }
    }

    #[test]
    fn decode_rejects_bad_magic() {
        let mut bytes = Reserved::new().to_bytes();
        bytes[16] = b'X';
        reseal(&mut bytes);
        let err = Reserved::decode(&bytes).unwrap_err();
        assert!(matches!(err, ReservedError::BadMagic { .. }), "{err}");
    }

    #[test]
    fn decode_rejects_other_layout_version_and_block_size() {
        let mut bytes = Reserved::new().to_bytes();
        write(&mut bytes, VERSION_OFFSET, &4u32.to_le_bytes());
        reseal(&mut bytes);
        assert_eq!(
            Reserved::decode(&bytes).unwrap_err().to_string(),
            "reserved block: unsupported layout version 4 (this build reads versions 1 to 3)"
        );
        let mut bytes = Reserved::new().to_bytes();
        write(&mut bytes, SIZE_OFFSET, &4_194_304u32.to_le_bytes());
        reseal(&mut bytes);
        assert_eq!(
            Reserved::decode(&bytes),
            Err(ReservedError::BlockSizeMismatch {
                found: 4_194_304,
                expected: BLOCK_SIZE
            })
        );
    }

    #[test]
    fn decoding_keeps_every_byte_though_it_copies_only_what_is_not_padding() {
        let bytes = full_block().to_bytes();
        let decoded = Reserved::decode(&bytes).unwrap();
        assert_eq!(decoded.to_bytes(), bytes);
        assert_eq!(decoded, full_block());
    }

    #[test]
    fn checksum_hashed_in_place_equals_the_hash_of_a_zeroed_copy() {
        let bytes = full_block().to_bytes();
        let mut zeroed = bytes.clone();
        zeroed[CHECKSUM_OFFSET..CHECKSUM_OFFSET + CHECKSUM_SIZE].fill(0);
        assert_eq!(compute_checksum(&bytes), xxh3_64(&zeroed));
        assert_eq!(read_u64(&bytes, CHECKSUM_OFFSET), xxh3_64(&zeroed));
    }

    #[test]
    fn decode_rejects_flipped_byte_anywhere() {
        let bytes = full_block().to_bytes();
        let offsets = [
            0,
            8,
            9,
            10,
            13,
            35,
            41,
            50,
            BOOT_OFFSET + 10,
            ENV_OFFSET + 5,
            BINDS_OFFSET + BINDS_SIZE - 1,
            DESKTOP_OFFSET + 7,
            ICON_OFFSET + 20,
            REMOTE_OFFSET + 4,
            TAIL_OFFSET,
            BLOCK_SIZE / 2 + 12_345,
            BLOCK_SIZE - 1,
        ];
        for offset in offsets {
            let mut b = bytes.clone();
            b[offset] ^= 0x01;
            let err = Reserved::decode(&b).unwrap_err();
            assert!(
                matches!(err, ReservedError::ChecksumMismatch { .. }),
                "offset {offset}: {err}"
            );
        }
    }

    #[test]
    fn checksum_error_shows_both_values_in_hex() {
        let mut bytes = Reserved::new().to_bytes();
        bytes[BLOCK_SIZE - 1] = 1;
        let computed = compute_checksum(&bytes);
        let stored = read_u64(&bytes, CHECKSUM_OFFSET);
        assert_eq!(
            Reserved::decode(&bytes).unwrap_err().to_string(),
            format!(
                "reserved block: checksum mismatch (stored {stored:#018x}, computed {computed:#018x})"
            )
        );
    }

    #[test]
    fn decode_rejects_unknown_overlay_byte() {
        for byte in [0x01, 0x03, 0x06, 0x10, 0xff] {
            let mut bytes = Reserved::new().to_bytes();
            bytes[OVERLAY_OFFSET] = byte;
            reseal(&mut bytes);
            assert_eq!(
                Reserved::decode(&bytes),
                Err(ReservedError::UnknownOverlayByte(byte))
            );
        }
    }

    #[test]
    fn decode_rejects_non_boolean_notify_and_casefold() {
        for (offset, field) in [
            (NOTIFY_OFFSET, "notify"),
            (CASEFOLD_OFFSET, "casefold"),
            (EPHEMERAL_OFFSET, "ephemeral"),
        ] {
            let mut bytes = Reserved::new().to_bytes();
            bytes[offset] = 2;
            reseal(&mut bytes);
            assert_eq!(
                Reserved::decode(&bytes),
                Err(ReservedError::InvalidBool { field, value: 2 })
            );
        }
    }

    #[test]
    fn decode_rejects_unknown_flag_bits() {
        let mut bytes = Reserved::new().to_bytes();
        write(
            &mut bytes,
            PERMISSIONS_OFFSET,
            &(1u64 << 15 | 1).to_le_bytes(),
        );
        reseal(&mut bytes);
        assert_eq!(
            Reserved::decode(&bytes),
            Err(ReservedError::UnknownPermissionBits(1 << 15))
        );
        let mut bytes = Reserved::new().to_bytes();
        write(&mut bytes, UNSHARE_OFFSET, &(1u16 << 6).to_le_bytes());
        reseal(&mut bytes);
        assert_eq!(
            Reserved::decode(&bytes),
            Err(ReservedError::UnknownUnshareBits(1 << 6))
        );
    }

    #[test]
    fn decode_rejects_non_zero_padding() {
        let cases = [
            (12, "head"),
            (50, "header"),
            // The header padding is 22 bytes: two words and a six-byte tail, checked apart.
            (62, "header"),
            (TAIL_OFFSET + 100, "tail"),
            (BLOCK_SIZE - 1, "tail"),
            (ENV_OFFSET + 4 + 3, "environment"),
        ];
        for (offset, field) in cases {
            let mut bytes = Reserved::new().to_bytes();
            bytes[offset] = 0xaa;
            reseal(&mut bytes);
            assert_eq!(
                Reserved::decode(&bytes),
                Err(ReservedError::NonZeroPadding { field, offset }),
            );
        }
    }

    #[test]
    fn decode_rejects_region_length_over_capacity() {
        let mut bytes = Reserved::new().to_bytes();
        write(
            &mut bytes,
            ENV_OFFSET,
            &(ENV_CAPACITY as u32 + 1).to_le_bytes(),
        );
        reseal(&mut bytes);
        let err = Reserved::decode(&bytes).unwrap_err();
        assert_eq!(
            err,
            ReservedError::RegionOverflow {
                field: "environment",
                length: 65_533,
                capacity: 65_532
            }
        );
        assert_eq!(
            err.to_string(),
            "reserved block: environment region length 65533 exceeds capacity 65532"
        );
    }

    #[test]
    fn decode_rejects_invalid_region_payload() {
        let mut bytes = Reserved::new().to_bytes();
        let payload = br#"{"program":""}"#;
        write(
            &mut bytes,
            BOOT_OFFSET,
            &(payload.len() as u32).to_le_bytes(),
        );
        write(&mut bytes, BOOT_OFFSET + 4, payload);
        reseal(&mut bytes);
        assert_eq!(
            Reserved::decode(&bytes).unwrap_err().to_string(),
            "reserved block: boot command region is invalid: invalid boot command: program is empty"
        );
    }

    #[test]
    fn decode_rejects_malformed_json_region() {
        let mut bytes = Reserved::new().to_bytes();
        write(&mut bytes, BINDS_OFFSET, &3u32.to_le_bytes());
        write(&mut bytes, BINDS_OFFSET + 4, b"[{]");
        reseal(&mut bytes);
        let err = Reserved::decode(&bytes).unwrap_err();
        assert!(
            matches!(&err, ReservedError::InvalidRegion { field: "binds", error }
                if matches!(**error, ReservedError::MalformedJson(_))),
            "{err}"
        );
    }

    #[test]
    fn set_env_over_capacity_fails_and_leaves_block_unchanged() {
        let mut r = Reserved::new();
        r.set_env(&[var("KEEP=me")]).unwrap();
        let before = r.to_bytes();
        let huge = EnvVar::new("BIG", "x".repeat(ENV_CAPACITY)).unwrap();
        let err = r.set_env(&[huge]).unwrap_err();
        // JSON: ["BIG=" + 65532 x's + "] = 65532 + 8 bytes.
        assert_eq!(
            err.to_string(),
            "environment does not fit: 65540 bytes, capacity 65532"
        );
        assert_eq!(r.to_bytes(), before);
        assert_eq!(r.env(), [var("KEEP=me")]);
    }

    #[test]
    fn region_filled_to_exact_capacity_round_trips() {
        let mut r = Reserved::new();
        let url = format!("https://{}", "a".repeat(REMOTE_CAPACITY - 8));
        r.set_remote(Some(&url)).unwrap();
        let back = Reserved::decode(&r.to_bytes()).unwrap();
        assert_eq!(back.remote(), Some(url));
        assert!(
            r.set_remote(Some(&format!("{}a", back.remote().unwrap())))
                .is_err()
        );
    }

    #[test]
    fn icon_at_data_capacity_fits_and_one_more_byte_does_not() {
        let mut r = Reserved::new();
        let icon = Icon::new("png", vec![7; ICON_DATA_CAPACITY]).unwrap();
        r.set_icon(Some(&icon)).unwrap();
        let before = r.to_bytes();
        let too_big = Icon::new("png", vec![7; ICON_DATA_CAPACITY + 1]).unwrap();
        assert_eq!(
            r.set_icon(Some(&too_big)),
            Err(ReservedError::DoesNotFit {
                field: "icon",
                length: ICON_CAPACITY + 1,
                capacity: ICON_CAPACITY
            })
        );
        assert_eq!(r.to_bytes(), before);
        assert_eq!(Reserved::decode(&before).unwrap().icon(), Some(icon));
    }

    #[test]
    fn invalid_setter_input_leaves_block_unchanged() {
        let mut r = full_block();
        let before = r.to_bytes();
        let bad_boot = BootCommand {
            program: String::new(),
            ..BootCommand::default()
        };
        assert!(r.set_boot(Some(&bad_boot)).is_err());
        let bad_var = EnvVar {
            key: "1X".into(),
            value: String::new(),
        };
        assert!(r.set_env(&[var("OK=1"), bad_var]).is_err());
        let bad_bind = Bind {
            kind: BindKind::Rw,
            src: "/a".into(),
            dst: "b".into(),
        };
        assert!(r.set_binds(&[bad_bind]).is_err());
        assert!(r.set_desktop(Some("[]")).is_err());
        let bad_icon = Icon {
            extension: "PNG".into(),
            data: vec![1],
        };
        assert!(r.set_icon(Some(&bad_icon)).is_err());
        assert!(r.set_remote(Some("has space")).is_err());
        assert_eq!(r.to_bytes(), before);
        assert_eq!(r, full_block());
    }

    #[test]
    fn set_env_with_existing_key_replaces_value() {
        let mut r = Reserved::new();
        r.set_env(&[var("A=1"), var("B=2")]).unwrap();
        let mut vars = r.env();
        vars.push(var("A=3"));
        r.set_env(&vars).unwrap();
        assert_eq!(r.env(), [var("A=3"), var("B=2")]);
        assert_eq!(Reserved::decode(&r.to_bytes()).unwrap().env(), r.env());
    }

    #[test]
    fn clearing_a_region_zeroes_it() {
        let mut r = full_block();
        r.set_env(&[]).unwrap();
        r.set_binds(&[]).unwrap();
        r.set_boot(None).unwrap();
        r.set_desktop(None).unwrap();
        r.set_icon(None).unwrap();
        r.set_remote(None).unwrap();
        let bytes = r.to_bytes();
        assert!(bytes[BOOT_OFFSET..].iter().all(|&b| b == 0));
        assert_eq!(
            Reserved::decode(&bytes).unwrap().summary().regions[1].used,
            0
        );
    }

    #[test]
    fn boot_round_trip_with_unicode_args() {
        let mut r = Reserved::new();
        let boot =
            BootCommand::new("/opt/日本/app", ["--név=Ünïcødé", "🚀", "\"quoted\"\n"]).unwrap();
        r.set_boot(Some(&boot)).unwrap();
        let back = Reserved::decode(&r.to_bytes()).unwrap();
        assert_eq!(back.boot(), Some(boot));
    }

    fn origin() -> Origin {
        Origin {
            format: "docker-archive".into(),
            reference: Some("localhost/app:latest".into()),
            digest: None,
            config: format!("sha256:{}", "c".repeat(64)),
        }
    }

    #[test]
    fn an_origin_makes_the_block_version_2_and_clearing_it_version_1_again() {
        let plain = Reserved::new().to_bytes();
        let mut r = Reserved::new();
        r.set_origin(Some(&origin())).unwrap();
        assert_eq!(r.layout_version(), 2);
        let bytes = r.to_bytes();
        assert_eq!(read_u32(&bytes, VERSION_OFFSET), 2);
        let back = Reserved::decode(&bytes).unwrap();
        assert_eq!(back.origin(), Some(origin()));
        assert_eq!(back.summary().layout_version, 2);
        r.set_origin(None).unwrap();
        assert_eq!(
            r.to_bytes(),
            plain,
            "a block without origin is version 1, as before"
        );
    }

    #[test]
    fn version_1_blocks_keep_the_origin_bytes_zero_and_version_2_needs_an_origin() {
        let mut with_origin = Reserved::new();
        with_origin.set_origin(Some(&origin())).unwrap();
        let mut bytes = with_origin.to_bytes();
        write(&mut bytes, VERSION_OFFSET, &1u32.to_le_bytes());
        reseal(&mut bytes);
        assert!(matches!(
            Reserved::decode(&bytes),
            Err(ReservedError::NonZeroPadding { field: "tail", .. })
        ));
        let mut bytes = Reserved::new().to_bytes();
        write(&mut bytes, VERSION_OFFSET, &2u32.to_le_bytes());
        reseal(&mut bytes);
        assert_eq!(
            Reserved::decode(&bytes),
            Err(ReservedError::WrongVersion {
                found: 2,
                expected: 1
            })
        );
    }

    #[test]
    fn docker_boot_command_round_trips_in_a_version_1_block() {
        let mut r = Reserved::new();
        let boot = BootCommand::from_docker(
            &["/bin/echo".into(), "hi".into()],
            &["x".into()],
            Some("/w"),
        )
        .unwrap();
        r.set_boot(Some(&boot)).unwrap();
        let back = Reserved::decode(&r.to_bytes()).unwrap();
        assert_eq!(back.boot(), Some(boot));
        assert_eq!(back.layout_version(), 1);
    }

    #[test]
    fn round_trip_all_fields() {
        let r = full_block();
        let bytes = r.to_bytes();
        let back = Reserved::decode(&bytes).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.to_bytes(), bytes);
        assert_eq!(back.permissions(), Permissions::all());
        assert!(back.notify() && back.casefold() && back.ephemeral());
        assert_eq!(back.overlay(), Some(Overlay::Overlayfs));
        assert_eq!(
            back.unshare(),
            Unshare::user | Unshare::pid | Unshare::cgroup
        );
        assert_eq!(back.boot().unwrap().args, ["--flag", "x y"]);
        assert_eq!(back.env(), [var("A=1"), var("PATH=/bin:/usr/bin")]);
        assert_eq!(back.binds()[1].kind, BindKind::Dev);
        assert_eq!(
            back.desktop().as_deref(),
            Some(r#"{"name":"App","integrations":["menu","icon"]}"#)
        );
        assert_eq!(back.icon().unwrap().extension, "png");
        assert_eq!(
            back.remote().as_deref(),
            Some("https://example.org/app.flatimage")
        );
    }

    #[test]
    fn summary_json_is_human_meaningful() {
        let mut r = Reserved::new();
        r.set_permissions(Permissions::network | Permissions::home);
        r.set_overlay(Some(Overlay::Unionfs));
        r.set_env(&[var("A=1")]).unwrap();
        r.set_icon(Some(&Icon::new("svg", b"<svg/>".to_vec()).unwrap()))
            .unwrap();
        r.set_desktop(Some(r#"{"name":"X"}"#)).unwrap();
        let json = serde_json::to_value(r.summary()).unwrap();
        assert_eq!(json["permissions"], serde_json::json!(["home", "network"]));
        assert_eq!(json["overlay"], "unionfs");
        assert_eq!(json["unshare"], serde_json::json!([]));
        assert_eq!(json["environment"], serde_json::json!(["A=1"]));
        assert_eq!(
            json["icon"],
            serde_json::json!({"extension": "svg", "size": 6})
        );
        assert_eq!(json["desktop"]["name"], "X");
        assert_eq!(json["boot"], serde_json::Value::Null);
        assert_eq!(json["checksum"], format!("{:#018x}", r.checksum()));
        assert_eq!(
            json["regions"][1],
            serde_json::json!({"name": "environment", "offset": ENV_OFFSET, "used": 7, "capacity": ENV_CAPACITY})
        );
        let unset = serde_json::to_value(Reserved::new().summary()).unwrap();
        assert_eq!(unset["overlay"], serde_json::Value::Null);
    }

    #[test]
    fn debug_output_is_short() {
        assert!(format!("{:?}", full_block()).len() < 4_096);
    }
}
