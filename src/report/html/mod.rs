//! The visual report: one self-contained HTML page rendered from a [`Report`], for people who
//! judge an equalization by looking at it (summary, int8 readiness, per-channel weight ranges
//! of every CLS pair before and after, skips, BN folds, ReLU6 decisions).
//!
//! Invariants:
//! - The page needs nothing but itself: CSS and SVG are inline, there is no script, and a
//!   Content-Security-Policy `<meta>` forbids every fetch, so even a string that escaped
//!   escaping could not load anything.
//! - Every string taken from the report is HTML-escaped (node names are user input).
//! - Rendering never panics, whatever the numbers: NaN, infinities, zeros and empty vectors are
//!   shown as such in tables and left out of charts (log-scale charts also drop non-positive
//!   values), with a count in the caption.
//! - Charts stay small and legible on large models: a series is drawn as one dot per channel
//!   while the dots stay a few pixels apart (128 channels in a half-width panel) and otherwise
//!   as a band over buckets of channels, each column spanning its bucket's min..max. Each series
//!   is one SVG `<path>` with relative moves in whole units, so mobilenet_v2 (37 pairs, up to
//!   1280 channels) renders to under 400 kB.

use crate::report::Report;

/// `write!` into a `String`, which cannot fail. Defined before the submodules so that they
/// all see it; it brings `fmt::Write` into scope itself.
macro_rules! w {
    ($out:expr, $($arg:tt)*) => {{
        use ::std::fmt::Write as _;
        let _ = write!($out, $($arg)*);
    }};
}

mod axis;
mod blocks;
mod cls;
mod deploy;
mod int8;
mod page;
mod passes;
mod summary;
mod text;

/// Renders `report` as a complete, self-contained HTML document.
pub fn render(report: &Report) -> String {
    let mut o = String::with_capacity(64 * 1024);
    page::head(&mut o, report);
    o.push_str("<body><main>\n");
    page::header(&mut o, report);
    summary::summary(&mut o, report);
    summary::coverage(&mut o, report);
    int8::int8(&mut o, report.quantization.as_ref());
    if let Some(d) = &report.deploy {
        deploy::deploy(&mut o, d);
    }
    if let Some(e) = &report.exports {
        deploy::exports(&mut o, e);
    }
    if let Some(t) = &report.int8 {
        deploy::trust(&mut o, t);
    }
    if let Some(sel) = &report.selection {
        int8::selection(&mut o, sel);
    }
    cls::cls(&mut o, report);
    passes::hbf(&mut o, report);
    passes::skipped(&mut o, report);
    passes::bn_folds(&mut o, report);
    passes::relu6(&mut o, report);
    passes::notes(&mut o, report);
    passes::timings(&mut o, report);
    page::footer(&mut o, report);
    o
}
