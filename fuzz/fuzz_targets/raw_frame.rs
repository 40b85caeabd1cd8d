//! An arbitrary raw `sensor_msgs/Image` (size, encoding, step, bytes) through the frame checks
//! and the fused preprocessing, for several input specs.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vae_ood_fuzz::raw_frame(data);
});
