//! The cross-layer scaling section: one collapsible entry per CLS set, one figure per pair
//! with its per-channel range panels (log scale) and scale-factor panel, and the drawing of a
//! series as dots or bands with a pen of whole-unit relative moves.

use super::axis::{centered_text, Axis, WIDTH};
use super::text::{esc, min_med_max, name, num, opt_num, spread, spread_text};
use crate::report::{ClsKind, ClsPair, ClsSet, Report};

/// The cross-layer scaling section: convergence per iteration, then every set.
pub(super) fn cls(o: &mut String, r: &Report) {
    w!(
        o,
        "<section id=\"cls\"><h2>Cross-layer scaling: {} set{}</h2>\n",
        r.cls_sets.len(),
        if r.cls_sets.len() == 1 { "" } else { "s" }
    );
    if !r.cls_iterations.is_empty() {
        o.push_str(
            "<table class=\"compact\"><thead><tr><th>Iteration</th><th class=\"n\">Sets</th>\
             <th class=\"n\">max |1 − s|</th></tr></thead><tbody>",
        );
        for it in &r.cls_iterations {
            w!(
                o,
                "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                it.iteration,
                it.sets,
                num(f64::from(it.max_abs_one_minus_s))
            );
        }
        o.push_str("</tbody></table>\n");
    }
    if r.cls_sets.is_empty() {
        o.push_str("<p class=\"muted\">No set was scaled.</p></section>\n");
        return;
    }
    o.push_str(
        "<p class=\"muted\">Each chart shows, per channel, the weight range max |w| of the upstream \
         layer's output channels and of the downstream layer's input channels, before and after \
         scaling (log scale), and the scale factor s. Equalization pulls the ranges of each pair \
         together; the spread is max / min over channels. Wide layers are drawn as bands: each \
         column spans the min to max of a bucket of consecutive channels.</p>\n",
    );
    for (i, set) in r.cls_sets.iter().enumerate() {
        cls_set(o, i, set);
    }
    o.push_str("</section>\n");
}

fn cls_set(o: &mut String, i: usize, set: &ClsSet) {
    let kind = match set.kind {
        ClsKind::Pair => "pair",
        ClsKind::Triple => "triple",
    };
    let channels = set.pairs.first().map_or(0, |p| p.scale.len());
    let spread_of = |f: fn(&ClsPair) -> [&[f32]; 2]| {
        set.pairs
            .iter()
            .flat_map(|p| f(p).into_iter().filter_map(spread))
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
    };
    let before = spread_of(|p| [&p.range_before.layer1_out, &p.range_before.layer2_in]);
    let after = spread_of(|p| [&p.range_after.layer1_out, &p.range_after.layer2_in]);
    w!(
        o,
        "<details class=\"cls-set\" id=\"set-{n}\"{open}><summary><span class=\"set-head\">\
         <b>#{n}</b><span class=\"tag\">{kind}</span><span class=\"muted\">iteration {it} · {channels} \
         channels · worst spread {b} → {a}</span></span><br><code>{layers}</code></summary>\
         <div class=\"body\">",
        n = i + 1,
        open = if i == 0 { " open" } else { "" },
        it = set.iteration,
        b = spread_text(before),
        a = spread_text(after),
        layers = set
            .layers
            .iter()
            .map(|l| name(l).to_string())
            .collect::<Vec<_>>()
            .join(" → ")
    );
    if set.pairs.is_empty() {
        o.push_str("<p class=\"muted\">No pair recorded.</p>");
    }
    for (j, p) in set.pairs.iter().enumerate() {
        pair_figure(o, j, set.pairs.len(), p);
    }
    o.push_str("</div></details>\n");
}

fn pair_figure(o: &mut String, j: usize, count: usize, p: &ClsPair) {
    w!(o, "<figure class=\"pair\"><figcaption>");
    if count > 1 {
        w!(o, "<span class=\"tag\">pair {}/{count}</span> ", j + 1);
    }
    w!(o, "<code>{}</code> → ", name(&p.layer1));
    if !p.through.is_empty() {
        let through: Vec<String> = p.through.iter().map(|t| esc(t).to_string()).collect();
        w!(
            o,
            "<span class=\"muted\">({})</span> → ",
            through.join(", ")
        );
    }
    w!(o, "<code>{}</code>", name(&p.layer2));
    let (smin, smed, smax) = min_med_max(&p.scale);
    w!(
        o,
        "<br><span class=\"stats\">spread of layer 1 out: {} → {} · layer 2 in: {} → {} · \
         s min {} · median {} · max {}{}</span></figcaption>\n",
        spread_text(spread(&p.range_before.layer1_out)),
        spread_text(spread(&p.range_after.layer1_out)),
        spread_text(spread(&p.range_before.layer2_in)),
        spread_text(spread(&p.range_after.layer2_in)),
        opt_num(smin),
        opt_num(smed),
        opt_num(smax),
        if p.relu_between {
            " · ReLU-like activation between"
        } else {
            ""
        }
    );
    o.push_str(
        "<div class=\"legend\"><span class=\"key b\"></span>before<span class=\"key a\"></span>\
         after<span class=\"key s\"></span>scale factor s</div>\n",
    );
    pair_chart(o, p);
    o.push_str("</figure>\n");
}

