//! `fim build` of a Docker or OCI image: a `docker save`/`podman save` archive, an OCI
//! image layout directory, or the same as a tar (oci-archive), recognised by content.
//! Every blob is checked against its digest (and each layer against its diff_id) before
//! anything is written; then each image layer becomes one fim layer, bottom first (or
//! one merged layer with `--squash`), and the image config becomes the settings.

mod layer;
mod select;
mod settings;
mod source;

use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use fim_image::ImageWriter;
use fim_layers::{BuildOptions, Progress, WhiteoutFormat};
use fim_reserved::{Origin, Reserved};
use oci_spec::image::{
    ANNOTATION_REF_NAME, Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType,
};
use serde::Deserialize;

pub use select::Platform;

use crate::progress::{Bar, report_layer};
use crate::tarball::{self, Compression};
use layer::IdFiles;
use select::Candidate;
use source::{Hashing, Store, normal};

/// The largest manifest, index or config read (they are small JSON documents).
const JSON_LIMIT: u64 = 16 << 20;
/// containerd's (and Docker 25's) full image name annotation.
const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";

/// The kinds of image input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    DockerArchive,
    OciArchive,
    OciLayout,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::DockerArchive => "docker-archive",
            Format::OciArchive => "oci-archive",
            Format::OciLayout => "oci-layout",
        }
    }
}

/// An image input, opened.
pub struct Source {
    format: Format,
    store: Store,
}

/// What the caller asked for among several images.
pub struct Request<'a> {
    pub tag: Option<&'a str>,
    pub platform: Option<Platform>,
}

/// `docker save`'s manifest.json: one entry per image (not an OCI type).
#[derive(Debug, Deserialize)]
struct DockerEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// Whether a tar archive's top-level name can belong to an image archive.
fn image_member(top: &str) -> bool {
    let hex = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    matches!(
        top,
        "manifest.json" | "repositories" | "index.json" | "oci-layout" | "blobs"
    ) || hex(top)
        || top.strip_suffix(".json").is_some_and(hex)
        || top.strip_suffix(".tar").is_some_and(hex)
}

/// Reads a tar's member names until one cannot be in an image archive (a root
/// filesystem) or the end; says which image format it is, if any.
fn tar_format<R: Read>(entries: tar::Entries<'_, R>) -> anyhow::Result<Option<Format>> {
    let (mut docker, mut oci) = (false, false);
    for entry in entries {
        let Ok(entry) = entry else { return Ok(None) };
        let Ok(path) = entry.path() else {
            return Ok(None);
        };
        let Some(name) = normal(&path.to_string_lossy()) else {
            return Ok(None);
        };
        let top = name.split('/').next().unwrap_or("");
        if top.is_empty() {
            continue;
        }
        if !image_member(top) {
            return Ok(None);
        }
        docker |= name == "manifest.json";
        oci |= name == "oci-layout";
    }
    Ok(if oci {
        Some(Format::OciArchive)
    } else if docker {
        Some(Format::DockerArchive)
    } else {
        None
    })
}

