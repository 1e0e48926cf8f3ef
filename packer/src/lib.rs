//! What `fim build` reads from outside: root-filesystem tarballs and Docker/OCI images,
//! unpacked into staging directories and checked before anything is written, and the
//! progress it reports meanwhile. A library so that the fuzz targets (`fuzz/`) can drive
//! the same import code as the `fim` binary, which holds the command line.

pub mod oci;
pub mod progress;
pub mod tarball;

/// True only in the fuzz targets' build (`tools/fuzz` passes `--cfg fuzzing`): blob digests,
/// sizes and diff_ids are then not compared, so the fuzzer reaches the manifests, configs and
/// layers behind them. An image archive names its own digests, so whoever writes one can
/// make them match: what lies behind them must hold against any bytes too.
pub(crate) const FUZZING: bool = cfg!(fuzzing);
