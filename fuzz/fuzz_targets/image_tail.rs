//! The image container: footer, layer table, tool table and the layers they point at,
//! after a fixed launcher and reserved block. Opening, verifying every byte, reading each
//! tool and opening each layer never panic.
#![no_main]

use std::path::Path;

use fim_layers::BlockCache;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|tail: &[u8]| {
    let mut bytes = fim_fuzz::image_head().to_vec();
    bytes.extend_from_slice(tail);
    let Ok(image) = fim_image::Image::from_map(fim_fuzz::map(&bytes), Path::new("fuzz")) else {
        return;
    };
    let _ = image.verify();
    let names: Vec<String> = image
        .tool_entries()
        .iter()
        .map(|t| t.name.clone())
        .collect();
    for name in names {
        let _ = image.tool(&name);
    }
    let cache = BlockCache::new(1 << 20);
    for index in 0..image.layer_entries().len() {
        let _ = image.layer(index, cache.clone());
    }
});
