//! The app's icon. [`read_icon`] takes the packager's file and keeps it only if it is what
//! it claims: a PNG that decodes or an SVG document whose root element is `<svg>`, and
//! only if it fits the reserved icon region (`fim_reserved::ICON_DATA_CAPACITY` bytes).
//! JPEG, which FlatImage also takes, is refused with a line saying to convert it: its
//! decoder would add a quarter of a megabyte to every image's launcher. [`render_png`] makes
//! the square PNGs of the hicolor theme's sizes from a stored raster icon; an SVG is
//! installed as it is.

use std::io::Cursor;
use std::path::Path;

use fim_reserved::{ICON_DATA_CAPACITY, Icon};
use image::codecs::png::PngEncoder;
use image::imageops::FilterType;
use image::{
    DynamicImage, ExtendedColorType, ImageEncoder, ImageFormat, ImageReader, Limits, RgbaImage,
};

use crate::DesktopError;

/// The sizes of `icons/hicolor/NxN/apps/`, in pixels.
pub const ICON_SIZES: [u32; 10] = [16, 22, 24, 32, 48, 64, 96, 128, 256, 512];

/// Decoding refuses pictures wider or higher than this (a few bytes can claim a huge one).
const SIDE_LIMIT: u32 = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IconKind {
    /// A picture of pixels: rendered to each size.
    Raster,
    /// A scalable SVG: installed as it is.
    Svg,
}

impl IconKind {
    /// How a stored icon is read, from the extension it was stored with.
    pub fn of(icon: &Icon) -> Option<IconKind> {
        match icon.extension.as_str() {
            "png" => Some(IconKind::Raster),
            "svg" => Some(IconKind::Svg),
            _ => None,
        }
    }
}

