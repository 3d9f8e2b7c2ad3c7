//! The visual report (`onnx_cle::report::html::render`): self-contained, escaped, one chart per CLS
//! pair, robust to any numbers; and the browser check of `scripts/html_report_check.sh`, which
//! opens the mobilenet_v2 report in headless Chromium.

use std::path::Path;
use std::process::Command;

use onnx_cle::report::html::render;
use onnx_cle::report::{
    ActivationGrowth, BnFold, ClsKind, ClsPair, ClsSet, EndToEnd, FoldDirection, LayerQuant,
    LayerSensitivity, PairRanges, QuantRow, Quantization, Relu6Action, Relu6Decision, Report, Skip,
};

const HOSTILE: &str = "<img src=x onerror=alert(1)>";

fn pair(layer1: &str, layer2: &str, channels: usize) -> ClsPair {
    let ramp = |k: f32| (0..channels).map(|c| k * (1.0 + c as f32 % 7.0)).collect();
    ClsPair {
        layer1: layer1.into(),
        layer2: layer2.into(),
        through: vec!["Relu".into(), HOSTILE.into()],
        relu_between: true,
        scale: ramp(0.3),
        range_before: PairRanges {
            layer1_out: ramp(0.01),
            layer2_in: ramp(2.0),
        },
        range_after: PairRanges {
            layer1_out: ramp(0.1),
            layer2_in: ramp(0.2),
        },
    }
}

fn layer_quant(layer: &str, before: f64, after: f64) -> LayerQuant {
    LayerQuant {
        layer: layer.into(),
        op: "Conv".into(),
        channels: 8,
        sqnr_before_db: before,
        sqnr_after_db: after,
        sqnr_per_channel_db: 45.0,
    }
}

/// A report that exercises every section, with hostile names and awkward numbers.
fn synthetic() -> Report {
    let mut weird = pair("weird\"'&", HOSTILE, 5);
    weird.range_before.layer1_out = vec![f32::NAN, 0.0, -1.0, f32::INFINITY, 1e-30];
    weird.range_after.layer2_in = vec![];
    weird.scale = vec![f32::NAN; 5];
    Report {
        schema_version: 1,
        tool: "onnx-cle test".into(),
        function_changed: true,
        function_changes: vec![format!("ReLU6 {HOSTILE} replaced by Relu")],
        bn_folds: vec![BnFold {
            bn: HOSTILE.into(),
            layer: "conv0".into(),
            layer_op: "Conv".into(),
            direction: FoldDirection::Backward,
            channels: 8,
            epsilon: 1e-5,
            through: None,
            created_bias: Some(format!("{HOSTILE}.bias")),
        }],
        relu6: vec![Relu6Decision {
            node: HOSTILE.into(),
            min: Some(0.0),
            max: None,
            action: Relu6Action::Replaced,
            reason: HOSTILE.into(),
        }],
        cls_sets: vec![
            ClsSet {
                iteration: 1,
                kind: ClsKind::Triple,
                layers: vec!["a".into(), HOSTILE.into(), "c".into()],
                pairs: vec![pair("a", HOSTILE, 32), pair(HOSTILE, "c", 32)],
            },
            ClsSet {
                iteration: 1,
                kind: ClsKind::Pair,
                layers: vec!["wide1".into(), "wide2".into()],
                pairs: vec![pair("wide1", "wide2", 1280)],
            },
            ClsSet {
                iteration: 2,
                kind: ClsKind::Pair,
                layers: vec![],
                pairs: vec![weird, pair("empty", "empty", 0)],
            },
        ],
        skipped: vec![Skip {
            pass: "cls".into(),
            nodes: vec![HOSTILE.into()],
            reason: "fan_out".into(),
            detail: HOSTILE.into(),
        }],
        quantization: Some(Quantization {
            layers: vec![
                layer_quant("a", 30.0, 38.5),
                layer_quant(HOSTILE, 25.0, f64::INFINITY),
                layer_quant("c", f64::NAN, 40.0),
            ],
            end_to_end: Some(EndToEnd {
                inputs: HOSTILE.into(),
                samples: 4,
                rows: vec![
                    QuantRow {
                        model: "bn_folded".into(),
                        scheme: "per_tensor_symmetric".into(),
                        sqnr_db: 12.0,
                        top1_agreement: 0.5,
                        per_sample_median_db: Some(12.5),
                        per_sample_p10_db: Some(f64::NEG_INFINITY),
                    },
                    QuantRow {
                        model: "equalized".into(),
                        scheme: "per_tensor_symmetric".into(),
                        sqnr_db: 21.5,
                        top1_agreement: 1.0,
                        per_sample_median_db: None,
                        per_sample_p10_db: None,
                    },
                ],
                sensitivity: vec![LayerSensitivity {
                    layer: HOSTILE.into(),
                    sqnr_db: f64::NEG_INFINITY,
                }],
            }),
            activations: vec![ActivationGrowth {
                tensor: HOSTILE.into(),
                layer: "a".into(),
                growth_data_free: 2.5,
                growth_measured: Some(f64::NAN),
            }],
        }),
        ..Default::default()
    }
}