/// Left and right edges of the two range panels and the full-width scale panel.
const LEFT: (f64, f64) = (62.0, 500.0);
const RIGHT: (f64, f64) = (588.0, 1026.0);

fn pair_chart(o: &mut String, p: &ClsPair) {
    let height = 352.0;
    w!(
        o,
        "<svg class=\"pair-chart\" viewBox=\"0 0 {WIDTH} {height}\" role=\"img\" \
         aria-label=\"Per-channel weight ranges before and after scaling, and scale factors\">"
    );
    range_panel(
        o,
        LEFT,
        (26.0, 186.0),
        "layer 1 · output channels",
        "max |w|",
        &p.range_before.layer1_out,
        &p.range_after.layer1_out,
    );
    range_panel(
        o,
        RIGHT,
        (26.0, 186.0),
        "layer 2 · input channels",
        "max |w|",
        &p.range_before.layer2_in,
        &p.range_after.layer2_in,
    );
    scale_panel(o, (LEFT.0, RIGHT.1), (246.0, 326.0), &p.scale);
    o.push_str("</svg>\n");
}

/// A log-scale panel of one side of a pair: `before` and `after` per channel.
fn range_panel(
    o: &mut String,
    (x0, x1): (f64, f64),
    (y0, y1): (f64, f64),
    title: &str,
    unit: &str,
    before: &[f32],
    after: &[f32],
) {
    let n = before.len().max(after.len());
    w!(
        o,
        "<text class=\"t\" x=\"{x0}\" y=\"{}\">{}</text>",
        y0 - 10.0,
        esc(title)
    );
    let all = before.iter().chain(after).map(|&v| f64::from(v));
    let Some(axis) = Axis::log(all, y0, y1) else {
        centered_text(
            o,
            (x0 + x1) / 2.0,
            (y0 + y1) / 2.0,
            "no positive finite ranges",
        );
        return;
    };
    axis.draw(o, x0, x1, unit);
    let layout = Layout::new(n, x1 - x0);
    if let Layout::Dots { step, .. } = layout {
        let mut pen = Pen::default();
        for (i, (&b, &a)) in before.iter().zip(after).enumerate() {
            let (b, a) = (f64::from(b), f64::from(a));
            if positive(b) && positive(a) {
                pen.column(x0 + (i as f64 + 0.5) * step, axis.y(b), axis.y(a));
            }
        }
        if !pen.d.is_empty() {
            w!(o, "<path class=\"c\" d=\"{}\"/>", pen.d);
        }
    }
    let dropped =
        series(o, "b", before, &axis, x0, &layout) + series(o, "a", after, &axis, x0, &layout);
    x_caption(o, x0, x1, y1, n, &layout, dropped);
}

fn scale_panel(o: &mut String, (x0, x1): (f64, f64), (y0, y1): (f64, f64), scale: &[f32]) {
    w!(
        o,
        "<text class=\"t\" x=\"{x0}\" y=\"{}\">scale factor s per channel \
         <tspan class=\"muted-t\">(dashed: s = 1)</tspan></text>",
        y0 - 10.0
    );
    let all = scale
        .iter()
        .map(|&v| f64::from(v))
        .chain(std::iter::once(1.0));
    let Some(axis) = Axis::log(all, y0, y1) else {
        return;
    };
    axis.draw(o, x0, x1, "s");
    w!(
        o,
        "<path class=\"one\" d=\"M{x0} {:.1}H{x1}\"/>",
        axis.y(1.0)
    );
    let layout = Layout::new(scale.len(), x1 - x0);
    let dropped = series(o, "s", scale, &axis, x0, &layout);
    x_caption(o, x0, x1, y1, scale.len(), &layout, dropped);
}

fn x_caption(o: &mut String, x0: f64, x1: f64, y1: f64, n: usize, layout: &Layout, dropped: usize) {
    let mut text = format!("channel 0 … {}", n.saturating_sub(1));
    if let Layout::Bands { per, .. } = layout {
        w!(text, " · band: min to max over each {per} channels");
    }
    if dropped > 0 {
        w!(text, " · {dropped} zero or non-finite values not drawn");
    }
    centered_text(o, (x0 + x1) / 2.0, y1 + 16.0, &text);
}

