//! The deploy model section (weights on the target grid, bias correction, predicted and
//! measured deviation) and the int8 outputs section (the QDQ plan and the files written from
//! it).

use super::blocks::{kv, layer_cells, per_layer_table, tile};
use super::text::{db, db_opt, esc, name, num, pct, reason, sci};
use crate::report::trust::{CheckStatus, Int8Trust};
use crate::report::{DeployReport, Exports, VerifyStatus};

/// The deploy model: target, edits, predicted and measured deviation, per-layer table.
pub(super) fn deploy(o: &mut String, d: &DeployReport) {
    w!(
        o,
        "<section id=\"deploy\"><h2>Deploy model</h2>\n<div class=\"banner warn\">\
         <strong>Function changed by design.</strong> The deploy model's weights lie on the \
         grid of <code>{}</code>{}; it is tied to that grid. The exact equalized model is the \
         main output.{}</div>\n<div class=\"tiles wide\">",
        esc(&d.target),
        if d.bias_correction == "off" {
            String::new()
        } else {
            format!(
                " and its biases are corrected for the weight error ({})",
                esc(&d.bias_correction)
            )
        },
        match d.scaling {
            Some(rule) => format!(
                " The deploy model and the int8 outputs were built from the passes with \
                 <code>{}</code> scaling.",
                rule.name()
            ),
            None => String::new(),
        }
    );
    let s = &d.summary;
    w!(
        o,
        "<div class=\"tile\"><b>{} layers</b><span>on the grid, {} rounding, {} of {} weights \
         flipped</span></div>",
        s.layers,
        esc(&d.rounding),
        s.flips,
        s.elements
    );
    if s.widened > 0 || s.pair_moves > 0 {
        w!(
            o,
            "<div class=\"tile\"><b>{} widened</b><span>layers on a wider step, {} levels \
             moved: no pair of neighbouring products saturates the int16 of x86 kernels \
             without VNNI</span></div>",
            s.widened,
            s.pair_moves
        );
    }
    w!(
        o,
        "<div class=\"tile\"><b>{} corrected</b><span>bias correction {}{}</span></div>",
        s.corrected,
        esc(&d.bias_correction),
        if s.biases_created > 0 {
            format!(", {} biases created", s.biases_created)
        } else {
            String::new()
        }
    );
    w!(
        o,
        "<div class=\"tile\"><b>{}</b><span>predicted output SQNR against the original \
         (<span class=\"hint\" title=\"{}\">estimate</span>)</span></div>",
        db(d.predicted.sqnr_db),
        esc(&d.predicted.method)
    );
    let measured = d.measured.as_ref();
    let measured_db = measured
        .and_then(|m| m.max_rel_l2)
        .map(|r| -20.0 * r.log10());
    w!(
        o,
        "<div class=\"tile\"><b>{}</b><span>measured (tract{}): {}</span></div>",
        db_opt(measured_db),
        measured.map_or_else(String::new, |m| format!(", {}", esc(&m.inputs))),
        match measured {
            Some(m) if m.status == VerifyStatus::Verified => format!(
                "max relative L2 {}",
                m.max_rel_l2.map_or_else(|| "n/a".to_string(), sci)
            ),
            Some(m) => format!("not verified: {}", reason(m.reason.as_deref())),
            None => "verification off".to_string(),
        }
    );
    o.push_str("</div>\n");
    if let Some(e) = &d.expectation {
        w!(o, "<p class=\"muted\">E[x]: {}</p>\n", esc(e));
    }
    per_layer_table(
        o,
        d.layers.len(),
        "<th class=\"n\">Weight SQNR nearest → written</th><th class=\"n\">Flips</th>\
         <th class=\"n\">Max channel error</th><th class=\"n\">Correction RMS</th>\
         <th class=\"n\">Max |Δb|</th><th class=\"n\">Δb / b</th>",
    );
    for (i, l) in d.layers.iter().enumerate() {
        let if_corrected = |v: String| if l.corrected { v } else { "—".into() };
        layer_cells(o, i, &l.layer, &l.op, l.channels);
        w!(
            o,
            "<td class=\"n\">{} → {}</td><td class=\"n\">{}</td><td class=\"n\">{} LSB</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            db(l.nearest_sqnr_db),
            db(l.weight_sqnr_db),
            l.flips,
            num(f64::from(l.max_channel_error_lsb)),
            if_corrected(num(l.correction_rms)),
            if_corrected(num(l.correction_max_abs)),
            if_corrected(pct(l.correction_relative)),
        );
    }
    o.push_str("</tbody></table></div></details>\n");
    if !d.skipped.is_empty() {
        w!(
            o,
            "<details><summary>Left out: {}</summary><div class=\"body\"><table><thead><tr>\
             <th>Nodes</th><th>Step</th><th>Reason</th><th>Detail</th></tr></thead><tbody>",
            d.skipped.len()
        );
        for k in &d.skipped {
            let nodes: Vec<String> = k.nodes.iter().map(|n| name(n).to_string()).collect();
            w!(
                o,
                "<tr><td><code>{}</code></td><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
                nodes.join(", "),
                esc(&k.pass),
                esc(&k.reason),
                esc(&k.detail)
            );
        }
        o.push_str("</tbody></table></div></details>\n");
    }
    if !d.metadata.is_empty() {
        o.push_str("<h3>metadata_props</h3><dl class=\"kv\">");
        for m in &d.metadata {
            kv(o, &m.key, &m.value);
        }
        o.push_str("</dl>\n");
    }
    o.push_str("</section>\n");
}

