//! Camera frames as they arrive (raw `sensor_msgs/Image` fields or compressed bytes) and their
//! decoding into one canonical form: packed 8-bit RGB.
//!
//! Every malformed frame is a [`FrameError`] that says what is wrong; nothing here panics on
//! bad input, because a monitor that crashes on a bad frame leaves the robot unguarded.

use image::RgbImage;

/// Pixel encodings accepted from `sensor_msgs/Image` (names as in `sensor_msgs/image_encodings`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Rgb8,
    Bgr8,
    Rgba8,
    Bgra8,
    Mono8,
    Mono16,
}

impl Encoding {
    /// Parses a ROS encoding string; unknown encodings are rejected, never guessed.
    pub fn parse(name: &str) -> Result<Self, FrameError> {
        Ok(match name {
            "rgb8" => Self::Rgb8,
            "bgr8" => Self::Bgr8,
            "rgba8" => Self::Rgba8,
            "bgra8" => Self::Bgra8,
            "mono8" | "8UC1" => Self::Mono8,
            "mono16" | "16UC1" => Self::Mono16,
            other => return Err(FrameError::UnknownEncoding(other.to_string())),
        })
    }

    pub fn bytes_per_pixel(self) -> usize {
        match self {
            Self::Rgb8 | Self::Bgr8 => 3,
            Self::Rgba8 | Self::Bgra8 => 4,
            Self::Mono8 => 1,
            Self::Mono16 => 2,
        }
    }
}

/// The fields of a `sensor_msgs/Image`, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct RawImage<'a> {
    pub width: u32,
    pub height: u32,
    pub encoding: &'a str,
    pub is_bigendian: bool,
    /// Bytes per row, including any padding.
    pub step: u32,
    pub data: &'a [u8],
}

/// A frame in either transport, borrowed from the message that carried it.
#[derive(Debug, Clone, Copy)]
pub enum FrameData<'a> {
    Raw(RawImage<'a>),
    /// `sensor_msgs/CompressedImage`: `format` as published by image_transport
    /// (e.g. "jpeg", "png", "rgb8; jpeg compressed bgr8").
    Compressed {
        format: &'a str,
        data: &'a [u8],
    },
}

/// Why a frame was rejected. The node counts these per kind and reports OOD for the frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame has zero size ({width}x{height})")]
    ZeroSize { width: u32, height: u32 },
    #[error("frame of {width}x{height} is too large (limit {limit} pixels)")]
    TooLarge { width: u32, height: u32, limit: u64 },
    #[error("unknown image encoding '{0}' (supported: rgb8, bgr8, rgba8, bgra8, mono8, mono16)")]
    UnknownEncoding(String),
    #[error("row step {step} is smaller than width x bytes per pixel ({min})")]
    StepTooSmall { step: u32, min: u64 },
    #[error("image data is truncated: {got} bytes, expected at least {expected} (height x step)")]
    Truncated { expected: u64, got: usize },
    #[error("compressed frame is empty")]
    EmptyCompressed,
    #[error("unsupported compressed format '{0}' (supported: jpeg, png)")]
    UnsupportedFormat(String),
    #[error("cannot decode compressed frame: {0}")]
    Decode(String),
}

impl FrameError {
    /// A stable short name per kind, used as a counter key in diagnostics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ZeroSize { .. } => "zero_size",
            Self::TooLarge { .. } => "too_large",
            Self::UnknownEncoding(_) => "unknown_encoding",
            Self::StepTooSmall { .. } => "bad_step",
            Self::Truncated { .. } => "truncated",
            Self::EmptyCompressed => "empty_compressed",
            Self::UnsupportedFormat(_) => "unsupported_format",
            Self::Decode(_) => "decode_error",
        }
    }
}

/// Frames larger than this are rejected before any allocation (a 64 MP camera is generous).
pub const MAX_PIXELS: u64 = 64 * 1024 * 1024;

/// Decodes any accepted frame into packed 8-bit RGB.
///
/// Channel order is normalised here (BGR -> RGB, alpha dropped, mono replicated); the detector's
/// input spec decides later which order the model wants. `mono16` keeps its high byte.
pub fn decode(frame: &FrameData<'_>) -> Result<RgbImage, FrameError> {
    match frame {
        FrameData::Raw(raw) => decode_raw(raw),
        FrameData::Compressed { format, data } => decode_compressed(format, data),
    }
}

