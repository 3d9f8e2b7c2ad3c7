//! The summary at the top of the page (count tiles, int8 headline, verification, model facts
//! and options) and the coverage section (what was scaled, folded or left alone, and why).

use super::blocks::{code_list, kv, tile};
use super::text::{db_opt, esc, median, name, num, pct, reason, sci};
use crate::report::{ClsKind, CoverageCount, LayerQuant, Relu6Action, Report, VerifyStatus};

fn verification_pill(r: &Report) -> (&'static str, String) {
    let v = &r.verification;
    match v.status {
        VerifyStatus::Verified => (
            if v.max_rel_l2.is_some_and(|d| d < 1e-3) {
                "ok"
            } else {
                "warn"
            },
            format!(
                "verified · max relative L2 {}",
                v.max_rel_l2.map_or_else(|| "n/a".to_string(), sci)
            ),
        ),
        VerifyStatus::NotVerified => (
            "bad",
            format!("not verified: {}", reason(v.reason.as_deref())),
        ),
        VerifyStatus::Disabled => ("warn", "verification disabled".to_string()),
    }
}

/// The summary: count tiles, the int8 headline, verification, model facts and options.
pub(super) fn summary(o: &mut String, r: &Report) {
    o.push_str("<section id=\"summary\"><h2>Summary</h2>\n<div class=\"tiles\">");
    let triples = r
        .cls_sets
        .iter()
        .filter(|s| s.kind == ClsKind::Triple)
        .count();
    let pairs = r.cls_sets.len() - triples;
    tile(o, r.bn_folds.len(), "BatchNorm folds", "");
    tile(
        o,
        r.cls_sets.len(),
        "CLS sets",
        &format!("{triples} triples, {pairs} pairs"),
    );
    let count = |a: Relu6Action| r.relu6.iter().filter(|d| d.action == a).count();
    let mut detail = Vec::new();
    for (a, name) in [
        (Relu6Action::RewrittenExact, "exact"),
        (Relu6Action::Replaced, "replaced"),
        (Relu6Action::Unchanged, "unchanged"),
        (Relu6Action::Kept, "kept"),
    ] {
        let c = count(a);
        if c > 0 {
            detail.push(format!("{c} {name}"));
        }
    }
    tile(o, r.relu6.len(), "ReLU6 decisions", &detail.join(", "));
    tile(o, r.hbf.pairs.len(), "High-bias fold pairs", &r.hbf.mode);
    tile(o, r.skipped.len(), "Candidates skipped", "");
    o.push_str("</div>\n");
    if let Some(q) = &r.quantization {
        let median_db = |f: fn(&LayerQuant) -> f64| db_opt(median(q.layers.iter().map(f)));
        w!(
            o,
            "<p><b>Int8 readiness</b> median per-tensor weight SQNR <b>{} → {}</b> \
             <span class=\"muted\">(BN-folded → equalized; per-channel ceiling {}; \
             <a href=\"#int8\">details</a>)</span></p>\n",
            median_db(|x| x.sqnr_before_db),
            median_db(|x| x.sqnr_after_db),
            median_db(|x| x.sqnr_per_channel_db)
        );
    }

    let (class, text) = verification_pill(r);
    w!(
        o,
        "<p><b>Verification</b> <span class=\"pill {class}\">{text}</span>"
    );
    if !r.verification.inputs.is_empty() {
        w!(
            o,
            " <span class=\"muted\">on {}</span>",
            esc(&r.verification.inputs)
        );
    }
    o.push_str("</p>\n");
    if !r.verification.outputs.is_empty() {
        o.push_str(
            "<table class=\"compact\"><thead><tr><th>Output</th><th class=\"n\">max |a − b|</th>\
             <th class=\"n\">relative L2</th></tr></thead><tbody>",
        );
        for d in &r.verification.outputs {
            w!(
                o,
                "<tr><td><code>{}</code></td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                name(&d.name),
                sci(d.max_abs_err),
                sci(d.rel_l2)
            );
        }
        o.push_str("</tbody></table>\n");
    }

    o.push_str("<div class=\"cols\"><div><h3>Model</h3><dl class=\"kv\">");
    let m = &r.model;
    kv(o, "IR version", &m.ir_version.to_string());
    kv(
        o,
        "Opset",
        &m.opset.map_or_else(|| "unknown".into(), |v| v.to_string()),
    );
    kv(o, "Producer", &m.producer);
    kv(
        o,
        "Nodes",
        &format!("{} → {}", m.nodes_before, m.nodes_after),
    );
    kv(
        o,
        "Initializers",
        &format!("{} → {}", m.initializers_before, m.initializers_after),
    );
    kv(o, "Nodes in scope", &m.nodes_in_scope.to_string());
    if !r.verification.input_shapes.is_empty() {
        let s: Vec<String> = r
            .verification
            .input_shapes
            .iter()
            .map(|t| format!("{} {:?}", t.name, t.shape))
            .collect();
        kv(o, "Inputs", &s.join(", "));
    }
    o.push_str("</dl></div><div><h3>Options</h3><dl class=\"kv\">");
    match serde_json::to_value(&r.options) {
        Ok(v) => {
            let mut flat = Vec::new();
            flatten("", &v, &mut flat);
            for (k, v) in flat {
                kv(o, &k, &v);
            }
        }
        Err(e) => kv(o, "error", &e.to_string()),
    }
    o.push_str("</dl></div></div></section>\n");
}