/// The int8 outputs: the quantization plan, the files written from it, their figures.
pub(super) fn exports(o: &mut String, e: &Exports) {
    let ranges = if e.calibration_samples > 0 {
        format!(
            "{} calibration on {} samples",
            esc(&e.ranges),
            e.calibration_samples
        )
    } else {
        format!("{} activation ranges", esc(&e.ranges))
    };
    w!(
        o,
        "<section id=\"exports\"><h2>Int8 outputs</h2>\n<p>One quantization plan for \
         <code>{}</code>, {ranges}: what a QDQ runtime quantizes, the placement of onnxruntime's \
         QDQ quantizer; every file below is written from it.</p>\n<div class=\"tiles wide\">",
        esc(&e.target)
    );
    tile(
        o,
        e.activations,
        "activations",
        &format!(
            "quantized; {} Relu/Clip folded into their quantizer, {} tied to their ReLU6 bound",
            e.folded_activations, e.tied
        ),
    );
    tile(o, e.weights, "weights", "on the target grid");
    tile(o, e.biases, "biases", "int32, scale = input × weight scale");
    tile(
        o,
        e.left_float.len(),
        "left float",
        "tensors a runtime would quantize that have no range",
    );
    o.push_str("</div>\n");
    let c = &e.coverage;
    w!(
        o,
        "<p>QDQ coverage: <strong>{} of {}</strong> quantizable activations quantized ({:.0} %; \
         quantizable as onnxruntime's <code>quantize_static</code> counts them).</p>\n",
        c.placed,
        c.quantizable,
        c.percent()
    );
    if !c.float.is_empty() {
        o.push_str(
            "<table><thead><tr><th class=\"n\">Float</th><th>Reason</th><th>For example</th>\
             </tr></thead><tbody>",
        );
        for f in &c.float {
            let ex: Vec<String> = f
                .tensors
                .iter()
                .map(|t| format!("<code>{}</code>", name(t)))
                .collect();
            w!(
                o,
                "<tr><td class=\"n\">{}</td><td>{}</td><td>{}</td></tr>",
                f.count,
                esc(&f.reason),
                ex.join(", ")
            );
        }
        o.push_str("</tbody></table>\n");
    }
    o.push_str(
        "<table><thead><tr><th>File</th><th>Format</th><th class=\"n\">Bytes</th>\
                </tr></thead><tbody>",
    );
    for f in &e.files {
        w!(
            o,
            "<tr><td><code>{}</code></td><td>{}</td><td class=\"n\">{}</td></tr>",
            esc(&f.name),
            esc(&f.format),
            f.bytes
        );
    }
    o.push_str("</tbody></table>\n");
    if e.figures.is_empty() {
        o.push_str(
            "<p class=\"muted\">No figures: give sample inputs (<code>--samples</code>) or \
             <code>--quant-e2e</code> to simulate the outputs and run the QDQ model.</p>\n",
        );
    } else {
        o.push_str(
            "<h3>Logits against the original FP32 model</h3><table><thead><tr><th>Output</th>\
             <th>How</th><th class=\"n\">SQNR</th><th class=\"n\">Per-sample median</th>\
             <th class=\"n\">10th percentile</th><th class=\"n\">Top-1 agreement</th>\
             <th>Inputs</th></tr></thead><tbody>",
        );
        for f in &e.figures {
            let how = match f.method.as_str() {
                "simulated" => "simulated (plan in float, tract)",
                "tract" => "run by tract (QuantizeLinear / DequantizeLinear)",
                other => other,
            };
            w!(
                o,
                "<tr><td><code>{}</code></td><td>{}</td><td class=\"n\">{}</td>\
                 <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
                 <td>{} ({} samples{})</td></tr>",
                esc(&f.output),
                esc(how),
                db(f.sqnr_db),
                db(f.median_sqnr_db),
                db(f.p10_sqnr_db),
                pct(f.top1_agreement),
                esc(&f.inputs),
                f.samples,
                if f.in_sample {
                    ", also the calibration samples: optimistic"
                } else {
                    ""
                }
            );
        }
        o.push_str("</tbody></table>\n");
    }
    if let Some(m) = &e.mixed_precision {
        w!(
            o,
            "<details><summary>Mixed precision: {}</summary><div class=\"body\"><table><thead>\
             <tr><th>Tensor on uint16</th><th>Its chain's share of the predicted noise</th></tr>\
             </thead><tbody>",
            esc(&m.summary())
        );
        for a in &m.wide {
            w!(
                o,
                "<tr><td>{}</td><td>{:.1} %</td></tr>",
                esc(&a.tensor),
                100.0 * a.noise_share
            );
        }
        o.push_str("</tbody></table>");
        if !m.outside_int8.is_empty() {
            w!(
                o,
                "<p>Run as float ops on onnxruntime's CPU kernels (they read or write a uint16 \
                 activation): {}</p>",
                esc(&m.outside_int8.join(", "))
            );
        }
        o.push_str("</div></details>\n");
    }
    if let Some(u) = &e.opset_upgrade {
        w!(
            o,
            "<details><summary>QDQ model raised from opset {} to {} (same function): {} nodes \
             rewritten{}</summary><div class=\"body\"><ul>",
            u.from,
            u.to,
            u.changes.len(),
            u.max_rel_diff.map_or(String::new(), |d| format!(
                "; against the original in tract on one sample: max rel diff {d:.1e}"
            ))
        );
        for c in &u.changes {
            w!(o, "<li>{}</li>", esc(c));
        }
        o.push_str("</ul></div></details>\n");
    }
    if !e.left_float.is_empty() {
        w!(
            o,
            "<details><summary>Left float: {}</summary><div class=\"body\"><table><thead><tr>\
             <th>Tensor</th><th>Reason</th></tr></thead><tbody>",
            e.left_float.len()
        );
        for l in &e.left_float {
            w!(
                o,
                "<tr><td><code>{}</code></td><td>{}</td></tr>",
                name(&l.tensor),
                esc(&l.reason)
            );
        }
        o.push_str("</tbody></table></div></details>\n");
    }
    o.push_str("</section>\n");
}

