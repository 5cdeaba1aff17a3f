//! Thumbnail generation: decoding, scaling or cropping and re-encoding images, on the blocking pool,
//! at most `media.thumbnail_concurrency` at a time per process.
//!
//! Output formats: a JPEG original gives a JPEG thumbnail, any other a PNG one (transparency is
//! kept). With `animated=true`, an animated GIF gives an animated GIF: the original itself when it
//! already fits the requested box (scale), else every frame resized. Other animated formats
//! (animated WebP) give a still of their first frame. The format is sniffed from the bytes, never
//! taken from the uploader's `Content-Type`, and images over `media.max_image_pixels` are refused
//! before they are decoded.

use std::io::Cursor;
use std::sync::Arc;

use ganglion_config::ThumbnailMethod;
use image::codecs::gif::{GifDecoder, GifEncoder, Repeat};
use image::imageops::FilterType;
use image::{AnimationDecoder as _, DynamicImage, Frame, ImageFormat, ImageReader};
use tokio::sync::Semaphore;

/// Frames kept in an animated thumbnail; longer animations become a still.
const MAX_FRAMES: usize = 500;

/// Why no thumbnail could be made.
#[derive(Debug, thiserror::Error)]
pub enum ThumbnailError {
    /// Not an image this server can thumbnail.
    #[error("cannot thumbnail this content")]
    Unsupported,
    /// Larger (in pixels) than `media.max_image_pixels`.
    #[error("image too large to thumbnail")]
    TooLarge,
    /// The image is corrupt.
    #[error("cannot decode image: {0}")]
    Decode(String),
    /// The blocking task failed.
    #[error("thumbnail task failed: {0}")]
    Task(String),
}

/// A generated thumbnail.
#[derive(Debug, Clone)]
pub struct Thumbnail {
    /// Encoded bytes.
    pub bytes: Vec<u8>,
    /// Their `Content-Type`.
    pub content_type: &'static str,
}

/// What to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThumbnailSpec {
    /// Box width in pixels.
    pub width: u32,
    /// Box height in pixels.
    pub height: u32,
    /// Fit inside (`Scale`) or fill and crop (`Crop`).
    pub method: ThumbnailMethod,
    /// Keep an animation.
    pub animated: bool,
}

/// A turn to thumbnail (see [`Thumbnailer::permit`]).
#[derive(Debug)]
pub struct ThumbnailPermit {
    /// Held, never read: dropping it ends the turn.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// Runs thumbnailing on the blocking pool, bounded by a semaphore.
#[derive(Debug, Clone)]
pub struct Thumbnailer {
    permits: Arc<Semaphore>,
    max_pixels: u64,
}

impl Thumbnailer {
    /// At most `concurrency` thumbnails at once; images over `max_pixels` are refused.
    pub fn new(concurrency: u32, max_pixels: u64) -> Self {
        Self { permits: Arc::new(Semaphore::new(concurrency.max(1) as usize)), max_pixels }
    }

    /// Waits for a turn. Take it before reading the original into memory, so the semaphore also
    /// bounds how many originals are held at once.
    ///
    /// # Errors
    /// Never in practice (the semaphore is never closed).
    pub async fn permit(&self) -> Result<ThumbnailPermit, ThumbnailError> {
        let p = self.permits.clone().acquire_owned().await.map_err(|e| ThumbnailError::Task(e.to_string()))?;
        Ok(ThumbnailPermit { _permit: p })
    }

