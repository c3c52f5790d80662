//! Product images before they become a command: the format told by the bytes themselves
//! (magic numbers, then a full decode), a thumbnail made once, and content addresses
//! (SHA-256). Decoding runs on the blocking pool, a few at a time.

use std::io::Cursor;
use std::sync::OnceLock;

use image::{DynamicImage, ImageReader, Limits};
use sha2::{Digest, Sha256};
use store::{ImageFormat, MediaBlob, MediaRef, ProductImage};
use tokio::sync::Semaphore;

use crate::error::{ApiError, ApiResult};

/// Thumbnails fit in a square of this many pixels (aspect kept).
pub const THUMBNAIL_SIZE: u32 = 320;
/// Largest width or height of an accepted image: bounds the memory a decode takes.
const MAX_DIMENSION: u32 = 8192;
/// Memory one decode may allocate.
const MAX_DECODE_ALLOC: u64 = 256 * 1024 * 1024;
const THUMBNAIL_JPEG_QUALITY: u8 = 82;

const NOT_AN_IMAGE: &str =
    "Upload a valid image. The file you uploaded was either not an image or a corrupted image.";

/// An uploaded image ready for the `AddProductImage` command.
pub struct ProcessedImage {
    pub image: ProductImage,
    pub blobs: Vec<MediaBlob>,
}

/// The format the bytes begin with, whatever the upload's name or type says.
pub fn sniff(bytes: &[u8]) -> Option<ImageFormat> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(ImageFormat::Jpeg)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(ImageFormat::Png)
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some(ImageFormat::Webp)
    } else {
        None
    }
}

fn codec(format: ImageFormat) -> image::ImageFormat {
    match format {
        ImageFormat::Jpeg => image::ImageFormat::Jpeg,
        ImageFormat::Png => image::ImageFormat::Png,
        ImageFormat::Webp => image::ImageFormat::WebP,
    }
}

/// The SHA-256 of `bytes`, in lower-case hex.
pub fn content_hash(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `text` has the shape of a [`content_hash`].
pub fn is_content_hash(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A thumbnail of `image`: JPEG, or PNG when the image has transparency.
fn thumbnail(image: &DynamicImage) -> ApiResult<(ImageFormat, Vec<u8>)> {
    let small = image.thumbnail(THUMBNAIL_SIZE, THUMBNAIL_SIZE);
    let mut bytes = Vec::new();
    let format = if small.color().has_alpha() {
        small
            .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
            .map_err(|e| ApiError::Internal(format!("cannot encode a thumbnail: {e}")))?;
        ImageFormat::Png
    } else {
        let rgb = small.to_rgb8();
        let encoder =
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, THUMBNAIL_JPEG_QUALITY);
        rgb.write_with_encoder(encoder)
            .map_err(|e| ApiError::Internal(format!("cannot encode a thumbnail: {e}")))?;
        ImageFormat::Jpeg
    };
    Ok((format, bytes))
}

/// Checks that `bytes` are a whole JPEG, PNG or WebP image (400 otherwise) and makes its
/// thumbnail and content addresses. Blocking: call through [`process`].
pub fn process_blocking(bytes: Vec<u8>) -> ApiResult<ProcessedImage> {
    let format = sniff(&bytes).ok_or_else(|| ApiError::BadRequest(NOT_AN_IMAGE.into()))?;
    let mut reader = ImageReader::with_format(Cursor::new(bytes.as_slice()), codec(format));
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_DIMENSION);
    limits.max_image_height = Some(MAX_DIMENSION);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    reader.limits(limits);
    let decoded = reader.decode().map_err(|error| match error {
        image::ImageError::Limits(_) => ApiError::BadRequest(format!(
            "The image is too large: at most {MAX_DIMENSION} pixels wide and high."
        )),
        _ => ApiError::BadRequest(NOT_AN_IMAGE.into()),
    })?;
    let (thumb_format, thumb_bytes) = thumbnail(&decoded)?;
    let image = MediaRef {
        hash: content_hash(&bytes),
        format,
    };
    let thumbnail = MediaRef {
        hash: content_hash(&thumb_bytes),
        format: thumb_format,
    };
    Ok(ProcessedImage {
        image: ProductImage {
            image: image.clone(),
            thumbnail: thumbnail.clone(),
            width: decoded.width(),
            height: decoded.height(),
        },
        blobs: vec![
            MediaBlob {
                media: image,
                bytes,
            },
            MediaBlob {
                media: thumbnail,
                bytes: thumb_bytes,
            },
        ],
    })
}

