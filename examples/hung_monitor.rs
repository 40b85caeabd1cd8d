//! The monitor node with a detector that hangs: it scores `VAE_OOD_HANG_AFTER` frames (default
//! 5), then blocks inside the next one, as a wedged inference runtime would: forever, or for
//! `VAE_OOD_HANG_FOR` seconds when set (a stall that ends), after which it scores on. Built only
//! for the live test of the hung-inference path (test/test_hung_monitor.py:
//! `cargo build -p vae_ood_monitor --example hung_monitor`); an example, so neither colcon nor
//! `cargo build --bins` ever builds or installs it.

#[cfg(feature = "ros")]
mod hang {
    use vae_ood_core::bundle::Bundle;
    use vae_ood_core::detector::{Detector, Fault, Scored, StreamFrame, StreamId};

    pub struct HangAfter {
        pub inner: Box<dyn Detector>,
        pub left: u64,
        /// How long the one stall lasts; `None`: forever.
        pub stall: Option<std::time::Duration>,
    }

    impl Detector for HangAfter {
        fn bundle(&self) -> &Bundle {
            self.inner.bundle()
        }
        fn backend(&self) -> &'static str {
            self.inner.backend()
        }
        fn device(&self) -> String {
            self.inner.device()
        }
        fn open_stream(&mut self) -> StreamId {
            self.inner.open_stream()
        }
        fn reset_stream(&mut self, stream: StreamId) {
            self.inner.reset_stream(stream)
        }
        fn measure_detail(&mut self, spec: Option<vae_ood_core::detail::DetailSpec>) {
            self.inner.measure_detail(spec)
        }
        fn score_batch(&mut self, frames: &[StreamFrame<'_>]) -> Vec<Result<Scored, Fault>> {
            if self.left == 0 {
                eprintln!("hung_monitor: blocking inside inference now");
                let Some(stall) = self.stall else {
                    loop {
                        std::thread::park();
                    }
                };
                std::thread::sleep(stall);
                eprintln!("hung_monitor: inference resumes");
                self.left = u64::MAX;
            }
            self.left -= 1;
            self.inner.score_batch(frames)
        }
    }
}

#[cfg(feature = "ros")]
fn main() -> anyhow::Result<()> {
    let left = std::env::var("VAE_OOD_HANG_AFTER")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let stall = std::env::var("VAE_OOD_HANG_FOR")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(std::time::Duration::from_secs_f64);
    vae_ood_monitor::node::main_with(Some(Box::new(move |inner| {
        Box::new(hang::HangAfter { inner, left, stall })
    })))
}

#[cfg(not(feature = "ros"))]
fn main() {
    eprintln!("hung_monitor needs the `ros` feature");
    std::process::exit(1);
}
