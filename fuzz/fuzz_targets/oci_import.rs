//! A Docker or OCI image archive (`docker save`, oci-archive, compressed or not), through
//! what `fim build` does with one: recognise it by content, pick the image and check its
//! manifests, config and every layer blob against their digests, derive the settings, and,
//! when all that holds, unpack and pack its layers (one by one, then squashed) into an image
//! that is never finished. Temporary files go beside a staging directory inside a sandbox
//! that nothing outside may change. Errors are fine; panics, hangs and escapes are bugs.
#![no_main]

use fim_fuzz::Sandbox;
use fim_image::ImageWriter;
use fim_layers::BuildOptions;
use fim_packer::oci::{self, Request};
use fim_reserved::Reserved;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut sandbox = Sandbox::new();
    let input = sandbox.input(data);
    let output = sandbox.beside().join("image.fim");
    if let Ok(Some(source)) = oci::detect(&input, &output) {
        let request = Request {
            tag: None,
            platform: None,
        };
        if let Ok(plan) = oci::plan(source, &request) {
            let mut reserved = Reserved::new();
            let _ = plan.apply(&mut reserved);
            let _ = plan.describe();
            let _ = plan.workdir();
            let options = BuildOptions {
                level: 1,
                ..BuildOptions::default()
            };
            for squash in [false, true] {
                let mut writer =
                    ImageWriter::create(&output, &fim_fuzz::tiny_launcher(), &reserved)
                        .expect("an image writer with the tiny launcher");
                let _ = plan.write_layers(&mut writer, &options, squash, &output);
            }
        }
    }
    sandbox.assert_untouched();
});