/// Coverage: weight-bearing layers scaled, BN folded or left alone, and why not scaled; the
/// weight chains folded and the shared tensors copied on the way.
pub(super) fn coverage(o: &mut String, r: &Report) {
    let c = &r.coverage;
    o.push_str("<section id=\"coverage\"><h2>Coverage</h2>\n");
    w!(
        o,
        "<p id=\"coverage-summary\" data-layers=\"{}\" data-scaled=\"{}\"><b>{}</b></p>\n",
        c.total.layers,
        c.scaled.layers,
        esc(&c.summary)
    );
    if c.total.layers > 0 {
        let share = |p: u64| {
            if c.total.parameters > 0 {
                p as f64 / c.total.parameters as f64
            } else {
                0.0
            }
        };
        let folded_only = CoverageCount {
            layers: (c.total.layers)
                .saturating_sub(c.scaled.layers)
                .saturating_sub(c.untouched.layers),
            parameters: (c.total.parameters)
                .saturating_sub(c.scaled.parameters)
                .saturating_sub(c.untouched.parameters),
        };
        w!(
            o,
            "<div class=\"covbar\" role=\"img\" aria-label=\"share of weights\">\
             <span class=\"cov-s\" style=\"width:{:.2}%\"></span>\
             <span class=\"cov-f\" style=\"width:{:.2}%\"></span></div>\
             <p class=\"legend\"><span class=\"key cov-s\"></span>in a CLS set\
             <span class=\"key cov-f\"></span>BN folded only<span class=\"key cov-u\"></span>\
             left alone (share of weights)</p>\n",
            100.0 * share(c.scaled.parameters),
            100.0 * share(folded_only.parameters)
        );
        o.push_str(
            "<table class=\"compact\"><thead><tr><th>Weight-bearing layers</th>\
             <th class=\"n\">Layers</th><th class=\"n\">Weights</th><th class=\"n\">Share of weights</th>\
             </tr></thead><tbody>",
        );
        for (label, n) in [
            ("In a CLS set", c.scaled),
            ("BN folded", c.bn_folded),
            ("BN folded, not scaled", folded_only),
            ("Neither (left alone)", c.untouched),
            ("All", c.total),
        ] {
            w!(
                o,
                "<tr><td>{label}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
                 <td class=\"n\">{}</td></tr>",
                n.layers,
                params(n.parameters),
                pct(share(n.parameters))
            );
        }
        w!(
            o,
            "</tbody></table>\n<p class=\"muted\">BatchNormalization nodes folded: {} of {}.</p>\n",
            c.batch_norms_folded,
            c.batch_norms
        );
    }
    if !c.not_scaled.is_empty() {
        o.push_str(
            "<h3>Not in a CLS set</h3><table id=\"coverage-reasons\"><thead><tr><th>Reason</th>\
             <th>Chain stops at</th><th class=\"n\">Layers</th><th class=\"n\">Weights</th>\
             <th class=\"n\">BN folded</th><th>For example</th></tr></thead><tbody>",
        );
        for g in &c.not_scaled {
            w!(
                o,
                "<tr><td><code>{}</code></td><td>{}</td><td class=\"n\">{}</td>\
                 <td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}{}</td></tr>",
                esc(&g.reason),
                g.blocker
                    .as_deref()
                    .map_or_else(String::new, |b| esc(b).to_string()),
                g.count.layers,
                params(g.count.parameters),
                g.bn_folded,
                code_list(&g.examples, ", "),
                if g.count.layers > g.examples.len() {
                    ", …"
                } else {
                    ""
                }
            );
        }
        o.push_str("</tbody></table>\n");
    }
    if !r.const_folds.is_empty() {
        w!(
            o,
            "<details><summary>{} weight chains folded into initializers</summary>\
             <div class=\"body\"><table><thead><tr><th>Read by</th><th>Chain</th><th>Initializer</th>\
             <th>Source</th></tr></thead><tbody>",
            r.const_folds.len()
        );
        for f in &r.const_folds {
            w!(
                o,
                "<tr><td>{}</td><td>{}</td><td><code>{}</code>{}</td><td><code>{}</code></td></tr>",
                code_list(&f.consumers, ", "),
                esc(&f.ops.join(" → ")),
                name(&f.initializer),
                if f.copied {
                    " (new; the source stays for its other users)"
                } else {
                    ""
                },
                name(&f.source)
            );
        }
        o.push_str("</tbody></table></div></details>\n");
    }
    if !r.tensor_copies.is_empty() {
        w!(
            o,
            "<details><summary>{} shared tensors copied for the layer that was rewritten</summary>\
             <div class=\"body\"><table><thead><tr><th>Pass</th><th>Layer</th><th>Shared tensor</th>\
             <th class=\"n\">Users</th><th>Its own copy</th></tr></thead><tbody>",
            r.tensor_copies.len()
        );
        for t in &r.tensor_copies {
            w!(
                o,
                "<tr><td>{}</td><td><code>{}</code></td><td><code>{}</code></td>\
                 <td class=\"n\">{}</td><td><code>{}</code></td></tr>",
                esc(&t.pass),
                name(&t.node),
                name(&t.tensor),
                t.users,
                name(&t.copy)
            );
        }
        o.push_str("</tbody></table></div></details>\n");
    }
    o.push_str("</section>\n");
}

/// A parameter count: `912`, `45.3 k`, `4.61 M`.
fn params(n: u64) -> String {
    match n {
        0..10_000 => n.to_string(),
        10_000..1_000_000 => format!("{:.1} k", n as f64 / 1e3),
        _ => format!("{:.2} M", n as f64 / 1e6),
    }
}

/// Flattens a JSON value into `dotted.key: value` rows.
fn flatten(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
    use serde_json::Value;
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        Value::Array(a) => {
            let items: Vec<String> = a
                .iter()
                .map(|x| match x {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            let text = if items.is_empty() {
                "—".to_string()
            } else {
                items.join(", ")
            };
            out.push((prefix.to_string(), text));
        }
        Value::String(s) => out.push((prefix.to_string(), s.clone())),
        Value::Null => out.push((prefix.to_string(), "—".to_string())),
        Value::Number(n) if !(n.is_i64() || n.is_u64()) => out.push((
            prefix.to_string(),
            n.as_f64().map_or_else(|| n.to_string(), num),
        )),
        other => out.push((prefix.to_string(), other.to_string())),
    }
}
