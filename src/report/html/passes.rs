//! The sections on the other passes and the run: high-bias fold, skipped candidates,
//! BatchNorm folds, ReLU6 decisions, compatibility notes and timings.

use super::blocks::{code_list, counted_section, counted_section_of};
use super::text::{esc, name, num, opt_num, reason};
use crate::report::{FoldDirection, Relu6Action, Report};

/// The high-bias fold: mode, whether applied, and what each pair absorbed.
pub(super) fn hbf(o: &mut String, r: &Report) {
    let h = &r.hbf;
    w!(
        o,
        "<section id=\"hbf\"><h2>High-bias fold</h2><p>Mode <b>{}</b> · {}</p>\n",
        esc(if h.mode.is_empty() {
            "unknown"
        } else {
            &h.mode
        }),
        if h.applied {
            format!("applied to {} pairs", h.pairs.len())
        } else {
            format!("not applied: {}", reason(h.reason.as_deref()))
        }
    );
    if !h.pairs.is_empty() {
        o.push_str(
            "<table><thead><tr><th>Layer 1</th><th>Layer 2</th><th class=\"n\">Channels</th>\
             <th class=\"n\">Channels absorbing</th><th class=\"n\">max absorbed</th></tr></thead>\
             <tbody>",
        );
        for p in &h.pairs {
            let nonzero = p.absorbed.iter().filter(|v| **v != 0.0).count();
            let max = p
                .absorbed
                .iter()
                .map(|v| f64::from(v.abs()))
                .filter(|v| !v.is_nan())
                .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
            w!(
                o,
                "<tr><td><code>{}</code></td><td><code>{}</code></td><td class=\"n\">{}</td>\
                 <td class=\"n\">{nonzero}</td><td class=\"n\">{}</td></tr>",
                name(&p.layer1),
                name(&p.layer2),
                p.absorbed.len(),
                opt_num(max)
            );
        }
        o.push_str("</tbody></table>\n");
    }
    o.push_str("</section>\n");
}

/// Skipped candidates: counts per reason, then every one.
pub(super) fn skipped(o: &mut String, r: &Report) {
    let empty = "Every candidate was handled.";
    if !counted_section_of(o, "skipped", "Skipped candidates", r.skipped.len(), empty) {
        return;
    }
    let mut reasons: Vec<(&str, usize)> = Vec::new();
    for s in &r.skipped {
        match reasons.iter_mut().find(|(r, _)| *r == s.reason) {
            Some((_, c)) => *c += 1,
            None => reasons.push((&s.reason, 1)),
        }
    }
    o.push_str("<p>");
    for (i, (reason, c)) in reasons.iter().enumerate() {
        if i > 0 {
            o.push_str(" · ");
        }
        w!(o, "<code>{}</code> × {c}", esc(reason));
    }
    o.push_str("</p>\n");
    w!(
        o,
        "<details{}><summary>All {} skipped candidates</summary><div class=\"body\"><table>\
         <thead><tr><th>Pass</th><th>Reason</th><th>Nodes</th><th>Detail</th></tr></thead><tbody>",
        if r.skipped.len() <= 30 { " open" } else { "" },
        r.skipped.len()
    );
    for s in &r.skipped {
        w!(
            o,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
            esc(&s.pass),
            esc(&s.reason),
            code_list(&s.nodes, "<br>"),
            esc(&s.detail)
        );
    }
    o.push_str("</tbody></table></div></details></section>\n");
}

