//! The int8 readiness section: headline tiles, the end-to-end simulation table and per-layer
//! sensitivity, the per-layer weight SQNR chart and table, activation range growth; and the
//! held-out selection of the scaling (`select = auto`).

use super::axis::{centered_text, Axis, WIDTH};
use super::blocks::{layer_cells, per_layer_table};
use super::text::{db, db_opt, esc, median, name, num, pct, signed_db};
use crate::report::{EndToEnd, LayerQuant, Quantization, Selection};

/// Int8 readiness, or a note that the report has no quantization figures.
pub(super) fn int8(o: &mut String, q: Option<&Quantization>) {
    o.push_str("<section id=\"int8\"><h2>Int8 readiness</h2>\n");
    let Some(q) = q else {
        o.push_str(
            "<p class=\"muted\" id=\"sqnr-chart\" data-state=\"absent\">Not computed: this report \
             has no quantization figures, so the per-layer int8 weight SQNR chart is not shown.</p>\
             </section>\n",
        );
        return;
    };
    let l = &q.layers;
    let before = median(l.iter().map(|x| x.sqnr_before_db));
    let after = median(l.iter().map(|x| x.sqnr_after_db));
    let ceiling = median(l.iter().map(|x| x.sqnr_per_channel_db));
    let improved = l
        .iter()
        .filter(|x| x.sqnr_after_db > x.sqnr_before_db + 0.05)
        .count();
    let worse = l
        .iter()
        .filter(|x| x.sqnr_after_db < x.sqnr_before_db - 0.05)
        .count();
    let worst = |f: fn(&LayerQuant) -> f64| {
        l.iter()
            .map(f)
            .filter(|v| !v.is_nan())
            .min_by(|a, b| a.total_cmp(b))
    };
    o.push_str("<div class=\"tiles wide\">");
    w!(
        o,
        "<div class=\"tile\"><b>{} → {}</b><span>median per-tensor int8 weight SQNR over {} \
         layers (BN-folded → equalized)</span></div>",
        db_opt(before),
        db_opt(after),
        l.len()
    );
    w!(
        o,
        "<div class=\"tile\"><b>{} → {}</b><span>worst layer, per-tensor</span></div>",
        db_opt(worst(|x| x.sqnr_before_db)),
        db_opt(worst(|x| x.sqnr_after_db))
    );
    w!(
        o,
        "<div class=\"tile\"><b>{}</b><span>median per-channel SQNR (the ceiling CLE aims \
         at)</span></div>",
        db_opt(ceiling)
    );
    w!(
        o,
        "<div class=\"tile\"><b>{improved} / {worse}</b><span>layers improved / worse \
         (±0.05 dB)</span></div>"
    );
    o.push_str("</div>\n");

    match &q.end_to_end {
        Some(e) => end_to_end(o, e),
        None => o.push_str("<p class=\"muted\">End-to-end simulation: not run.</p>\n"),
    }

    o.push_str(
        "<h3>Int8 weight SQNR per layer</h3>\
         <div class=\"legend\"><span class=\"key b\"></span>BN-folded (per-tensor)\
         <span class=\"key a\"></span>equalized (per-tensor)\
         <span class=\"key pc\"></span>per-channel ceiling</div>\n",
    );
    if l.is_empty() {
        o.push_str(
            "<p class=\"muted\" id=\"sqnr-chart\" data-state=\"empty\">No layer figures.</p>\n",
        );
    } else {
        sqnr_chart(o, l);
        per_layer_table(
            o,
            l.len(),
            "<th class=\"n\">BN-folded</th><th class=\"n\">Equalized</th><th class=\"n\">Δ</th>\
             <th class=\"n\">Per-channel</th>",
        );
        for (i, x) in l.iter().enumerate() {
            layer_cells(o, i, &x.layer, &x.op, x.channels);
            w!(
                o,
                "<td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
                 <td class=\"n\">{}</td></tr>",
                db(x.sqnr_before_db),
                db(x.sqnr_after_db),
                signed_db(x.sqnr_after_db - x.sqnr_before_db),
                db(x.sqnr_per_channel_db)
            );
        }
        o.push_str("</tbody></table></div></details>\n");
    }

    if !q.activations.is_empty() {
        let mut acts: Vec<_> = q.activations.iter().collect();
        acts.sort_by(|a, b| b.growth_data_free.total_cmp(&a.growth_data_free));
        let top = acts.first().map(|a| a.growth_data_free);
        w!(
            o,
            "<details><summary>Activation range growth: {} tensors, largest ×{} \
             (data-free estimate)</summary><div class=\"body\"><p class=\"muted\">Per-tensor \
             range after / before scaling of each activation after a scaled layer; growth makes \
             per-tensor activation quantization coarser.</p><table><thead><tr><th>Tensor \
             (after layer)</th><th class=\"n\">Growth (data-free)</th><th class=\"n\">Growth \
             (measured)</th></tr></thead><tbody>",
            acts.len(),
            top.map_or_else(|| "n/a".into(), num)
        );
        for a in acts {
            w!(
                o,
                "<tr><td><code>{}</code><br><span class=\"muted\">after <code>{}</code></span>\
                 </td><td class=\"n\">×{}</td><td class=\"n\">{}</td></tr>",
                name(&a.tensor),
                name(&a.layer),
                num(a.growth_data_free),
                a.growth_measured
                    .map_or_else(|| "—".into(), |g| format!("×{}", num(g)))
            );
        }
        o.push_str("</tbody></table></div></details>\n");
    } else {
        o.push_str("<p class=\"muted\">Activation range growth: none recorded.</p>\n");
    }
    o.push_str("</section>\n");
}

