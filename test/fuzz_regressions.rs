//! Replays every committed fuzzing regression input (`fuzz/regressions/<target>/*`) through
//! the same function its fuzz target runs (fuzz/src/lib.rs, included here), so a fixed crash
//! stays fixed in `make test` without nightly or libFuzzer. Each also gets a few seeds of
//! its own kind, so a target with no regressions yet is still exercised.

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod fuzz;

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/regressions")
        .join(target);
    let mut n = 0;
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries {
            let path = e.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            eprintln!("replaying {}", path.display());
            run(&bytes);
            n += 1;
        }
    }
    n
}

#[test]
fn every_regression_input_is_handled_without_a_crash() {
    let total: usize = [
        ("cdr_camera", fuzz::cdr_camera as fn(&[u8])),
        ("raw_frame", fuzz::raw_frame),
        ("compressed_frame", fuzz::compressed_frame),
        ("mcap_bag", |d: &[u8]| fuzz::bag_file(d, "mcap")),
        ("sqlite_bag", |d: &[u8]| fuzz::bag_file(d, "db3")),
        ("manifest", fuzz::manifest),
    ]
    .into_iter()
    .map(|(t, f)| replay(t, f))
    .sum();
    assert!(
        total >= 1,
        "no regression inputs found under fuzz/regressions"
    );
}

#[test]
fn the_fuzz_bodies_accept_well_formed_and_truncated_input() {
    let manifest = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/default/manifest.yaml"),
    )
    .unwrap();
    fuzz::manifest(&manifest);
    fuzz::manifest(&manifest[..manifest.len() / 2]);
    // A 4x3 rgb8 frame, whole and cut short.
    let mut raw = vec![4, 0, 3, 0, 0, 0];
    raw.extend(0..36u8);
    fuzz::raw_frame(&raw);
    fuzz::raw_frame(&raw[..20]);
    fuzz::compressed_frame(&[0, 0xff, 0xd8, 0xff]);
    fuzz::cdr_camera(&[0, 1, 0, 0, 5, 0, 0, 0]);
    fuzz::bag_file(b"\x89MCAP0\r\n", "mcap");
    fuzz::bag_file(b"SQLite format 3\0", "db3");
}
