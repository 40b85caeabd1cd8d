//! Arbitrary bytes as an MCAP rosbag2 file: open, list topics, visit every message.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vae_ood_fuzz::bag_file(data, "mcap");
});