/// Reads the icon at `path` for storing in an image.
pub fn read_icon(path: &Path) -> Result<Icon, DesktopError> {
    let refuse = |reason: String| DesktopError::Icon {
        path: path.to_owned(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| refuse(format!("cannot be read: {e}")))?;
    if !meta.is_file() {
        return Err(refuse("is not a file".into()));
    }
    let too_big = |size: u64| {
        refuse(format!(
            "is {size} bytes; the image holds an icon of at most {ICON_DATA_CAPACITY} bytes: \
             use a PNG of 512x512 pixels or less, or an SVG"
        ))
    };
    const READ_MAX: u64 = 16 << 20;
    if meta.len() > READ_MAX {
        return Err(too_big(meta.len()));
    }
    let data = std::fs::read(path).map_err(|e| refuse(format!("cannot be read: {e}")))?;
    let is_jpeg = data.starts_with(&[0xff, 0xd8, 0xff]);
    if data.len() > ICON_DATA_CAPACITY {
        return Err(too_big(data.len() as u64));
    }
    let (extension, data) = if data.starts_with(b"\x89PNG\r\n\x1a\n") {
        decode(&data, ImageFormat::Png).map_err(|e| refuse(format!("is not a valid PNG: {e}")))?;
        ("png", data)
    } else if is_jpeg {
        return Err(refuse(
            "is a JPEG: convert it to PNG (an image keeps PNG or SVG icons)".into(),
        ));
    } else if is_svg(&data) {
        ("svg", data)
    } else {
        return Err(refuse("is not a PNG or SVG image".into()));
    };
    if data.len() > ICON_DATA_CAPACITY {
        return Err(too_big(data.len() as u64));
    }
    Icon::new(extension, data).map_err(|e| refuse(e.to_string()))
}

/// An SVG document: UTF-8 XML whose root element is `svg`.
fn is_svg(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let options = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    roxmltree::Document::parse_with_options(text, options)
        .is_ok_and(|doc| doc.root_element().tag_name().name() == "svg")
}

fn decode(data: &[u8], format: ImageFormat) -> Result<DynamicImage, image::ImageError> {
    let mut reader = ImageReader::with_format(Cursor::new(data), format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(SIDE_LIMIT);
    limits.max_image_height = Some(SIDE_LIMIT);
    reader.limits(limits);
    reader.decode()
}

/// One PNG encoder for every picture: RGBA, 8 bits a channel (fewer code paths linked
/// into the launcher than the generic writers).
fn encode_png(picture: &RgbaImage) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    PngEncoder::new(&mut out)
        .write_image(
            picture.as_raw(),
            picture.width(),
            picture.height(),
            ExtendedColorType::Rgba8,
        )
        .map_err(|e| format!("cannot be encoded as PNG: {e}"))?;
    Ok(out)
}

/// The stored raster icon `data` as square PNGs of the [`ICON_SIZES`] it can fill without
/// enlarging (at least the smallest), each centred on a transparent square.
pub fn render_png(data: &[u8]) -> Result<Vec<(u32, Vec<u8>)>, DesktopError> {
    let picture = ImageReader::new(Cursor::new(data))
        .with_guessed_format()
        .map_err(|e| DesktopError::StoredIcon(e.to_string()))
        .and_then(|r| {
            let format = r
                .format()
                .ok_or_else(|| DesktopError::StoredIcon("unknown format".into()))?;
            decode(data, format).map_err(|e| DesktopError::StoredIcon(e.to_string()))
        })?;
    let side = picture.width().max(picture.height());
    let rgba = picture.to_rgba8();
    ICON_SIZES
        .iter()
        .copied()
        .filter(|&size| size <= side || size == ICON_SIZES[0])
        .map(|size| {
            encode_png(&fit_square(&rgba, size))
                .map(|png| (size, png))
                .map_err(DesktopError::StoredIcon)
        })
        .collect()
}

/// `picture` scaled to fit `size`x`size`, keeping its proportions, centred.
fn fit_square(picture: &RgbaImage, size: u32) -> RgbaImage {
    let (w, h) = picture.dimensions();
    let scale = f64::from(size) / f64::from(w.max(h));
    let (sw, sh) = (
        ((f64::from(w) * scale).round() as u32).clamp(1, size),
        ((f64::from(h) * scale).round() as u32).clamp(1, size),
    );
    let scaled = image::imageops::resize(picture, sw, sh, FilterType::Lanczos3);
    let mut square = RgbaImage::new(size, size);
    image::imageops::overlay(
        &mut square,
        &scaled,
        i64::from((size - sw) / 2),
        i64::from((size - sh) / 2),
    );
    square
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        encode_png(&RgbaImage::from_pixel(
            w,
            h,
            image::Rgba([200, 10, 10, 255]),
        ))
        .unwrap()
    }

    fn file(bytes: &[u8]) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), bytes).unwrap();
        f
    }

    #[test]
    fn png_is_kept_byte_for_byte() {
        let bytes = png(64, 64);
        let icon = read_icon(file(&bytes).path()).unwrap();
        assert_eq!((icon.extension.as_str(), icon.data), ("png", bytes));
    }

    #[test]
    fn svg_is_recognised_by_its_root_element() {
        let svg = br#"<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="1" height="1"/>"#;
        assert_eq!(read_icon(file(svg).path()).unwrap().extension, "svg");
        let not_svg = br#"<?xml version="1.0"?><html/>"#;
        assert!(read_icon(file(not_svg).path()).is_err());
    }

    #[test]
    fn text_file_is_refused_as_not_an_image() {
        let e = read_icon(file(b"hello\n").path()).unwrap_err().to_string();
        assert!(e.contains("is not a PNG or SVG image"), "{e}");
    }

    #[test]
    fn jpeg_is_refused_with_what_to_do() {
        let e = read_icon(file(&[0xff, 0xd8, 0xff, 0xe0, 0, 16]).path()).unwrap_err();
        assert!(e.to_string().contains("convert it to PNG"), "{e}");
    }

    #[test]
    fn truncated_png_is_refused() {
        let bytes = png(64, 64);
        let e = read_icon(file(&bytes[..40]).path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not a valid PNG"), "{e}");
    }

    #[test]
    fn oversized_icon_is_refused_with_the_limit() {
        let mut bytes = png(8, 8);
        bytes.resize(ICON_DATA_CAPACITY + 1, 0);
        let e = read_icon(file(&bytes).path()).unwrap_err().to_string();
        assert!(e.contains(&ICON_DATA_CAPACITY.to_string()), "{e}");
    }

    #[test]
    fn missing_icon_is_refused() {
        assert!(read_icon(Path::new("/nonexistent/icon.png")).is_err());
    }

    #[test]
    fn renders_every_size_up_to_the_source_as_exact_squares() {
        let sizes = render_png(&png(300, 150)).unwrap();
        let got: Vec<u32> = sizes.iter().map(|(s, _)| *s).collect();
        assert_eq!(got, [16, 22, 24, 32, 48, 64, 96, 128, 256]);
        for (size, bytes) in sizes {
            let back = image::load_from_memory(&bytes).unwrap();
            assert_eq!((back.width(), back.height()), (size, size));
        }
    }

    #[test]
    fn tiny_source_still_gives_the_smallest_size() {
        let sizes = render_png(&png(8, 8)).unwrap();
        assert_eq!(sizes.len(), 1);
        assert_eq!(sizes[0].0, 16);
    }
}