/// The candidates of `select = auto`, scored on held-out samples, and the one kept.
pub(super) fn selection(o: &mut String, sel: &Selection) {
    w!(
        o,
        "<section><h2>Scaling chosen on held-out samples</h2>\
         <p class=\"muted\">select = auto: {} candidates scored on {} samples used for nothing \
         else ({}); verification and the figures above use the other {}. Kept: <b>{}</b>.</p>\n\
         <table><thead><tr><th>Candidate</th><th class=\"n\">Pass cap</th><th class=\"n\">Balance</th>\
         <th class=\"n\">SQNR</th><th class=\"n\">Per-sample median</th><th class=\"n\">Top-1</th></tr></thead><tbody>",
        sel.candidates.len(),
        sel.scored_samples,
        esc(&sel.score),
        sel.other_samples,
        esc(&sel.chosen)
    );
    for c in &sel.candidates {
        w!(
            o,
            "<tr><td>{}{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            esc(&c.label),
            if c.chosen { " ✓" } else { "" },
            c.iterations,
            c.balance.map_or("—".to_string(), |b| num(f64::from(b))),
            db(c.sqnr_db),
            db(c.per_sample_median_db),
            pct(c.top1_agreement)
        );
    }
    o.push_str("</tbody></table></section>\n");
}

/// Simulated int8 against the FP32 original: scheme × model table and per-layer sensitivity.
fn end_to_end(o: &mut String, e: &EndToEnd) {
    w!(
        o,
        "<h3>End to end (simulated int8 against the FP32 original)</h3>\
         <p class=\"muted\">{} sample{} from {}. Each cell: output SQNR over all samples (higher \
         is better) · top-1 agreement with the original; with several samples also the median and \
         10th percentile of the per-sample SQNR.</p>\n",
        e.samples,
        if e.samples == 1 { "" } else { "s" },
        esc(&e.inputs)
    );
    let mut models: Vec<&str> = Vec::new();
    let mut schemes: Vec<&str> = Vec::new();
    for r in &e.rows {
        if !models.contains(&r.model.as_str()) {
            models.push(&r.model);
        }
        if !schemes.contains(&r.scheme.as_str()) {
            schemes.push(&r.scheme);
        }
    }
    if e.rows.is_empty() {
        o.push_str("<p class=\"muted\">No rows.</p>\n");
    } else {
        o.push_str("<table><thead><tr><th>Scheme</th>");
        for m in &models {
            w!(o, "<th class=\"n\">{}</th>", esc(&model_label(m)));
        }
        let delta = models.contains(&"bn_folded") && models.contains(&"equalized");
        if delta {
            o.push_str("<th class=\"n\">Δ SQNR</th>");
        }
        o.push_str("</tr></thead><tbody>");
        let find = |m: &str, s: &str| e.rows.iter().find(|r| r.model == m && r.scheme == s);
        for s in &schemes {
            w!(o, "<tr><td>{}</td>", esc(&s.replace('_', " ")));
            for m in &models {
                match find(m, s) {
                    Some(r) => {
                        w!(
                            o,
                            "<td class=\"n\">{} · {}",
                            db(r.sqnr_db),
                            pct(r.top1_agreement)
                        );
                        if let (Some(m), Some(p)) = (r.per_sample_median_db, r.per_sample_p10_db) {
                            w!(
                                o,
                                "<br><span class=\"muted\">per image: median {} · p10 {}</span>",
                                db(m),
                                db(p)
                            );
                        }
                        o.push_str("</td>");
                    }
                    None => o.push_str("<td class=\"n\">—</td>"),
                }
            }
            if delta {
                match (find("bn_folded", s), find("equalized", s)) {
                    (Some(a), Some(b)) => w!(
                        o,
                        "<td class=\"n\"><b>{}</b></td>",
                        signed_db(b.sqnr_db - a.sqnr_db)
                    ),
                    _ => o.push_str("<td class=\"n\">—</td>"),
                }
            }
            o.push_str("</tr>");
        }
        o.push_str("</tbody></table>\n");
    }
    if !e.sensitivity.is_empty() {
        let mut s: Vec<_> = e.sensitivity.iter().collect();
        s.sort_by(|a, b| a.sqnr_db.total_cmp(&b.sqnr_db));
        let max = s
            .iter()
            .map(|x| x.sqnr_db)
            .filter(|v| v.is_finite())
            .fold(f64::NEG_INFINITY, f64::max);
        w!(
            o,
            "<details><summary>Per-layer sensitivity: {} layers, most sensitive first \
             (output SQNR with only that layer's weight in int8)</summary><div class=\"body\">\
             <table><thead><tr><th>#</th><th>Layer</th><th class=\"n\">Output SQNR</th><th></th>\
             </tr></thead><tbody>",
            s.len()
        );
        for (i, x) in s.iter().enumerate() {
            let frac = if max.is_finite() && max > 0.0 && x.sqnr_db.is_finite() {
                (x.sqnr_db / max).clamp(0.0, 1.0)
            } else {
                0.0
            };
            w!(
                o,
                "<tr><td class=\"n\">{}</td><td><code>{}</code></td><td class=\"n\">{}</td>\
                 <td style=\"width:30%\"><span class=\"bar\" style=\"width:{:.0}%\"></span></td></tr>",
                i + 1,
                name(&x.layer),
                db(x.sqnr_db),
                frac * 100.0
            );
        }
        o.push_str("</tbody></table></div></details>\n");
    }
}