/// A frame's pixels as preprocessing reads them: a raw frame checked and borrowed in place, a
/// compressed one decoded into `decoded` (which the pixels then borrow).
pub fn pixels<'a>(
    frame: &FrameData<'a>,
    decoded: &'a mut Option<RgbImage>,
) -> Result<Pixels<'a>, FrameError> {
    match frame {
        FrameData::Raw(raw) => Pixels::from_raw(raw),
        FrameData::Compressed { format, data } => Ok(Pixels::from(
            &*decoded.insert(decode_compressed(format, data)?),
        )),
    }
}

fn check_size(width: u32, height: u32) -> Result<(), FrameError> {
    if width == 0 || height == 0 {
        return Err(FrameError::ZeroSize { width, height });
    }
    if u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(FrameError::TooLarge {
            width,
            height,
            limit: MAX_PIXELS,
        });
    }
    Ok(())
}

fn decode_raw(raw: &RawImage<'_>) -> Result<RgbImage, FrameError> {
    Ok(Pixels::from_raw(raw)?.to_rgb())
}

/// Packed pixels borrowed from a message or an image, checked once: every row of `width`
/// pixels lies inside `data`. Preprocessing reads a raw frame through this view, straight from
/// the message buffer, so a raw frame is never copied into a decoded image on the way to the
/// encoder.
#[derive(Debug, Clone, Copy)]
pub struct Pixels<'a> {
    width: u32,
    height: u32,
    /// Bytes from one row to the next.
    step: usize,
    encoding: Encoding,
    big_endian: bool,
    data: &'a [u8],
}

impl<'a> Pixels<'a> {
    /// Checks a raw frame's fields (size, encoding, step, length) without touching its pixels.
    pub fn from_raw(raw: &RawImage<'a>) -> Result<Self, FrameError> {
        check_size(raw.width, raw.height)?;
        let encoding = Encoding::parse(raw.encoding)?;
        let row_bytes = raw.width as usize * encoding.bytes_per_pixel();
        if (raw.step as usize) < row_bytes {
            return Err(FrameError::StepTooSmall {
                step: raw.step,
                min: row_bytes as u64,
            });
        }
        // The last row need not carry its padding.
        let expected = (raw.height as usize - 1) * raw.step as usize + row_bytes;
        if raw.data.len() < expected {
            return Err(FrameError::Truncated {
                expected: expected as u64,
                got: raw.data.len(),
            });
        }
        Ok(Self {
            width: raw.width,
            height: raw.height,
            step: raw.step as usize,
            encoding,
            big_endian: raw.is_bigendian,
            data: raw.data,
        })
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// The frame's bytes, from the first row's start to the last row's end, and the bytes
    /// from one row to the next: what a device copies in one transfer.
    pub fn rows_with_step(&self) -> (&'a [u8], usize) {
        let row_bytes = self.width as usize * self.encoding.bytes_per_pixel();
        let end = (self.height as usize - 1) * self.step + row_bytes;
        (&self.data[..end], self.step)
    }

    /// Row `y` without its padding: `width x bytes per pixel` bytes.
    ///
    /// # Panics
    /// If `y >= height`.
    pub fn row(&self, y: usize) -> &'a [u8] {
        let n = self.width as usize * self.encoding.bytes_per_pixel();
        &self.data[y * self.step..][..n]
    }

    /// Where red, green and blue sit within one pixel's bytes (all three the same for mono;
    /// the high byte of `mono16`).
    pub fn rgb_offsets(&self) -> [usize; 3] {
        match self.encoding {
            Encoding::Rgb8 | Encoding::Rgba8 => [0, 1, 2],
            Encoding::Bgr8 | Encoding::Bgra8 => [2, 1, 0],
            Encoding::Mono8 => [0; 3],
            Encoding::Mono16 if self.big_endian => [0; 3],
            Encoding::Mono16 => [1; 3],
        }
    }