/// Recognises an image input by its content; `None` means a root filesystem (a
/// directory or tarball packed as it is). A compressed image archive is decompressed
/// into a temporary file next to `output`.
pub fn detect(input: &Path, output: &Path) -> anyhow::Result<Option<Source>> {
    let meta = std::fs::metadata(input).with_context(|| format!("{}", input.display()))?;
    if meta.is_dir() {
        let format = if input.join("oci-layout").is_file() && input.join("index.json").is_file() {
            Format::OciLayout
        } else if input.join("manifest.json").is_file() {
            Format::DockerArchive
        } else {
            return Ok(None);
        };
        let store = Store::Dir(input.to_owned());
        if format == Format::DockerArchive
            && serde_json::from_slice::<Vec<DockerEntry>>(
                &store.read_small("manifest.json", JSON_LIMIT)?,
            )
            .is_err()
        {
            return Ok(None);
        }
        return Ok(Some(Source { format, store }));
    }
    if !meta.is_file() {
        return Ok(None);
    }
    let open = || File::open(input).with_context(|| format!("cannot open {}", input.display()));
    let mut head = [0u8; 6];
    let n = open()?.read(&mut head)?;
    let compression = tarball::sniff(&head[..n]);
    if compression == Compression::None {
        let mut archive = tar::Archive::new(open()?);
        let Some(format) = tar_format(archive.entries_with_seek()?)? else {
            return Ok(None);
        };
        let store = Store::tar(open()?, None)?;
        return Ok(Some(Source { format, store }));
    }
    let stream = tarball::decoder(BufReader::new(open()?), compression)?;
    let Some(format) = tar_format(tar::Archive::new(stream).entries()?)? else {
        return Ok(None);
    };
    let parent = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut plain = tempfile::Builder::new()
        .prefix(".fim-import")
        .tempfile_in(&parent)
        .with_context(|| format!("creating a temporary file in {}", parent.display()))?;
    let mut stream = tarball::decoder(BufReader::new(open()?), compression)?;
    std::io::copy(&mut stream, plain.as_file_mut())
        .with_context(|| format!("decompressing {}", input.display()))?;
    plain.as_file_mut().rewind()?;
    let file = plain.reopen()?;
    let store = Store::tar(file, Some(plain))?;
    Ok(Some(Source { format, store }))
}

/// One layer blob as the manifest describes it.
struct Blob {
    /// Path inside the archive.
    name: String,
    /// `sha256:...` of the blob as stored, when the source records it.
    digest: Option<String>,
    size: Option<u64>,
    /// `None`: recognised from the first bytes (Docker archives).
    compression: Option<Compression>,
    /// `sha256:...` of the uncompressed tar, from the image config.
    diff_id: String,
}

/// The chosen image, checked whole and ready to write.
pub struct Plan {
    store: Store,
    origin: Origin,
    settings: settings::Settings,
    blobs: Vec<Blob>,
}

fn blob_path(digest: &str) -> anyhow::Result<String> {
    let (algorithm, hex) = digest
        .split_once(':')
        .with_context(|| format!("'{digest}' is not a digest"))?;
    if algorithm != "sha256" {
        bail!("blob {digest} uses {algorithm}; fim checks sha256 digests only");
    }
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("'{digest}' is not a sha256 digest");
    }
    Ok(format!("blobs/sha256/{hex}"))
}

/// A small blob named by `digest`, checked against it (and `size` when known).
fn read_blob(
    store: &Store,
    digest: &str,
    size: Option<u64>,
    what: &str,
) -> anyhow::Result<Vec<u8>> {
    let path = blob_path(digest)?;
    if !store.has(&path) {
        bail!("the {what} names blob {digest}, which the archive does not hold");
    }
    let bytes = store.read_small(&path, JSON_LIMIT)?;
    let (actual, len) = sha256(&bytes);
    if (actual != digest || size.is_some_and(|s| s != len)) && !crate::FUZZING {
        bail!(
            "blob {digest} ({what}) does not match its digest (it hashes to {actual}, {len} bytes): the archive is damaged"
        );
    }
    Ok(bytes)
}

fn sha256(bytes: &[u8]) -> (String, u64) {
    let (mut r, state) = Hashing::new(bytes, None);
    let _ = std::io::copy(&mut r, &mut std::io::sink());
    state.digest()
}

/// The layer compression a media type names.
fn layer_compression(media: &MediaType) -> anyhow::Result<Compression> {
    Ok(match media {
        MediaType::ImageLayer | MediaType::ImageLayerNonDistributable => Compression::None,
        MediaType::ImageLayerGzip | MediaType::ImageLayerNonDistributableGzip => Compression::Gzip,
        MediaType::ImageLayerZstd | MediaType::ImageLayerNonDistributableZstd => Compression::Zstd,
        MediaType::Other(t) if t == "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
            Compression::Gzip
        }
        MediaType::Other(t) if t == "application/vnd.docker.image.rootfs.diff.tar" => {
            Compression::None
        }
        other => bail!(
            "a layer has media type {other}, which fim cannot read (tar, tar+gzip or tar+zstd)"
        ),
    })
}

