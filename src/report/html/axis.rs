//! The vertical axis of every chart: one [`Axis`] type, on a base-10 log [`Scale`] (weight
//! ranges, scale factors) or a linear one (SQNR in dB), with 1-2-5 ends, ticks at least
//! [`MIN_TICK_GAP`] apart, a grid and a rotated unit label; and the centred text lines that
//! caption a chart.

use super::text::{esc, num};

/// Width of every chart's SVG `viewBox`, in SVG units (about CSS pixels).
pub(super) const WIDTH: f64 = 1040.0;

/// Least vertical distance between two axis labels, in SVG units.
const MIN_TICK_GAP: f64 = 13.0;

/// How values map onto an [`Axis`].
#[derive(Clone, Copy)]
enum Scale {
    /// Base 10 logarithmic; only positive finite values have a place.
    Log,
    /// Linear, with a tick every `step` (a 1-2-5 value).
    Linear { step: f64 },
}

/// A vertical axis from `bottom` (the low end) up to `top`, in SVG units. `lo` and `hi` are the
/// ends in the scale's own coordinate: the value itself on a linear scale, its `log10` on a
/// log scale.
pub(super) struct Axis {
    scale: Scale,
    lo: f64,
    hi: f64,
    top: f64,
    bottom: f64,
}

impl Axis {
    /// A log axis over the positive finite `values`, its ends snapped to 1-2-5 values; `None`
    /// when there are none.
    pub(super) fn log(values: impl Iterator<Item = f64>, top: f64, bottom: f64) -> Option<Axis> {
        let (min, max) = min_max(values.filter(|v| *v > 0.0))?;
        let mut lo = nice_floor(min);
        let mut hi = nice_ceil(max);
        if hi <= lo * 1.000_001 {
            lo = nice_floor(lo * 0.99);
            hi = nice_ceil(hi * 1.01);
        }
        let (lo, hi) = (lo.log10(), hi.log10());
        (lo.is_finite() && hi.is_finite() && hi > lo).then_some(Axis {
            scale: Scale::Log,
            lo,
            hi,
            top,
            bottom,
        })
    }

    /// A linear axis over the finite `values` with about six 1-2-5 steps; `None` when there
    /// are none.
    pub(super) fn linear(values: impl Iterator<Item = f64>, top: f64, bottom: f64) -> Option<Axis> {
        let (mut min, mut max) = min_max(values)?;
        if max - min < 1e-9 {
            min -= 1.0;
            max += 1.0;
        }
        let step = nice_ceil((max - min) / 6.0);
        let lo = (min / step).floor() * step;
        let hi = (max / step).ceil() * step;
        (step.is_finite() && step > 0.0 && hi > lo).then_some(Axis {
            scale: Scale::Linear { step },
            lo,
            hi,
            top,
            bottom,
        })
    }

    /// The height of `v`, clamped to the axis. On a log scale a value with no place (zero,
    /// negative, non-finite) goes to the bottom.
    pub(super) fn y(&self, v: f64) -> f64 {
        let t = match self.scale {
            Scale::Log => {
                let t = (v.log10() - self.lo) / (self.hi - self.lo);
                if t.is_finite() {
                    t.clamp(0.0, 1.0)
                } else {
                    0.0
                }
            }
            Scale::Linear { .. } => ((v - self.lo) / (self.hi - self.lo)).clamp(0.0, 1.0),
        };
        self.bottom - t * (self.bottom - self.top)
    }

    /// The labelled values. Linear: every step from end to end (at most 41). Log: ticks at
    /// least [`MIN_TICK_GAP`] apart, 1-2-5 or 1-3 per decade where a decade is tall enough,
    /// else every k-th power of ten, and both ends of the axis when they fit.
    fn ticks(&self) -> Vec<f64> {
        match self.scale {
            Scale::Linear { step } => {
                let count = ((self.hi - self.lo) / step).round() as i64;
                (0..=count.clamp(0, 40))
                    .map(|k| self.lo + k as f64 * step)
                    .collect()
            }
            Scale::Log => self.log_ticks(),
        }
    }

    fn log_ticks(&self) -> Vec<f64> {
        let per_decade = (self.bottom - self.top) / (self.hi - self.lo);
        let (first, last) = (self.lo.floor() as i32, self.hi.ceil() as i32);
        let mantissas: &[f64] = if per_decade >= 70.0 {
            &[1.0, 2.0, 5.0]
        } else if per_decade >= 32.0 {
            &[1.0, 3.0]
        } else {
            &[1.0]
        };
        let stride = ((MIN_TICK_GAP / per_decade).ceil() as i32).max(1);
        let mut t: Vec<f64> = (first..=last)
            .filter(|e| e.rem_euclid(stride) == 0)
            .flat_map(|e| mantissas.iter().map(move |m| m * 10f64.powi(e)))
            .filter(|v| {
                let l = v.log10();
                l >= self.lo - 1e-9 && l <= self.hi + 1e-9
            })
            .collect();
        for end in [10f64.powf(self.lo), 10f64.powf(self.hi)] {
            if t.iter()
                .all(|&v| (self.y(v) - self.y(end)).abs() >= MIN_TICK_GAP)
            {
                t.push(end);
            }
        }
        t
    }

