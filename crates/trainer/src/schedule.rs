//! Learning-rate schedules: the multipliers of Python's `transformers.optimization`
//! (`get_scheduler`, transformers 4.46) for `LambdaLR`, as a function of the number of
//! optimizer steps taken so far. The step `k` update uses `lr · factor(k)`.

use std::f64::consts::PI;

use crate::args::SchedulerType;

/// A schedule over `total` optimizer steps with `warmup` linear warm-up steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub kind: SchedulerType,
    pub warmup: usize,
    pub total: usize,
}

/// `cosine`'s default `num_cycles` (half a cosine), `cosine_with_restarts`' (one).
const COSINE_CYCLES: f64 = 0.5;
const RESTART_CYCLES: f64 = 1.0;
/// `polynomial`'s defaults: `lr_end = 1e-7`, `power = 1`.
const POLY_LR_END: f64 = 1e-7;
const POLY_POWER: f64 = 1.0;

impl Schedule {
    /// The multiplier of the base learning rate `lr` after `step` optimizer steps.
    pub fn factor(&self, step: usize, lr: f64) -> f64 {
        let (s, w, t) = (step as f64, self.warmup as f64, self.total as f64);
        let warming = step < self.warmup;
        let warm = s / w.max(1.0);
        let progress = (s - w) / (t - w).max(1.0);
        match self.kind {
            SchedulerType::Constant => 1.0,
            SchedulerType::ConstantWithWarmup => {
                if warming {
                    warm
                } else {
                    1.0
                }
            }
            SchedulerType::Linear => {
                if warming {
                    warm
                } else {
                    ((t - s) / (t - w).max(1.0)).max(0.0)
                }
            }
            SchedulerType::Cosine => {
                if warming {
                    warm
                } else {
                    (0.5 * (1.0 + (PI * COSINE_CYCLES * 2.0 * progress).cos())).max(0.0)
                }
            }
            SchedulerType::CosineWithRestarts => {
                if warming {
                    warm
                } else if progress >= 1.0 {
                    0.0
                } else {
                    (0.5 * (1.0 + (PI * ((RESTART_CYCLES * progress) % 1.0)).cos())).max(0.0)
                }
            }
            SchedulerType::Polynomial => {
                if warming {
                    warm
                } else if step > self.total {
                    POLY_LR_END / lr
                } else {
                    let range = lr - POLY_LR_END;
                    let remaining = 1.0 - (s - w) / (t - w);
                    (range * remaining.powf(POLY_POWER) + POLY_LR_END) / lr
                }
            }
        }
    }

    /// The learning rate for the update after `step` steps.
    pub fn lr(&self, step: usize, lr: f64) -> f64 {
        lr * self.factor(step, lr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from transformers 4.46's schedulers (lr 1, 10 steps, 2 warm-up), computed by
    /// hand from its lambdas.
    #[test]
    fn factors_follow_python() {
        let s = |kind| Schedule {
            kind,
            warmup: 2,
            total: 10,
        };
        let lin = s(SchedulerType::Linear);
        let got: Vec<f64> = (0..=10).map(|k| lin.factor(k, 1.0)).collect();
        let want = [
            0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.0,
        ];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{got:?}");
        }
        let cos = s(SchedulerType::Cosine);
        assert!((cos.factor(6, 1.0) - 0.5).abs() < 1e-12);
        assert!((cos.factor(10, 1.0)).abs() < 1e-12);
        let r = s(SchedulerType::CosineWithRestarts);
        assert!((r.factor(6, 1.0) - 0.5).abs() < 1e-12);
        assert_eq!(r.factor(10, 1.0), 0.0);
        let c = s(SchedulerType::ConstantWithWarmup);
        assert_eq!(c.factor(1, 1.0), 0.5);
        assert_eq!(c.factor(9, 1.0), 1.0);
        assert_eq!(s(SchedulerType::Constant).factor(0, 1.0), 1.0);
        let p = s(SchedulerType::Polynomial);
        // Halfway: (1 - 1e-7) * 0.5 + 1e-7.
        assert!((p.factor(6, 1.0) - (0.5 * (1.0 - 1e-7) + 1e-7)).abs() < 1e-12);
        assert!((p.factor(11, 1.0) - 1e-7).abs() < 1e-15);
        // No warm-up: linear starts at the full rate.
        let l0 = Schedule {
            kind: SchedulerType::Linear,
            warmup: 0,
            total: 4,
        };
        assert_eq!(l0.factor(0, 1.0), 1.0);
        assert_eq!(l0.factor(2, 1.0), 0.5);
    }
}
