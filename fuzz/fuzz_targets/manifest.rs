//! Arbitrary text as a bundle manifest (manifest.yaml).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vae_ood_fuzz::manifest(data);
});