fn is_index(media: &MediaType) -> bool {
    matches!(media, MediaType::ImageIndex)
        || matches!(media, MediaType::Other(t) if t == "application/vnd.docker.distribution.manifest.list.v2+json")
}

fn descriptor_tags(d: &Descriptor) -> Vec<String> {
    let Some(notes) = d.annotations() else {
        return Vec::new();
    };
    [ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME]
        .iter()
        .filter_map(|k| notes.get(*k).cloned())
        .collect()
}

fn descriptor_platform(d: &Descriptor) -> Option<Platform> {
    d.platform().as_ref().map(|p| Platform {
        os: p.os().to_string(),
        arch: p.architecture().to_string(),
        variant: p.variant().clone(),
    })
}

/// Picks the image, reads its manifest and config, checks every blob, and derives the
/// settings. Nothing is written.
pub fn plan(source: Source, request: &Request) -> anyhow::Result<Plan> {
    let Source { format, store } = source;
    let wanted = request
        .platform
        .clone()
        .unwrap_or_else(Platform::default_target);
    let given = request.platform.is_some();
    let (origin, config, blobs) = match format {
        Format::DockerArchive => {
            let text = store.read_small("manifest.json", JSON_LIMIT)?;
            let entries: Vec<DockerEntry> = serde_json::from_slice(&text)
                .context("manifest.json is not a docker-archive manifest")?;
            let candidates: Vec<Candidate> = entries
                .iter()
                .map(|e| Candidate {
                    tags: e.repo_tags.clone().unwrap_or_default(),
                    platform: None,
                })
                .collect();
            let entry = &entries[select::choose(&candidates, request.tag, &wanted, given)?];
            if !store.has(&entry.config) {
                bail!(
                    "manifest.json names config {}, which the archive does not hold",
                    entry.config
                );
            }
            let bytes = store.read_small(&entry.config, JSON_LIMIT)?;
            let (config_digest, _) = sha256(&bytes);
            let stem = Path::new(&entry.config)
                .file_name()
                .map(|n| n.to_string_lossy().trim_end_matches(".json").to_string())
                .unwrap_or_default();
            if stem.len() == 64 && !config_digest.ends_with(&stem) && !crate::FUZZING {
                bail!(
                    "blob {} (image config) does not match its digest (it hashes to {config_digest}): the archive is damaged",
                    entry.config
                );
            }
            let config = ImageConfiguration::from_reader(&bytes[..])
                .with_context(|| format!("{} is not an image config", entry.config))?;
            let diff_ids = config.rootfs().diff_ids();
            if diff_ids.len() != entry.layers.len() {
                bail!(
                    "manifest.json lists {} layers but the image config {}",
                    entry.layers.len(),
                    diff_ids.len()
                );
            }
            let mut blobs = Vec::new();
            for (name, diff_id) in entry.layers.iter().zip(diff_ids) {
                if !store.has(name) {
                    bail!("manifest.json names layer {name}, which the archive does not hold");
                }
                let digest = name
                    .strip_prefix("blobs/sha256/")
                    .map(|hex| format!("sha256:{hex}"));
                blobs.push(Blob {
                    name: name.clone(),
                    digest,
                    size: None,
                    compression: None,
                    diff_id: diff_id.clone(),
                });
            }
            let origin = Origin {
                format: format.name().into(),
                reference: entry.repo_tags.as_ref().and_then(|t| t.first().cloned()),
                digest: None,
                config: config_digest,
            };
            (origin, config, blobs)
        }
        Format::OciArchive | Format::OciLayout => {
            if !store.has("oci-layout") {
                bail!("the image layout has no oci-layout file");
            }
            oci_spec::image::OciLayout::from_reader(
                &store.read_small("oci-layout", JSON_LIMIT)?[..],
            )
            .context("oci-layout is not an OCI layout header")?;
            let index = ImageIndex::from_reader(&store.read_small("index.json", JSON_LIMIT)?[..])
                .context("index.json is not an OCI image index")?;
            let mut found: Vec<(Descriptor, Candidate)> = Vec::new();
            for d in index.manifests() {
                let tags = descriptor_tags(d);
                if is_index(d.media_type()) {
                    let bytes = read_blob(&store, d.digest().as_ref(), Some(d.size()), "index")?;
                    let nested = ImageIndex::from_reader(&bytes[..])
                        .with_context(|| format!("blob {} is not an image index", d.digest()))?;
                    for m in nested.manifests() {
                        found.push((
                            m.clone(),
                            Candidate {
                                tags: tags.clone(),
                                platform: descriptor_platform(m),
                            },
                        ));
                    }
                } else {
                    found.push((
                        d.clone(),
                        Candidate {
                            tags,
                            platform: descriptor_platform(d),
                        },
                    ));
                }
            }
            let candidates: Vec<Candidate> = found.iter().map(|(_, c)| c.clone()).collect();
            let (descriptor, chosen) =
                &found[select::choose(&candidates, request.tag, &wanted, given)?];
            let digest = descriptor.digest().to_string();
            let bytes = read_blob(&store, &digest, Some(descriptor.size()), "index")?;
            let manifest = ImageManifest::from_reader(&bytes[..])
                .with_context(|| format!("blob {digest} is not an image manifest"))?;
            let c = manifest.config();
            let config_digest = c.digest().to_string();
            let config_bytes = read_blob(&store, &config_digest, Some(c.size()), "manifest")?;
            let config = ImageConfiguration::from_reader(&config_bytes[..])
                .with_context(|| format!("blob {config_digest} is not an image config"))?;
            let diff_ids = config.rootfs().diff_ids();
            if diff_ids.len() != manifest.layers().len() {
                bail!(
                    "the manifest lists {} layers but the image config {}",
                    manifest.layers().len(),
                    diff_ids.len()
                );
            }
            let mut blobs = Vec::new();
            for (d, diff_id) in manifest.layers().iter().zip(diff_ids) {
                let layer_digest = d.digest().to_string();
                let name = blob_path(&layer_digest)?;
                if !store.has(&name) {
                    bail!(
                        "the manifest names blob {layer_digest}, which the archive does not hold"
                    );
                }
                blobs.push(Blob {
                    name,
                    digest: Some(layer_digest),
                    size: Some(d.size()),
                    compression: Some(layer_compression(d.media_type())?),
                    diff_id: diff_id.clone(),
                });
            }
            let origin = Origin {
                format: format.name().into(),
                reference: chosen.tags.first().cloned(),
                digest: Some(digest),
                config: config_digest,
            };
            (origin, config, blobs)
        }
    };
    let image_platform = Platform {
        os: config.os().to_string(),
        arch: config.architecture().to_string(),
        variant: config.variant().clone(),
    };
    if !image_platform.serves(&wanted) {
        bail!(
            "the image is for {image_platform}, not {wanted}: pass --platform {image_platform} to import it anyway"
        );
    }
    let ids = check_blobs(&store, &blobs)?;
    let settings = settings::from_config(config.config().as_ref(), &ids)?;
    Ok(Plan {
        store,
        origin,
        settings,
        blobs,
    })
}

