//! Coverage: how much of the model the passes reached. Not a pass: it reads the report and the
//! graph once the passes are done, and fills [`Report::coverage`](crate::report::Report).
//!
//! Every weight-bearing layer in scope (a `Conv`, `ConvTranspose`, `Gemm` or `MatMul` whose
//! weight is a constant, stored or behind a weight chain) is counted with its parameters: in a
//! CLS set, BN folded, or untouched. Layers outside every CLS set are grouped by the reason the
//! `cls` pass recorded and, when the chain after the layer is what stops it, by the *blocker*:
//! the op where the chain ends, or the activation it spells — exporters write SiLU as
//! `x · Sigmoid(x)`, HardSwish as `x · HardSigmoid(x)`, GELU through `Erf`, Mish through
//! `Softplus → Tanh`, a squeeze-excite block as `x · f(GlobalAveragePool(x))`; all of them fan
//! the layer's output out, so "fan_out" alone would not say that the network's activation is
//! what keeps CLS away. Cost: one short walk per layer.

use std::collections::{HashMap, HashSet};

use crate::options::Step;
use crate::report::{Coverage, CoverageCount, CoverageGroup};

use super::{cls, Ctx};
use crate::graph::is_layer_op;

/// Layers listed per group.
const EXAMPLES: usize = 5;
/// Groups named in the one-line summary.
const SUMMARY_GROUPS: usize = 3;

/// Fills `report.coverage` from the report and the graph as the passes left them.
pub fn run(cx: &mut Ctx) {
    let r = &*cx.report;
    let scaled: HashSet<&str> = r
        .cls_sets
        .iter()
        .flat_map(|s| s.layers.iter().map(String::as_str))
        .collect();
    let folded: HashSet<&str> = r.bn_folds.iter().map(|f| f.layer.as_str()).collect();
    let mut reasons: HashMap<&str, &str> = HashMap::new();
    for s in r.skipped.iter().filter(|s| s.pass == "cls") {
        for n in &s.nodes {
            reasons.entry(n.as_str()).or_insert(s.reason.as_str());
        }
    }
    let cls_ran = cx.opts.runs(Step::Cls);
    let mut cov = Coverage {
        batch_norms_folded: r.bn_folds.len(),
        ..Default::default()
    };
    let mut groups: Vec<CoverageGroup> = Vec::new();
    let mut group_of: HashMap<(String, Option<String>), usize> = HashMap::new();
    for &i in cx.work.index().topo() {
        let node = cx.work.node(i);
        if !cx.work.in_scope(i) {
            continue;
        }
        if node.op_type() == "BatchNormalization" && node.domain().is_empty() {
            cov.batch_norms += 1;
        }
        let weight = cx.work.input(i, 1);
        if !is_layer_op(node) || !cx.work.is_const(weight) {
            continue;
        }
        let params = cx
            .work
            .f32_dims(weight)
            .map_or(0, |d| d.iter().product::<usize>() as u64);
        let label = cx.work.label(i);
        let add = |c: &mut CoverageCount| {
            c.layers += 1;
            c.parameters += params;
        };
        add(&mut cov.total);
        let (s, f) = (scaled.contains(label), folded.contains(label));
        if s {
            add(&mut cov.scaled);
        }
        if f {
            add(&mut cov.bn_folded);
        }
        if !s && !f {
            add(&mut cov.untouched);
        }
        if s {
            continue;
        }
        let reason = if !cls_ran {
            "cls_not_selected"
        } else if let Some(r) = reasons.get(label) {
            r
        } else if cx.opts.is_aimet() && !matches!(node.op_type(), "Conv" | "ConvTranspose") {
            "not_a_cls_layer"
        } else {
            "not_paired"
        };
        let blocker = matches!(reason, "chain_break" | "fan_out" | "partner_unsupported")
            .then(|| blocker(cx, i, &reasons))
            .flatten();
        let key = (reason.to_string(), blocker);
        let k = *group_of.entry(key.clone()).or_insert_with(|| {
            groups.push(CoverageGroup {
                reason: key.0,
                blocker: key.1,
                ..Default::default()
            });
            groups.len() - 1
        });
        let g = &mut groups[k];
        add(&mut g.count);
        g.bn_folded += usize::from(f);
        if g.examples.len() < EXAMPLES {
            g.examples.push(label.to_string());
        }
    }
    cov.batch_norms += cov.batch_norms_folded;
    groups.sort_by(|a, b| {
        (b.count.layers, b.count.parameters)
            .cmp(&(a.count.layers, a.count.parameters))
            .then_with(|| a.reason.cmp(&b.reason))
            .then_with(|| a.blocker.cmp(&b.blocker))
    });
    cov.scaled_share = if cov.total.parameters > 0 {
        cov.scaled.parameters as f64 / cov.total.parameters as f64
    } else {
        0.0
    };
    cov.not_scaled = groups;
    cov.summary = summary(&cov);
    cx.report.coverage = cov;
}