    /// The pixels as packed 8-bit RGB (BGR swapped, alpha dropped, mono replicated).
    pub fn to_rgb(&self) -> RgbImage {
        let (w, h) = (self.width as usize, self.height as usize);
        let bpp = self.encoding.bytes_per_pixel();
        let [r, g, b] = self.rgb_offsets();
        let mut out = vec![0u8; w * h * 3];
        for y in 0..h {
            let dst = &mut out[y * w * 3..][..w * 3];
            for (px, s) in dst.chunks_exact_mut(3).zip(self.row(y).chunks_exact(bpp)) {
                px.copy_from_slice(&[s[r], s[g], s[b]]);
            }
        }
        RgbImage::from_raw(self.width, self.height, out).expect("buffer sized from width x height")
    }
}

impl<'a> From<&'a RgbImage> for Pixels<'a> {
    fn from(img: &'a RgbImage) -> Self {
        Self {
            width: img.width(),
            height: img.height(),
            step: img.width() as usize * 3,
            encoding: Encoding::Rgb8,
            big_endian: false,
            data: img.as_raw(),
        }
    }
}

fn decode_compressed(format: &str, data: &[u8]) -> Result<RgbImage, FrameError> {
    if data.is_empty() {
        return Err(FrameError::EmptyCompressed);
    }
    // image_transport writes e.g. "rgb8; jpeg compressed bgr8"; plain "jpeg"/"png" is common too.
    let f = format.to_ascii_lowercase();
    let fmt = if f.contains("jpeg") || f.contains("jpg") {
        image::ImageFormat::Jpeg
    } else if f.contains("png") {
        image::ImageFormat::Png
    } else {
        return Err(FrameError::UnsupportedFormat(format.to_string()));
    };
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(data), fmt);
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_PIXELS * 8);
    reader.limits(limits);
    let img = reader
        .decode()
        .map_err(|e| FrameError::Decode(e.to_string()))?;
    check_size(img.width(), img.height())?;
    Ok(img.into_rgb8())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw<'a>(w: u32, h: u32, enc: &'a str, step: u32, data: &'a [u8]) -> FrameData<'a> {
        FrameData::Raw(RawImage {
            width: w,
            height: h,
            encoding: enc,
            is_bigendian: false,
            step,
            data,
        })
    }

    #[test]
    fn every_encoding_decodes_to_rgb() {
        // One 2x1 image per encoding, pixels (10,20,30) and (40,50,60).
        let cases: &[(&str, Vec<u8>, [u8; 6])] = &[
            (
                "rgb8",
                vec![10, 20, 30, 40, 50, 60],
                [10, 20, 30, 40, 50, 60],
            ),
            (
                "bgr8",
                vec![30, 20, 10, 60, 50, 40],
                [10, 20, 30, 40, 50, 60],
            ),
            (
                "rgba8",
                vec![10, 20, 30, 255, 40, 50, 60, 0],
                [10, 20, 30, 40, 50, 60],
            ),
            (
                "bgra8",
                vec![30, 20, 10, 255, 60, 50, 40, 0],
                [10, 20, 30, 40, 50, 60],
            ),
            ("mono8", vec![7, 200], [7, 7, 7, 200, 200, 200]),
            // little-endian 16-bit: 0x0a01 -> high byte 10; 0xff00 -> 255
            (
                "mono16",
                vec![0x01, 0x0a, 0x00, 0xff],
                [10, 10, 10, 255, 255, 255],
            ),
        ];
        for (enc, data, want) in cases {
            let step = data.len() as u32;
            let img = decode(&raw(2, 1, enc, step, data)).unwrap();
            assert_eq!(img.as_raw().as_slice(), want, "{enc}");
        }
    }

    #[test]
    fn mono16_big_endian_uses_first_byte() {
        let data = [0x0a, 0x01, 0xff, 0x00];
        let f = FrameData::Raw(RawImage {
            width: 2,
            height: 1,
            encoding: "mono16",
            is_bigendian: true,
            step: 4,
            data: &data,
        });
        assert_eq!(
            decode(&f).unwrap().as_raw(),
            &vec![10, 10, 10, 255, 255, 255]
        );
    }

    #[test]
    fn row_padding_is_skipped() {
        // 2x2 rgb8 with step 8 (2 bytes of padding per row), last row unpadded.
        let data = [1, 2, 3, 4, 5, 6, 99, 99, 7, 8, 9, 10, 11, 12];
        let img = decode(&raw(2, 2, "rgb8", 8, &data)).unwrap();
        assert_eq!(img.as_raw(), &vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    }

    #[test]
    fn malformed_frames_are_rejected_with_their_kind() {
        let d = [0u8; 12];
        assert_eq!(
            decode(&raw(0, 2, "rgb8", 6, &d)).unwrap_err().kind(),
            "zero_size"
        );
        assert_eq!(
            decode(&raw(2, 2, "yuv422", 6, &d)).unwrap_err().kind(),
            "unknown_encoding"
        );
        assert_eq!(
            decode(&raw(2, 2, "rgb8", 5, &d)).unwrap_err().kind(),
            "bad_step"
        );
        assert_eq!(
            decode(&raw(2, 3, "rgb8", 6, &d)).unwrap_err().kind(),
            "truncated"
        );
        assert_eq!(
            decode(&raw(100_000, 100_000, "rgb8", 300_000, &d))
                .unwrap_err()
                .kind(),
            "too_large"
        );
        let bad_jpeg = FrameData::Compressed {
            format: "jpeg",
            data: &[0xff, 0xd8, 0xff, 0x00, 1, 2],
        };
        assert_eq!(decode(&bad_jpeg).unwrap_err().kind(), "decode_error");
        let empty = FrameData::Compressed {
            format: "png",
            data: &[],
        };
        assert_eq!(decode(&empty).unwrap_err().kind(), "empty_compressed");
        let tiff = FrameData::Compressed {
            format: "tiff",
            data: &[1],
        };
        assert_eq!(decode(&tiff).unwrap_err().kind(), "unsupported_format");
    }

    #[test]
    fn png_and_jpeg_round_trip() {
        let img = RgbImage::from_fn(8, 4, |x, y| image::Rgb([x as u8 * 30, y as u8 * 60, 128]));
        for (fmt, name, lossless) in [
            (image::ImageFormat::Png, "png", true),
            (
                image::ImageFormat::Jpeg,
                "rgb8; jpeg compressed bgr8",
                false,
            ),
        ] {
            let mut buf = std::io::Cursor::new(Vec::new());
            img.write_to(&mut buf, fmt).unwrap();
            let out = decode(&FrameData::Compressed {
                format: name,
                data: buf.get_ref(),
            })
            .unwrap();
            assert_eq!(out.dimensions(), (8, 4));
            if lossless {
                assert_eq!(out, img);
            }
        }
    }
}