    /// A tick's label: `num` on a linear scale; on a log scale plain decimals in [0.01, 10⁴),
    /// else `1e-5`, `2e6`.
    fn label(&self, v: f64) -> String {
        match self.scale {
            Scale::Linear { .. } => num(v),
            Scale::Log => log_label(v),
        }
    }

    /// Draws the tick labels and grid lines across `x0..x1`, the base line and the `unit`
    /// label left of the axis.
    pub(super) fn draw(&self, o: &mut String, x0: f64, x1: f64, unit: &str) {
        let mut grid = String::new();
        for v in self.ticks() {
            let y = self.y(v);
            w!(grid, "M{x0} {y:.1}H{x1}");
            w!(
                o,
                "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                x0 - 6.0,
                y + 3.5,
                self.label(v)
            );
        }
        w!(
            o,
            "<path class=\"g\" d=\"{grid}\"/><path class=\"ax\" d=\"M{x0} {b}H{x1}\"/>\
             <text x=\"{x}\" y=\"{y:.1}\" text-anchor=\"middle\" \
             transform=\"rotate(-90 {x} {y:.1})\">{u}</text>",
            b = self.bottom,
            x = x0 - 48.0,
            y = (self.top + self.bottom) / 2.0,
            u = esc(unit)
        );
    }
}

/// A line of text centred on `x`, its baseline at `y`: a chart's caption, or the note that
/// stands in for a chart with nothing to draw.
pub(super) fn centered_text(o: &mut String, x: f64, y: f64, text: &str) {
    w!(
        o,
        "<text x=\"{x}\" y=\"{y}\" text-anchor=\"middle\">{}</text>",
        esc(text)
    );
}

/// The least and greatest finite values, or `None` when there are none.
fn min_max(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        min = min.min(v);
        max = max.max(v);
    }
    (min <= max).then_some((min, max))
}

fn nice_floor(v: f64) -> f64 {
    let e = v.log10().floor();
    let p = 10f64.powf(e);
    let m = v / p;
    let k = [5.0, 2.0, 1.0]
        .into_iter()
        .find(|&k| m >= k * (1.0 - 1e-9))
        .unwrap_or(1.0);
    k * p
}

fn nice_ceil(v: f64) -> f64 {
    let e = v.log10().floor();
    let p = 10f64.powf(e);
    let m = v / p;
    let k = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .find(|&k| m <= k * (1.0 + 1e-9))
        .unwrap_or(10.0);
    k * p
}

fn log_label(v: f64) -> String {
    if (0.01..1e4).contains(&v) {
        let s = format!("{v:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        let e = v.log10().floor();
        let m = (v / 10f64.powf(e)).round();
        if m == 1.0 {
            format!("1e{e}")
        } else {
            format!("{m}e{e}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_axis_snaps_to_125() {
        let a = Axis::log([0.013, 7.9].into_iter(), 0.0, 100.0).unwrap();
        assert!((10f64.powf(a.lo) - 0.01).abs() < 1e-12);
        assert!((10f64.powf(a.hi) - 10.0).abs() < 1e-9);
        let ticks = a.ticks();
        assert!(ticks.iter().any(|t| (t - 0.01).abs() < 1e-12));
        assert!(ticks.iter().any(|t| (t - 10.0).abs() < 1e-9));
        let mut ys: Vec<f64> = ticks.iter().map(|&t| a.y(t)).collect();
        ys.sort_by(f64::total_cmp);
        assert!(ys.windows(2).all(|w| w[1] - w[0] >= MIN_TICK_GAP - 1e-9));
        let flat = Axis::log([1.0, 1.0].into_iter(), 0.0, 100.0).unwrap();
        assert!(flat.hi > flat.lo);
        assert!(Axis::log([0.0, -1.0, f64::NAN].into_iter(), 0.0, 1.0).is_none());
    }

    #[test]
    fn linear_axis_steps_125() {
        let a = Axis::linear([3.0, 27.0, f64::NAN].into_iter(), 0.0, 120.0).unwrap();
        assert_eq!(a.ticks(), [0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0]);
        assert_eq!(a.y(0.0), 120.0);
        assert_eq!(a.y(30.0), 0.0);
        assert_eq!(a.y(99.0), 0.0);
        let flat = Axis::linear([4.0].into_iter(), 0.0, 1.0).unwrap();
        assert!(flat.hi > flat.lo);
        assert!(Axis::linear([f64::INFINITY].into_iter(), 0.0, 1.0).is_none());
    }
}