/// BatchNorm folds, and the BatchNormalization nodes kept but rewritten.
pub(super) fn bn_folds(o: &mut String, r: &Report) {
    counted_section(o, "bn-folds", "BatchNorm folds", r.bn_folds.len());
    if r.bn_folds.is_empty() {
        o.push_str("<p class=\"muted\">None.</p>");
    } else {
        w!(
            o,
            "<details><summary>{} BatchNormalization nodes folded</summary><div class=\"body\">\
             <table><thead><tr><th>BatchNormalization → layer</th><th>Direction</th>\
             <th class=\"n\">Channels</th><th class=\"n\">ε</th><th>Notes</th></tr></thead><tbody>",
            r.bn_folds.len()
        );
        for f in &r.bn_folds {
            let mut notes = Vec::new();
            if let Some(t) = &f.through {
                notes.push(format!("through <code>{}</code>", name(t)));
            }
            if let Some(b) = &f.created_bias {
                notes.push(format!(
                    "<span class=\"hint\" title=\"{}\">created bias</span>",
                    esc(b)
                ));
            }
            w!(
                o,
                "<tr><td><code>{}</code><br>→ <code>{}</code> <span class=\"muted\">{}</span>\
                 </td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
                name(&f.bn),
                name(&f.layer),
                esc(&f.layer_op),
                match f.direction {
                    FoldDirection::Backward => "backward",
                    FoldDirection::Forward => "forward",
                },
                f.channels,
                num(f64::from(f.epsilon)),
                notes.join("<br>")
            );
        }
        o.push_str("</tbody></table></div></details>\n");
    }
    if !r.bn_rewrites.is_empty() {
        w!(
            o,
            "<p>{} BatchNormalization nodes kept and rewritten to mean 0 / variance 1:</p><ul>",
            r.bn_rewrites.len()
        );
        w!(
            o,
            "<li>{}</li></ul>",
            code_list(&r.bn_rewrites, "</li><li>")
        );
    }
    o.push_str("</section>\n");
}

/// What happened to each Clip(0, 6)-like node.
pub(super) fn relu6(o: &mut String, r: &Report) {
    let empty = "No Clip(0, 6) node met.";
    if !counted_section_of(o, "relu6", "ReLU6 decisions", r.relu6.len(), empty) {
        return;
    }
    w!(
        o,
        "<details><summary>{} Clip nodes</summary><div class=\"body\"><table><thead><tr>\
         <th>Clip node</th><th class=\"n\">min</th><th class=\"n\">max</th><th>Action</th>\
         <th>Why</th></tr></thead><tbody>",
        r.relu6.len()
    );
    let bound = |v: Option<f32>| v.map_or_else(|| "—".into(), |v| num(f64::from(v)));
    for d in &r.relu6 {
        let (class, action) = match d.action {
            Relu6Action::Replaced => ("warn", "replaced by Relu"),
            Relu6Action::RewrittenExact => ("ok", "exact rewrite"),
            Relu6Action::Unchanged => ("ok", "unchanged"),
            Relu6Action::Kept => ("ok", "kept"),
        };
        w!(
            o,
            "<tr><td><code>{}</code></td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td><span class=\"pill {class}\">{action}</span></td><td>{}</td></tr>",
            name(&d.node),
            bound(d.min),
            bound(d.max),
            esc(&d.reason)
        );
    }
    o.push_str("</tbody></table></div></details></section>\n");
}

/// Where `compat = aimet` deliberately differs.
pub(super) fn notes(o: &mut String, r: &Report) {
    o.push_str("<section id=\"notes\"><h2>Notes</h2>\n");
    if r.compat_notes.is_empty() {
        o.push_str("<p class=\"muted\">No compatibility notes.</p>\n");
    } else {
        o.push_str("<p>Where <code>compat = aimet</code> deliberately differs:</p><ul>");
        for n in &r.compat_notes {
            w!(o, "<li>{}</li>", esc(n));
        }
        o.push_str("</ul>\n");
    }
    o.push_str("</section>\n");
}

/// Wall time per stage, in pipeline order.
pub(super) fn timings(o: &mut String, r: &Report) {
    const ORDER: [&str; 9] = [
        "prepare",
        "bn_fold",
        "relu6",
        "cls",
        "hbf",
        "finish",
        "quantization",
        "encode",
        "verify",
    ];
    let Ok(serde_json::Value::Object(map)) = serde_json::to_value(&r.timings_ms) else {
        return;
    };
    let mut stages: Vec<(&String, &serde_json::Value)> = map.iter().collect();
    stages.sort_by_key(|(k, _)| ORDER.iter().position(|o| o == k).unwrap_or(ORDER.len()));
    let parts: Vec<String> = stages
        .iter()
        .map(|(name, ms)| {
            let ms = ms.as_f64().map_or_else(|| "n/a".into(), num);
            format!("{} {ms} ms", esc(name))
        })
        .collect();
    w!(
        o,
        "<section id=\"timings\"><p class=\"muted\">Timings: {}.</p></section>\n",
        parts.join(" · ")
    );
}