/// How a series is drawn: one dot per channel while dots stay [`DOT_SPACING`] apart, otherwise
/// a band spanning the min..max of consecutive buckets of at least four channels, about
/// [`BAND_SPACING`] apart.
enum Layout {
    Dots { step: f64, width: f64 },
    Bands { per: usize, cols: usize, step: f64 },
}

/// Least distance between two dots, in SVG units (about CSS pixels).
const DOT_SPACING: f64 = 3.4;
/// Target distance between two band columns.
const BAND_SPACING: f64 = 4.5;

impl Layout {
    fn new(n: usize, width: f64) -> Layout {
        let n = n.max(1);
        if n as f64 * DOT_SPACING <= width {
            let step = width / n as f64;
            Layout::Dots {
                step,
                width: (step * 0.5).clamp(3.0, 7.0),
            }
        } else {
            let max_cols = ((width / BAND_SPACING) as usize).max(1);
            let per = n.div_ceil(max_cols).max(4);
            let cols = n.div_ceil(per);
            Layout::Bands {
                per,
                cols,
                step: width / cols as f64,
            }
        }
    }
}

fn positive(v: f64) -> bool {
    v.is_finite() && v > 0.0
}

/// Draws one series (one SVG path); returns how many values were left out (non-positive or
/// non-finite).
fn series(o: &mut String, class: &str, v: &[f32], axis: &Axis, x0: f64, layout: &Layout) -> usize {
    let dropped = v.iter().filter(|&&x| !positive(f64::from(x))).count();
    match *layout {
        Layout::Dots { step, width } => {
            let mut pen = Pen::default();
            for (i, &x) in v.iter().enumerate() {
                let x = f64::from(x);
                if positive(x) {
                    let y = axis.y(x);
                    pen.column(x0 + (i as f64 + 0.5) * step, y, y);
                }
            }
            if !pen.d.is_empty() {
                w!(
                    o,
                    "<path class=\"{class}\" stroke-width=\"{width:.1}\" d=\"{}\"/>",
                    pen.d
                );
            }
        }
        Layout::Bands { per, cols, step } => {
            let mut runs: Vec<Vec<(i64, i64, i64)>> = Vec::new();
            let mut open = false;
            for c in 0..cols {
                let chunk = v.get(c * per..((c + 1) * per).min(v.len())).unwrap_or(&[]);
                let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
                for &x in chunk {
                    let x = f64::from(x);
                    if positive(x) {
                        lo = lo.min(x);
                        hi = hi.max(x);
                    }
                }
                if lo > hi {
                    open = false;
                    continue;
                }
                let point = (
                    unit(x0 + (c as f64 + 0.5) * step),
                    unit(axis.y(hi)),
                    unit(axis.y(lo)),
                );
                match runs.last_mut() {
                    Some(run) if open => run.push(point),
                    _ => runs.push(vec![point]),
                }
                open = true;
            }
            let mut d = String::new();
            for run in &runs {
                let outline = run
                    .iter()
                    .map(|&(x, top, _)| (x, top))
                    .chain(run.iter().rev().map(|&(x, _, bottom)| (x, bottom)));
                let mut last = None;
                for (x, y) in outline {
                    match last {
                        None => w!(d, "M{x} {y}"),
                        Some((px, py)) => w!(d, "l{} {}", x - px, y - py),
                    }
                    last = Some((x, y));
                }
                d.push('z');
            }
            if !d.is_empty() {
                w!(o, "<path class=\"{class} band\" d=\"{d}\"/>");
            }
        }
    }
    dropped
}

/// Builds a path of vertical strokes with relative moves in whole units (a unit is about a CSS
/// pixel), so the path stays short and the rounding does not drift.
#[derive(Default)]
struct Pen {
    d: String,
    x: i64,
    y: i64,
}

impl Pen {
    fn column(&mut self, x: f64, y_from: f64, y_to: f64) {
        let (x, yf, yt) = (unit(x), unit(y_from), unit(y_to));
        if self.d.is_empty() {
            w!(self.d, "M{x} {yf}");
        } else {
            w!(self.d, "m{} {}", x - self.x, yf - self.y);
        }
        if yt == yf {
            self.d.push_str("h0");
        } else {
            w!(self.d, "v{}", yt - yf);
        }
        self.x = x;
        self.y = yt;
    }
}

fn unit(v: f64) -> i64 {
    if v.is_finite() {
        v.round().clamp(-1e9, 1e9) as i64
    } else {
        0
    }
}
