//! The reserved block, as every launcher reads it at start: decoding never panics, and a
//! block that decodes encodes back to the same bytes.
#![no_main]

use fim_reserved::Reserved;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(block) = Reserved::decode(data) {
        let _ = block.summary();
        let _ = (
            block.boot(),
            block.env(),
            block.binds(),
            block.icon(),
            block.desktop(),
        );
        let again = Reserved::decode(&block.to_bytes()).expect("an encoded block decodes");
        assert_eq!(again.to_bytes(), block.to_bytes());
    }
});
