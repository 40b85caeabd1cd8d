//! Decoding the camera messages of a bag from their CDR serialisation (what rosbag2 stores),
//! without ROS: sensor_msgs/Image, sensor_msgs/CompressedImage and std_msgs/Bool.
//!
//! CDR: a 4-byte encapsulation header (byte 1: 0 = big endian, 1 = little endian), then the
//! fields in order, each primitive aligned to its own size relative to the end of the header;
//! strings and sequences are a u32 length followed by the bytes (strings include a NUL).

use vae_ood_core::frame::{FrameData, RawImage};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CDR decode error at byte {offset}: {what}")]
pub struct CdrError {
    pub offset: usize,
    pub what: String,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    little: bool,
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8]) -> Result<Self, CdrError> {
        if data.len() < 4 {
            return Err(CdrError {
                offset: 0,
                what: format!(
                    "message of {} bytes has no encapsulation header",
                    data.len()
                ),
            });
        }
        let little = match data[1] {
            0 => false,
            1 => true,
            k => {
                return Err(CdrError {
                    offset: 1,
                    what: format!(
                        "unsupported CDR encapsulation kind {k} (plain CDR only, kinds 0 and 1)"
                    ),
                })
            }
        };
        Ok(Self {
            buf: &data[4..],
            pos: 0,
            little,
        })
    }

    fn err(&self, what: impl Into<String>) -> CdrError {
        CdrError {
            offset: self.pos + 4,
            what: what.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CdrError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                self.err(format!(
                    "truncated: need {n} more bytes, {} left",
                    self.buf.len().saturating_sub(self.pos)
                ))
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn align(&mut self, n: usize) -> Result<(), CdrError> {
        let pad = (n - self.pos % n) % n;
        self.take(pad).map(|_| ())
    }

    fn u8(&mut self) -> Result<u8, CdrError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, CdrError> {
        self.align(4)?;
        let b: [u8; 4] = self.take(4)?.try_into().expect("4 bytes");
        Ok(if self.little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    }

    fn bytes(&mut self) -> Result<&'a [u8], CdrError> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn string(&mut self) -> Result<String, CdrError> {
        let b = self.bytes()?;
        let b = b.strip_suffix(&[0]).unwrap_or(b);
        String::from_utf8(b.to_vec()).map_err(|_| self.err("string is not UTF-8"))
    }

    /// std_msgs/Header: stamp (sec, nanosec), frame_id.
    fn header(&mut self) -> Result<(i64, String), CdrError> {
        let sec = self.u32()? as i32;
        let nanosec = self.u32()?;
        let frame_id = self.string()?;
        Ok((
            i64::from(sec) * 1_000_000_000 + i64::from(nanosec),
            frame_id,
        ))
    }
}

/// A camera frame decoded from a bag, owning its bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnedFrame {
    /// Header stamp in nanoseconds.
    pub stamp_ns: i64,
    pub frame_id: String,
    pub image: OwnedImage,
}

#[derive(Debug, Clone, PartialEq)]
pub enum OwnedImage {
    Raw {
        width: u32,
        height: u32,
        encoding: String,
        is_bigendian: bool,
        step: u32,
        data: Vec<u8>,
    },
    Compressed {
        format: String,
        data: Vec<u8>,
    },
}

impl OwnedFrame {
    /// Borrowed view for the monitor, exactly as the node sees a live message.
    pub fn as_frame(&self) -> FrameData<'_> {
        match &self.image {
            OwnedImage::Raw {
                width,
                height,
                encoding,
                is_bigendian,
                step,
                data,
            } => FrameData::Raw(RawImage {
                width: *width,
                height: *height,
                encoding,
                is_bigendian: *is_bigendian,
                step: *step,
                data,
            }),
            OwnedImage::Compressed { format, data } => FrameData::Compressed { format, data },
        }
    }
}

pub fn decode_image(data: &[u8]) -> Result<OwnedFrame, CdrError> {
    let mut r = Reader::new(data)?;
    let (stamp_ns, frame_id) = r.header()?;
    let height = r.u32()?;
    let width = r.u32()?;
    let encoding = r.string()?;
    let is_bigendian = r.u8()? != 0;
    let step = r.u32()?;
    let data = r.bytes()?.to_vec();
    Ok(OwnedFrame {
        stamp_ns,
        frame_id,
        image: OwnedImage::Raw {
            width,
            height,
            encoding,
            is_bigendian,
            step,
            data,
        },
    })
}

pub fn decode_compressed(data: &[u8]) -> Result<OwnedFrame, CdrError> {
    let mut r = Reader::new(data)?;
    let (stamp_ns, frame_id) = r.header()?;
    let format = r.string()?;
    let data = r.bytes()?.to_vec();
    Ok(OwnedFrame {
        stamp_ns,
        frame_id,
        image: OwnedImage::Compressed { format, data },
    })
}

/// Decodes a camera message of `msg_type` (Image or CompressedImage).
pub fn decode_camera(msg_type: &str, data: &[u8]) -> Result<OwnedFrame, CdrError> {
    if msg_type == super::IMAGE {
        decode_image(data)
    } else {
        decode_compressed(data)
    }
}

pub fn decode_bool(data: &[u8]) -> Result<bool, CdrError> {
    Ok(Reader::new(data)?.u8()? != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-serialised little-endian Image: stamp 5.000000007, frame "cam", 2x1 rgb8.
    fn image_le() -> Vec<u8> {
        let mut b = vec![0, 1, 0, 0];
        b.extend(5i32.to_le_bytes());
        b.extend(7u32.to_le_bytes());
        b.extend(4u32.to_le_bytes());
        b.extend(b"cam\0");
        b.extend(1u32.to_le_bytes()); // height
        b.extend(2u32.to_le_bytes()); // width
        b.extend(5u32.to_le_bytes());
        b.extend(b"rgb8\0");
        b.push(0); // is_bigendian, then 2 bytes padding to align step
        b.extend([0, 0]);
        b.extend(6u32.to_le_bytes()); // step
        b.extend(6u32.to_le_bytes());
        b.extend([1, 2, 3, 4, 5, 6]);
        b
    }

    #[test]
    fn decodes_a_hand_serialised_image() {
        let f = decode_image(&image_le()).unwrap();
        assert_eq!(f.stamp_ns, 5_000_000_007);
        assert_eq!(f.frame_id, "cam");
        assert_eq!(
            f.image,
            OwnedImage::Raw {
                width: 2,
                height: 1,
                encoding: "rgb8".into(),
                is_bigendian: false,
                step: 6,
                data: vec![1, 2, 3, 4, 5, 6]
            }
        );
    }

    #[test]
    fn truncation_is_an_error_not_a_panic() {
        let b = image_le();
        for n in 0..b.len() {
            assert!(decode_image(&b[..n]).is_err(), "prefix of {n} bytes");
        }
        assert!(decode_bool(&[0, 1, 0, 0, 1]).unwrap());
    }
}