/// Reads every layer blob once: its digest and size, its diff_id, and every member
/// under the layer rules. Returns the account files of the whole stack.
fn check_blobs(store: &Store, blobs: &[Blob]) -> anyhow::Result<IdFiles> {
    let mut total = 0;
    for blob in blobs {
        total += store.size(&blob.name)?;
    }
    let bar = Bar::new("checking blobs");
    bar.start(total);
    let mut ids = IdFiles::default();
    for (index, blob) in blobs.iter().enumerate() {
        let what = blob.digest.as_deref().unwrap_or(&blob.name);
        let ticker = bar.clone();
        let (mut raw, raw_state) = Hashing::new(
            store.open(&blob.name)?,
            Some(Box::new(move |n| ticker.advance(n))),
        );
        let mut plain_state = None;
        let checked = (|| -> anyhow::Result<()> {
            let (sniffed, stream) = tarball::sniffed(&mut raw)?;
            let compression = blob.compression.unwrap_or(sniffed);
            let (plain, state) = Hashing::new(tarball::decoder(stream, compression)?, None);
            plain_state = Some(state);
            layer::check(plain, &mut ids)?;
            Ok(())
        })();
        std::io::copy(&mut raw, &mut std::io::sink())
            .with_context(|| format!("reading {}", blob.name))?;
        let (actual, len) = raw_state.digest();
        let bad_digest = blob.digest.as_ref().is_some_and(|d| *d != actual);
        let bad_size = blob.size.is_some_and(|s| s != len);
        if (bad_digest || bad_size) && !crate::FUZZING {
            bail!(
                "blob {what} (layer {index}) does not match its digest (it hashes to {actual}, {len} bytes): the archive is damaged"
            );
        }
        checked.with_context(|| format!("layer {index} (blob {what})"))?;
        let diff_id = plain_state.map(|s| s.digest().0).unwrap_or_default();
        if diff_id != blob.diff_id && !crate::FUZZING {
            bail!(
                "blob {what} (layer {index}) does not match the image config's diff_id {} (its tar hashes to {diff_id}): the archive is damaged",
                blob.diff_id
            );
        }
    }
    bar.finish();
    Ok(ids)
}