fn model_label(m: &str) -> String {
    match m {
        "bn_folded" => "BN-folded".into(),
        "equalized" => "Equalized".into(),
        "deploy" => "Deploy".into(),
        other => other.replace('_', " "),
    }
}

/// Dumbbell chart: per layer, per-tensor SQNR before and after and the per-channel ceiling.
fn sqnr_chart(o: &mut String, layers: &[LayerQuant]) {
    let (x0, x1, y0, y1) = (62.0, 1026.0, 12.0, 262.0);
    let values = layers
        .iter()
        .flat_map(|l| [l.sqnr_before_db, l.sqnr_after_db, l.sqnr_per_channel_db]);
    w!(
        o,
        "<svg id=\"sqnr-chart\" class=\"sqnr-chart\" data-state=\"computed\" \
         viewBox=\"0 0 {WIDTH} 300\" role=\"img\" aria-label=\"Int8 weight SQNR per layer, \
         before and after equalization\">"
    );
    let Some(axis) = Axis::linear(values, y0, y1) else {
        centered_text(o, (x0 + x1) / 2.0, 140.0, "no finite SQNR values");
        o.push_str("</svg>\n");
        return;
    };
    axis.draw(o, x0, x1, "SQNR (dB)");
    let n = layers.len();
    let step = (x1 - x0) / n as f64;
    let half = (step * 0.4).clamp(1.0, 8.0);
    let dot = (step * 0.45).clamp(2.5, 7.0);
    let (mut conn, mut pc, mut before, mut after) =
        (String::new(), String::new(), String::new(), String::new());
    let mut hits = String::new();
    let mut not_drawn = 0;
    for (i, l) in layers.iter().enumerate() {
        let x = x0 + (i as f64 + 0.5) * step;
        let (b, a, c) = (l.sqnr_before_db, l.sqnr_after_db, l.sqnr_per_channel_db);
        if b.is_finite() && a.is_finite() {
            w!(conn, "M{x:.1} {:.1}V{:.1}", axis.y(b), axis.y(a));
        }
        if c.is_finite() {
            w!(pc, "M{:.1} {:.1}h{:.1}", x - half, axis.y(c), 2.0 * half);
        }
        for (v, d) in [(b, &mut before), (a, &mut after)] {
            if v.is_finite() {
                w!(d, "M{x:.1} {:.1}h0", axis.y(v));
            } else {
                not_drawn += 1;
            }
        }
        if n <= 400 {
            w!(
                hits,
                "<rect class=\"hit\" x=\"{:.1}\" y=\"{y0}\" width=\"{:.1}\" height=\"{}\">\
                 <title>#{} {} ({}): {} → {}, per-channel {}</title></rect>",
                x - step / 2.0,
                step,
                y1 - y0,
                i + 1,
                esc(&l.layer),
                esc(&l.op),
                db(b),
                db(a),
                db(c)
            );
        }
    }
    w!(
        o,
        "<path class=\"c\" d=\"{conn}\"/><path class=\"pc\" d=\"{pc}\"/>\
         <path class=\"b\" stroke-width=\"{dot:.1}\" d=\"{before}\"/>\
         <path class=\"a\" stroke-width=\"{dot:.1}\" d=\"{after}\"/>{hits}"
    );
    let every = [1usize, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
        .into_iter()
        .find(|k| n / k <= 20)
        .unwrap_or(n.max(1));
    for i in (0..n).filter(|i| (i + 1) % every == 0 || *i == 0) {
        w!(
            o,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            x0 + (i as f64 + 0.5) * step,
            y1 + 13.0,
            i + 1
        );
    }
    let mut caption = format!("layer 1 … {n} in report order (hover a column for its name)");
    if not_drawn > 0 {
        w!(caption, " · {not_drawn} non-finite values not drawn");
    }
    centered_text(o, (x0 + x1) / 2.0, y1 + 30.0, &caption);
    o.push_str("</svg>\n");
}