/// [`process_blocking`] on the blocking pool, two at a time (a decode takes a core and up
/// to [`MAX_DECODE_ALLOC`] of memory).
pub async fn process(bytes: Vec<u8>) -> ApiResult<ProcessedImage> {
    static GATE: OnceLock<Semaphore> = OnceLock::new();
    let gate = GATE.get_or_init(|| Semaphore::new(2));
    let _permit = gate
        .acquire()
        .await
        .map_err(|e| ApiError::Internal(format!("image gate closed: {e}")))?;
    tokio::task::spawn_blocking(move || process_blocking(bytes))
        .await
        .map_err(|e| ApiError::Internal(format!("image task failed: {e}")))?
}

/// A small picture drawn from `seed` (a diagonal gradient with a disc), the same bytes
/// for the same seed: the demo catalog's product images.
pub fn generated_picture(seed: u32, size: u32) -> ApiResult<Vec<u8>> {
    let palette = [
        ([233, 94, 58], [255, 196, 92]),
        ([46, 94, 170], [120, 200, 230]),
        ([40, 130, 90], [190, 230, 140]),
        ([120, 60, 160], [240, 150, 200]),
        ([30, 30, 40], [150, 150, 170]),
        ([170, 40, 60], [250, 220, 200]),
    ];
    let (from, to) = palette[seed as usize % palette.len()];
    let centre = size as f32 * (0.35 + 0.05 * (seed % 5) as f32);
    let radius = size as f32 * 0.22;
    let picture = image::RgbImage::from_fn(size, size, |x, y| {
        let t = (x + y) as f32 / (2 * size) as f32;
        let mix = |a: u8, b: u8| (a as f32 + (b as f32 - a as f32) * t) as u8;
        let (dx, dy) = (x as f32 - centre, y as f32 - size as f32 * 0.5);
        if dx * dx + dy * dy < radius * radius {
            image::Rgb([250, 248, 240])
        } else {
            image::Rgb([
                mix(from[0], to[0]),
                mix(from[1], to[1]),
                mix(from[2], to[2]),
            ])
        }
    });
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 85)
        .encode_image(&picture)
        .map_err(|e| ApiError::Internal(format!("cannot encode a picture: {e}")))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let mut bytes = Vec::new();
        image::RgbaImage::from_pixel(width, height, image::Rgba([10, 20, 30, 128]))
            .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
            .unwrap();
        bytes
    }

    #[test]
    fn the_format_comes_from_the_bytes() {
        assert_eq!(sniff(&png(2, 2)), Some(ImageFormat::Png));
        assert_eq!(
            sniff(&generated_picture(1, 16).unwrap()),
            Some(ImageFormat::Jpeg)
        );
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some(ImageFormat::Webp));
        assert_eq!(sniff(b"just some text"), None);
    }

    #[test]
    fn an_image_gets_a_smaller_thumbnail_and_content_addresses() {
        let bytes = png(800, 400);
        let processed = process_blocking(bytes.clone()).unwrap();
        let image = &processed.image;
        assert_eq!((image.width, image.height), (800, 400));
        assert_eq!(image.image.hash, content_hash(&bytes));
        assert!(is_content_hash(&image.image.hash));
        // Transparent: the thumbnail stays PNG, within the square, aspect kept.
        assert_eq!(image.thumbnail.format, ImageFormat::Png);
        let thumb = image::load_from_memory(&processed.blobs[1].bytes).unwrap();
        assert_eq!((thumb.width(), thumb.height()), (320, 160));
        // An opaque picture gets a JPEG thumbnail.
        let jpeg = process_blocking(generated_picture(2, 480).unwrap()).unwrap();
        assert_eq!(jpeg.image.thumbnail.format, ImageFormat::Jpeg);
    }

    #[test]
    fn what_is_not_a_whole_image_is_refused() {
        assert!(matches!(
            process_blocking(b"hello, not a png".to_vec()),
            Err(ApiError::BadRequest(_))
        ));
        let mut cut = png(64, 64);
        cut.truncate(cut.len() / 2);
        assert!(matches!(
            process_blocking(cut),
            Err(ApiError::BadRequest(_))
        ));
        assert_eq!(
            generated_picture(3, 32).unwrap(),
            generated_picture(3, 32).unwrap()
        );
    }
}
