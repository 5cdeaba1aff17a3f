//! Test images, shared by the media and federation tests (`#[path]`-included).

use std::io::Cursor;

/// A `w`×`h` PNG with a gradient, so thumbnails differ from blank images.
pub(crate) fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbaImage::from_fn(w, h, |x, y| image::Rgba([(x % 256) as u8, (y % 256) as u8, 200, 255]));
    let mut out = Vec::new();
    image::DynamicImage::ImageRgba8(img).write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png).unwrap();
    out
}

/// The dimensions of an encoded image.
#[allow(dead_code)] // not every including test measures images
pub(crate) fn dims(b: &[u8]) -> (u32, u32) {
    image::ImageReader::new(Cursor::new(b)).with_guessed_format().unwrap().into_dimensions().unwrap()
}