    /// Makes one thumbnail of `original`, during the turn `_permit` holds.
    ///
    /// # Errors
    /// See [`ThumbnailError`].
    pub async fn make(
        &self,
        _permit: &ThumbnailPermit,
        original: Arc<Vec<u8>>,
        spec: ThumbnailSpec,
    ) -> Result<Thumbnail, ThumbnailError> {
        let max_pixels = self.max_pixels;
        tokio::task::spawn_blocking(move || generate(&original, spec, max_pixels))
            .await
            .map_err(|e| ThumbnailError::Task(e.to_string()))?
    }
}

/// Whether bytes of this type are worth trying to thumbnail.
pub(crate) fn is_thumbnailable(content_type: Option<&str>) -> bool {
    let essence = content_type.unwrap_or_default().split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    matches!(essence.as_str(), "image/jpeg" | "image/jpg" | "image/png" | "image/gif" | "image/webp")
}

/// Makes a thumbnail, synchronously (call from the blocking pool).
///
/// # Errors
/// See [`ThumbnailError`].
pub(crate) fn generate(original: &[u8], spec: ThumbnailSpec, max_pixels: u64) -> Result<Thumbnail, ThumbnailError> {
    let format = image::guess_format(original).map_err(|_| ThumbnailError::Unsupported)?;
    if !matches!(format, ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::Gif | ImageFormat::WebP) {
        return Err(ThumbnailError::Unsupported);
    }
    let (w, h) = ImageReader::with_format(Cursor::new(original), format)
        .into_dimensions()
        .map_err(|e| ThumbnailError::Decode(e.to_string()))?;
    if u64::from(w) * u64::from(h) > max_pixels {
        return Err(ThumbnailError::TooLarge);
    }
    let (bw, bh) = (spec.width.max(1), spec.height.max(1));
    if spec.animated && format == ImageFormat::Gif {
        if spec.method == ThumbnailMethod::Scale && w <= bw && h <= bh {
            return Ok(Thumbnail { bytes: original.to_vec(), content_type: "image/gif" });
        }
        if let Some(animated) = animated_gif(original, spec)? {
            return Ok(animated);
        }
    }
    let img = ImageReader::with_format(Cursor::new(original), format)
        .decode()
        .map_err(|e| ThumbnailError::Decode(e.to_string()))?;
    let thumb = resize(&img, bw, bh, spec.method);
    let mut out = Vec::new();
    if format == ImageFormat::Jpeg {
        let rgb = DynamicImage::ImageRgb8(thumb.to_rgb8());
        let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80);
        rgb.write_with_encoder(encoder).map_err(|e| ThumbnailError::Decode(e.to_string()))?;
        Ok(Thumbnail { bytes: out, content_type: "image/jpeg" })
    } else {
        thumb
            .write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .map_err(|e| ThumbnailError::Decode(e.to_string()))?;
        Ok(Thumbnail { bytes: out, content_type: "image/png" })
    }
}

fn resize(img: &DynamicImage, bw: u32, bh: u32, method: ThumbnailMethod) -> DynamicImage {
    match method {
        // Never upscale when fitting inside the box.
        ThumbnailMethod::Scale if img.width() <= bw && img.height() <= bh => img.clone(),
        ThumbnailMethod::Scale => img.resize(bw, bh, FilterType::Triangle),
        ThumbnailMethod::Crop => img.resize_to_fill(bw, bh, FilterType::Triangle),
    }
}

/// Every frame of an animated GIF resized; `None` for a single-frame GIF or one with too many frames.
fn animated_gif(original: &[u8], spec: ThumbnailSpec) -> Result<Option<Thumbnail>, ThumbnailError> {
    let decode = |e: image::ImageError| ThumbnailError::Decode(e.to_string());
    let decoder = GifDecoder::new(Cursor::new(original)).map_err(decode)?;
    let mut frames = Vec::new();
    // One full-size frame is decoded at a time; only the small resized frames are kept.
    for frame in decoder.into_frames() {
        let frame = frame.map_err(decode)?;
        if frames.len() == MAX_FRAMES {
            return Ok(None);
        }
        let delay = frame.delay();
        let resized =
            resize(&DynamicImage::ImageRgba8(frame.into_buffer()), spec.width.max(1), spec.height.max(1), spec.method);
        frames.push(Frame::from_parts(resized.to_rgba8(), 0, 0, delay));
    }
    if frames.len() < 2 {
        return Ok(None);
    }
    let mut out = Vec::new();
    {
        let mut encoder = GifEncoder::new_with_speed(&mut out, 10);
        encoder.set_repeat(Repeat::Infinite).map_err(decode)?;
        encoder.encode_frames(frames).map_err(decode)?;
    }
    Ok(Some(Thumbnail { bytes: out, content_type: "image/gif" }))
}