/// `4 of 82 layers scaled (14.9% of weights), 49 BN folded; not scaled: 47 fan_out (SiLU), …`.
fn summary(c: &Coverage) -> String {
    if c.total.layers == 0 {
        return "no weight-bearing layer in scope".into();
    }
    let mut s = format!(
        "{} of {} layers scaled ({:.1}% of weights), {} BN folded",
        c.scaled.layers,
        c.total.layers,
        c.scaled_share * 100.0,
        c.bn_folded.layers
    );
    if !c.not_scaled.is_empty() {
        let parts: Vec<String> = c
            .not_scaled
            .iter()
            .take(SUMMARY_GROUPS)
            .map(|g| match &g.blocker {
                Some(b) => format!("{} {} ({b})", g.count.layers, g.reason),
                None => format!("{} {}", g.count.layers, g.reason),
            })
            .collect();
        s += "; not scaled: ";
        s += &parts.join(", ");
        if c.not_scaled.len() > SUMMARY_GROUPS {
            s += ", …";
        }
    }
    s
}

/// Where the chain after layer `i` ends: crossing what CLS crosses, up to the first op it does
/// not, a fan-out, a graph output or the next layer.
fn blocker(cx: &Ctx, i: usize, reasons: &HashMap<&str, &str>) -> Option<String> {
    let mut cur = i;
    for _ in 0..64 {
        let out = cx.work.out(cur);
        if out.is_empty() {
            return None;
        }
        if cx.work.index().is_graph_output(out) {
            return Some("graph output".into());
        }
        let consumers = cx.work.index().consumers(out);
        let &c = match consumers {
            [] => return None,
            [c] => c,
            many => return Some(fan_out(cx, many)),
        };
        let op = cx.work.node(c).op_type();
        if cx.work.input(c, 0) != out {
            return Some(if is_layer_op(cx.work.node(c)) {
                format!("{op} (as its weight or bias)")
            } else {
                op.to_string()
            });
        }
        match cls::chain_role(cx, c) {
            Some(false) => cur = c,
            Some(true) => {
                return Some(match reasons.get(cx.work.label(c)) {
                    Some(r) => format!("{op} ({r})"),
                    None => op.to_string(),
                })
            }
            None if !cx.work.in_scope(c) => return Some("out of scope".into()),
            None => {
                return Some(
                    match op {
                        "Gelu" => "GELU",
                        "LayerNormalization" => "LayerNorm",
                        other => other,
                    }
                    .to_string(),
                )
            }
        }
    }
    None
}

/// Names the activation a fan-out spells, or lists the consumers' op types (`Add, Conv`).
fn fan_out(cx: &Ctx, consumers: &[usize]) -> String {
    let w = &cx.work;
    let op = |n: usize| w.node(n).op_type();
    let reads = |n: usize, t: &str| w.node(n).input.iter().any(|i| i == t);
    let next = |n: usize| w.sole_consumer(n);
    if let [a, b] = *consumers {
        for (a, b) in [(a, b), (b, a)] {
            if op(b) != "Mul" {
                continue;
            }
            match op(a) {
                "Sigmoid" if reads(b, w.out(a)) => return "SiLU".into(),
                "HardSigmoid" if reads(b, w.out(a)) => return "HardSwish".into(),
                "Softplus" if next(a).is_some_and(|t| op(t) == "Tanh" && reads(b, w.out(t))) => {
                    return "Mish".into()
                }
                "Div" | "Mul" if next(a).is_some_and(|e| op(e) == "Erf") => return "GELU".into(),
                _ => {}
            }
        }
    }
    let mut ops: Vec<&str> = consumers.iter().map(|&c| op(c)).collect();
    if ops.contains(&"ReduceMean") && ops.contains(&"Sub") {
        return "LayerNorm".into();
    }
    if ops.len() == 2 && ops.contains(&"Mul") && ops.contains(&"GlobalAveragePool") {
        return "squeeze-excite".into();
    }
    ops.sort_unstable();
    ops.dedup();
    ops.join(", ")
}