impl Plan {
    /// The image's settings into the reserved block.
    pub fn apply(&self, reserved: &mut Reserved) -> anyhow::Result<()> {
        if let Some(boot) = &self.settings.boot {
            reserved
                .set_boot(Some(boot))
                .map_err(|e| anyhow::anyhow!("the image's boot command: {e}"))?;
        }
        reserved
            .set_env(&self.settings.env)
            .map_err(|e| anyhow::anyhow!("the image's Env: {e}"))?;
        reserved
            .set_origin(Some(&self.origin))
            .map_err(|e| anyhow::anyhow!("the image's origin: {e}"))?;
        Ok(())
    }

    /// The working directory the image config gives, for `--boot` to keep.
    pub fn workdir(&self) -> Option<String> {
        self.settings.boot.as_ref().and_then(|b| b.workdir.clone())
    }

    pub fn describe(&self) -> String {
        format!(
            "{} {} ({} layer(s), config {})",
            self.origin.format,
            self.origin.reference.as_deref().unwrap_or("(untagged)"),
            self.blobs.len(),
            self.origin.config
        )
    }

    /// Unpacks each layer next to `output` and appends it (or, with `squash`, merges them
    /// all into one); returns the bytes of content packed.
    pub fn write_layers(
        &self,
        writer: &mut ImageWriter,
        options: &BuildOptions,
        squash: bool,
        output: &Path,
    ) -> anyhow::Result<u64> {
        let staging = |what: &str| -> anyhow::Result<Staging> {
            let parent = match output.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
                _ => PathBuf::from("."),
            };
            let dir = tempfile::Builder::new()
                .prefix(what)
                .tempdir_in(&parent)
                .with_context(|| format!("creating a staging directory in {}", parent.display()))?;
            Ok(Staging(dir))
        };
        let mut options = options.clone();
        options.whiteouts = if squash {
            WhiteoutFormat::None
        } else {
            WhiteoutFormat::Oci
        };
        let squashed = if squash {
            Some(staging(".fim-squash")?)
        } else {
            None
        };
        let mut total = 0;
        for (index, blob) in self.blobs.iter().enumerate() {
            let dir = staging(".fim-layer")?;
            let (sniffed, stream) = tarball::sniffed(self.store.open(&blob.name)?)?;
            let compression = blob.compression.unwrap_or(sniffed);
            tarball::unpack_stream(tarball::decoder(stream, compression)?, dir.path())
                .with_context(|| format!("unpacking layer {index} ({})", blob.name))?;
            if let Some(acc) = &squashed {
                layer::merge(dir.path(), acc.path())
                    .with_context(|| format!("squashing layer {index}"))?;
                continue;
            }
            total += add(writer, dir.path(), &options, index)?;
        }
        if let Some(acc) = &squashed {
            total += add(writer, acc.path(), &options, 0)?;
        }
        Ok(total)
    }
}