/// Values of every `attr="…"` in `html`.
fn attribute_values<'a>(html: &'a str, attr: &str) -> Vec<&'a str> {
    let needle = format!(" {attr}=\"");
    html.match_indices(&needle)
        .filter_map(|(i, _)| {
            let rest = &html[i + needle.len()..];
            rest.find('"').map(|end| &rest[..end])
        })
        .collect()
}

#[test]
fn page_is_self_contained() {
    let html = render(&synthetic());
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.trim_end().ends_with("</html>"));
    assert!(!html.to_lowercase().contains("<script"), "no script at all");
    assert!(html.contains("Content-Security-Policy"));
    for attr in ["src", "href", "xlink:href", "action"] {
        for v in attribute_values(&html, attr) {
            let v = v.trim().to_lowercase();
            assert!(
                v.starts_with('#') || v.starts_with("data:"),
                "{attr}=\"{v}\" points outside the page"
            );
        }
    }
    assert!(!html.contains("@import") && !html.contains("url("));
}

#[test]
fn report_strings_are_escaped() {
    let html = render(&synthetic());
    assert!(!html.contains("<img"), "a node name became markup");
    assert!(!html.contains("onerror=alert(1)>"));
    assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;"));
    assert!(html.contains("weird&quot;&#39;&amp;"));
}

#[test]
fn one_chart_per_cls_pair() {
    let report = synthetic();
    let html = render(&report);
    // Kept for a look in a browser.
    let _ = std::fs::write(
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("synthetic-report.html"),
        &html,
    );
    let pairs: usize = report.cls_sets.iter().map(|s| s.pairs.len()).sum();
    assert_eq!(html.matches("<svg class=\"pair-chart\"").count(), pairs);
    assert_eq!(html.matches("<details class=\"cls-set\"").count(), 3);
    assert!(html.contains("id=\"sqnr-chart\" class=\"sqnr-chart\" data-state=\"computed\""));
    assert!(
        html.contains("band: min to max"),
        "1280 channels are drawn as a band"
    );
}

#[test]
fn awkward_numbers_never_reach_the_svg() {
    let html = render(&synthetic());
    for d in attribute_values(&html, "d") {
        assert!(
            !d.contains("NaN") && !d.contains("inf"),
            "non-finite coordinate in path {d}"
        );
    }
    for v in attribute_values(&html, "y")
        .into_iter()
        .chain(attribute_values(&html, "x"))
    {
        assert!(
            v.parse::<f64>().is_ok_and(f64::is_finite),
            "bad coordinate {v}"
        );
    }
    assert!(html.contains("zero or non-finite values not drawn"));
}

#[test]
fn missing_quantization_says_not_computed() {
    let report = Report {
        quantization: None,
        ..synthetic()
    };
    let html = render(&report);
    assert!(html.contains("data-state=\"absent\""));
    assert!(html.contains("Not computed"));
    let empty = render(&Report::default());
    assert!(empty.contains("No set was scaled"));
    assert!(empty.contains("Function preserved"));
}

#[test]
fn mobilenet_report_in_headless_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let models = root.join("../shared/models");
    if !models.join("mobilenet_v2.onnx").is_file() {
        eprintln!(
            "SKIPPED: browser check of the HTML report: {} is absent",
            models.display()
        );
        return;
    }
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report-screenshot.png");
    let status = Command::new("bash")
        .arg(root.join("scripts/html_report_check.sh"))
        .env("ONNX_CLE_BIN", env!("CARGO_BIN_EXE_onnx-cle"))
        .env("HTML_REPORT_SCREENSHOT", &shot)
        .status()
        .expect("run scripts/html_report_check.sh");
    assert!(status.success(), "html_report_check.sh failed: {status}");
    assert!(shot.is_file());
}
