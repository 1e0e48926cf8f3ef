//! A root-filesystem tarball, through the unpacker `fim build` uses: the bytes as a plain
//! tar stream, and, when they start with a gzip, zstd or xz magic, decompressed the way
//! the packer recognises them. Each unpack goes into a fresh staging directory a few levels
//! down a temporary tree holding canaries; afterwards nothing but the staging directory may
//! have changed in that tree. Errors are fine; panics, hangs and escapes are bugs.
#![no_main]

use std::io::Read;

use fim_fuzz::Sandbox;
use fim_packer::tarball::{self, Compression};
use libfuzzer_sys::fuzz_target;

/// The most a compressed input may unpack to: a small input can decompress to gigabytes,
/// which is a big root filesystem rather than a bug, and would only slow the fuzzer down.
const DECOMPRESSED_LIMIT: u64 = 64 << 20;

fuzz_target!(|data: &[u8]| {
    let sandbox = Sandbox::new();
    let _ = tarball::unpack_stream(data, sandbox.staging());
    sandbox.assert_untouched();

    if tarball::sniff(data) != Compression::None {
        let sandbox = Sandbox::new();
        let unpacked = tarball::sniffed(data).and_then(|(compression, stream)| {
            let plain = tarball::decoder(stream, compression)?.take(DECOMPRESSED_LIMIT);
            tarball::unpack_stream(plain, sandbox.staging())
        });
        let _ = unpacked;
        sandbox.assert_untouched();
    }
});