/// An image file could not be read as a frame.
#[derive(Debug, thiserror::Error)]
pub enum ImageFileError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Frame {
        path: std::path::PathBuf,
        source: FrameError,
    },
}

/// An image file's bytes as a compressed frame: the one place an image file becomes a frame,
/// decoded by the node's CompressedImage decoder (identical pixels, identical scores).
#[derive(Debug, Clone)]
pub struct ImageFile {
    pub path: std::path::PathBuf,
    /// The file extension, lower case (`png`, `jpg`, `jpeg`): the compressed format.
    pub format: String,
    pub data: Vec<u8>,
}

impl ImageFile {
    pub fn read(path: &std::path::Path) -> Result<Self, ImageFileError> {
        let data = std::fs::read(path).map_err(|source| ImageFileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let format = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        Ok(Self {
            path: path.to_path_buf(),
            format,
            data,
        })
    }

    pub fn as_frame(&self) -> FrameData<'_> {
        FrameData::Compressed {
            format: &self.format,
            data: &self.data,
        }
    }

    pub fn decode(&self) -> Result<RgbImage, ImageFileError> {
        decode(&self.as_frame()).map_err(|source| ImageFileError::Frame {
            path: self.path.clone(),
            source,
        })
    }
}

/// Reads and decodes a PNG or JPEG file as a frame (see [`ImageFile`]).
pub fn read_image_file(file: &std::path::Path) -> Result<RgbImage, ImageFileError> {
    ImageFile::read(file)?.decode()
}