#[cfg(test)]
pub(crate) mod tests {
    use image::{Rgba, RgbaImage};

    use super::*;

    /// A PNG of `w`×`h` pixels.
    pub(crate) fn png(w: u32, h: u32) -> Vec<u8> {
        let img = RgbaImage::from_fn(w, h, |x, y| Rgba([(x % 256) as u8, (y % 256) as u8, 128, 255]));
        let mut out = Vec::new();
        DynamicImage::ImageRgba8(img).write_to(&mut Cursor::new(&mut out), ImageFormat::Png).unwrap();
        out
    }

    /// A JPEG of `w`×`h` pixels.
    pub(crate) fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |x, _| image::Rgb([(x % 256) as u8, 0, 0])));
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), ImageFormat::Jpeg).unwrap();
        out
    }

    /// An animated GIF of `frames` frames of `w`×`h`.
    pub(crate) fn gif(w: u32, h: u32, frames: u32) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut enc = GifEncoder::new(&mut out);
            enc.set_repeat(Repeat::Infinite).unwrap();
            for i in 0..frames {
                let img = RgbaImage::from_pixel(w, h, Rgba([(i * 60 % 256) as u8, 0, 0, 255]));
                enc.encode_frame(Frame::new(img)).unwrap();
            }
        }
        out
    }

    fn dims(bytes: &[u8]) -> (u32, u32) {
        ImageReader::new(Cursor::new(bytes)).with_guessed_format().unwrap().into_dimensions().unwrap()
    }

    fn frame_count(bytes: &[u8]) -> usize {
        GifDecoder::new(Cursor::new(bytes)).unwrap().into_frames().count()
    }

    fn spec(width: u32, height: u32, method: ThumbnailMethod, animated: bool) -> ThumbnailSpec {
        ThumbnailSpec { width, height, method, animated }
    }

    #[test]
    fn scale_fits_inside_and_never_upscales() {
        let t = generate(&png(400, 200), spec(100, 100, ThumbnailMethod::Scale, false), 1 << 30).unwrap();
        assert_eq!(t.content_type, "image/png");
        assert_eq!(dims(&t.bytes), (100, 50));
        let small = generate(&png(40, 20), spec(100, 100, ThumbnailMethod::Scale, false), 1 << 30).unwrap();
        assert_eq!(dims(&small.bytes), (40, 20));
    }

    #[test]
    fn crop_fills_the_box_and_jpeg_stays_jpeg() {
        let t = generate(&jpeg(400, 200), spec(64, 64, ThumbnailMethod::Crop, false), 1 << 30).unwrap();
        assert_eq!(t.content_type, "image/jpeg");
        assert_eq!(dims(&t.bytes), (64, 64));
    }

    #[test]
    fn animated_gifs_stay_animated_only_when_asked() {
        let original = gif(100, 100, 3);
        let anim = generate(&original, spec(32, 32, ThumbnailMethod::Crop, true), 1 << 30).unwrap();
        assert_eq!(anim.content_type, "image/gif");
        assert_eq!(dims(&anim.bytes), (32, 32));
        assert_eq!(frame_count(&anim.bytes), 3);
        let still = generate(&original, spec(32, 32, ThumbnailMethod::Crop, false), 1 << 30).unwrap();
        assert_eq!(still.content_type, "image/png");
        // Small enough already: the original itself.
        let same = generate(&original, spec(200, 200, ThumbnailMethod::Scale, true), 1 << 30).unwrap();
        assert_eq!(same.bytes, original);
    }

    #[test]
    fn refuses_non_images_and_huge_images() {
        assert!(matches!(
            generate(b"<html>", spec(32, 32, ThumbnailMethod::Scale, false), 1 << 30),
            Err(ThumbnailError::Unsupported)
        ));
        assert!(matches!(
            generate(&png(100, 100), spec(32, 32, ThumbnailMethod::Scale, false), 9_999),
            Err(ThumbnailError::TooLarge)
        ));
        assert!(is_thumbnailable(Some("image/png; charset=x")));
        assert!(!is_thumbnailable(Some("image/svg+xml")));
        assert!(!is_thumbnailable(None));
    }
}
