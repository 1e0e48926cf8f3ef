//! Every end-to-end test, in one test program: one link instead of one per file, images that
//! the shared helpers build once (the busybox image, the Debian root) built once for all, and
//! the test harness free to run the slow tests of one area beside the quick ones of another.
//! Each module is one area; `cargo test --test e2e AREA::` runs one (for example `apt::`).

mod apt;
mod casefold;
mod cli;
mod config;
mod corruption;
mod data_reset;
mod desktop;
mod embedded;
mod ephemeral;
mod faults;
mod full_disks;
mod hostile;
mod instance;
mod layers;
mod load;
mod oci;
mod overlay;
mod permissions;
mod roundtrip;
mod run;
mod selfcontained;
mod settings;
mod stack;