fn add(
    writer: &mut ImageWriter,
    dir: &Path,
    options: &BuildOptions,
    index: usize,
) -> anyhow::Result<u64> {
    let bar = Bar::new(&format!("layer {index}"));
    let stats = writer
        .add_layer_from_dir(dir, options, &bar)
        .with_context(|| format!("building layer {index}"))?;
    bar.finish();
    report_layer(index, &stats);
    Ok(stats.content_bytes)
}

/// A staging directory, made removable (read-only directories) before it is dropped.
struct Staging(tempfile::TempDir);

impl Staging {
    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        tarball::make_removable(self.0.path());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_archives_are_told_from_root_filesystems_by_their_members() {
        assert!(image_member("manifest.json"));
        assert!(image_member("oci-layout"));
        assert!(image_member("blobs"));
        assert!(image_member(&"a".repeat(64)));
        assert!(image_member(&format!("{}.json", "0".repeat(64))));
        assert!(!image_member("etc"));
        assert!(!image_member("bin"));
        assert!(!image_member("abc.json"));
    }

    #[test]
    fn blob_paths_come_from_sha256_digests_only() {
        let hex = "ab".repeat(32);
        assert_eq!(
            blob_path(&format!("sha256:{hex}")).unwrap(),
            format!("blobs/sha256/{hex}")
        );
        assert!(
            blob_path("sha512:abc")
                .unwrap_err()
                .to_string()
                .contains("sha256 digests only")
        );
        assert!(blob_path("sha256:../../etc/passwd").is_err());
        assert!(blob_path("nocolon").is_err());
    }

    #[test]
    fn a_flipped_byte_is_caught_by_the_digest_check() {
        let dir = tempfile::tempdir().unwrap();
        let blob = b"{\"a\":1}";
        let (digest, _) = sha256(blob);
        let path = dir.path().join(blob_path(&digest).unwrap());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, blob).unwrap();
        let store = Store::Dir(dir.path().to_owned());
        assert_eq!(
            read_blob(&store, &digest, Some(7), "manifest").unwrap(),
            blob
        );
        std::fs::write(&path, b"{\"a\":2}").unwrap();
        let err = read_blob(&store, &digest, None, "manifest")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!(
                "blob {digest} (manifest) does not match its digest"
            )),
            "{err}"
        );
        let missing = format!("sha256:{}", "0".repeat(64));
        let err = read_blob(&store, &missing, None, "index")
            .unwrap_err()
            .to_string();
        assert!(err.contains("which the archive does not hold"), "{err}");
    }

    #[test]
    fn layer_media_types_map_to_compressions() {
        assert_eq!(
            layer_compression(&MediaType::ImageLayer).unwrap(),
            Compression::None
        );
        assert_eq!(
            layer_compression(&MediaType::ImageLayerGzip).unwrap(),
            Compression::Gzip
        );
        assert_eq!(
            layer_compression(&MediaType::ImageLayerZstd).unwrap(),
            Compression::Zstd
        );
        let docker = MediaType::from("application/vnd.docker.image.rootfs.diff.tar.gzip");
        assert_eq!(layer_compression(&docker).unwrap(), Compression::Gzip);
        assert!(layer_compression(&MediaType::from("application/x-foo")).is_err());
    }
}
