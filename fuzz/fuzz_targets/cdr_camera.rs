//! CDR bytes as a camera message (Image and CompressedImage, plus the Bool label), then the
//! frame they carry through the node's frame checks and decoding.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vae_ood_fuzz::cdr_camera(data);
});
