//! Arbitrary bytes as a JPEG or PNG `CompressedImage` through the node's decoder.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vae_ood_fuzz::compressed_frame(data);
});
