//! What the fuzz targets share: fuzz bytes as the read-only memory map every reader of
//! images takes, and the fixed head that image-tail inputs are appended to.

use std::sync::Arc;

use memmap2::{Mmap, MmapMut};

/// `bytes` in an anonymous read-only map (a zero-length input gets one zero byte: a map
/// cannot be empty).
pub fn map(bytes: &[u8]) -> Arc<Mmap> {
    let mut map = MmapMut::map_anon(bytes.len().max(1)).expect("anonymous map");
    map[..bytes.len()].copy_from_slice(bytes);
    Arc::new(map.make_read_only().expect("read-only map"))
}

/// The smallest launcher the packer accepts: a 120-byte x86_64 ELF, its header and one
/// loadable segment (`fuzz/tiny-launcher.hex`). `tools/fuzz` builds the seed images with the
/// same file (`fim build --launcher`), so their offsets match [`image_head`].
pub fn tiny_launcher() -> Vec<u8> {
    let hex = include_str!("../tiny-launcher.hex").trim();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("tiny-launcher.hex is hex"))
        .collect()
}

/// What every image built with [`tiny_launcher`] starts with: the launcher with the mark
/// the packer writes (`FI\x01` at byte 8), zero padding to 4096, and a default reserved block. Image-tail inputs
/// (layers, tools, layer table, footer) follow it.
pub fn image_head() -> &'static [u8] {
    static HEAD: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    HEAD.get_or_init(|| {
        let mut head = tiny_launcher();
        let mark = fim_image::IMAGE_MARK_OFFSET..fim_image::IMAGE_MARK_OFFSET + 3;
        head[mark].copy_from_slice(&fim_image::IMAGE_MARK);
        head.resize(4096, 0);
        head.extend_from_slice(&fim_reserved::Reserved::new().to_bytes());
        head
    })
}
