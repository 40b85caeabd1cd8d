//! CUSUM on the log-martingale: S = max(0, S + log M - decay).

#[derive(Debug, Clone)]
pub struct Cusum {
    decay: f64,
    s: f64,
}

impl Cusum {
    pub fn new(decay: f64) -> Self {
        Self { decay, s: 0.0 }
    }

    pub fn update(&mut self, log_m: f64) -> f64 {
        self.s = (self.s + log_m - self.decay).max(0.0);
        self.s
    }

    pub fn value(&self) -> f64 {
        self.s
    }

    pub fn reset(&mut self) {
        self.s = 0.0;
    }
}