/// The int8 self-check: the verdict, then every output's candidates as measured.
pub(super) fn trust(o: &mut String, t: &Int8Trust) {
    w!(
        o,
        "<section id=\"int8-check\"><h2>Int8 self-check</h2>\n<div class=\"banner {}\">{}</div>\n",
        if t.trusted { "ok" } else { "warn" },
        if t.trusted {
            "<strong>Trusted.</strong> Every int8 output was measured against its plain \
             baseline (nearest rounding, no bias correction) before it was written."
                .to_string()
        } else {
            let problems: Vec<String> = t.problems.iter().map(|p| esc(p).to_string()).collect();
            format!("<strong>Not trusted.</strong> {}", problems.join("; "))
        }
    );
    o.push_str(
        "<table><thead><tr><th>Output</th><th>Candidate</th><th class=\"n\">SQNR</th>\
         <th class=\"n\">Max relative L2</th><th>Written</th></tr></thead><tbody>",
    );
    for c in &t.checks {
        if c.candidates.is_empty() {
            w!(
                o,
                "<tr><td><code>{}</code></td><td>{}</td><td class=\"n\">—</td>\
                 <td class=\"n\">—</td><td>{}</td></tr>",
                esc(&c.output),
                esc(&c.kept),
                match c.status {
                    CheckStatus::Baseline => "yes (the baseline itself)".to_string(),
                    _ => format!("yes, not checked: {}", reason(c.reason.as_deref())),
                }
            );
        }
        for k in &c.candidates {
            let written = k.label.ends_with(c.kept.as_str())
                && (!c.fell_back || !k.label.starts_with("requested"));
            w!(
                o,
                "<tr><td><code>{}</code></td><td>{}</td><td class=\"n\">{}</td>\
                 <td class=\"n\">{}</td><td>{}</td></tr>",
                esc(&c.output),
                esc(&k.label),
                db_opt(k.sqnr_db),
                k.max_rel_l2.map_or_else(|| "n/a".to_string(), sci),
                if written { "yes" } else { "" }
            );
        }
    }
    o.push_str("</tbody></table>\n");
    if let Some(inputs) = t.checks.iter().map(|c| &c.inputs).find(|i| !i.is_empty()) {
        w!(
            o,
            "<p class=\"muted\">Measured by tract on {}.</p>\n",
            esc(inputs)
        );
    }
    o.push_str("</section>\n");
}
