//! Verification within bounds (issue 15): the budget (`verify.budget_s`, `--verify-budget`),
//! cancellation reaching into a running verification, and long `Identity` chains verified on
//! a simplified copy. No timing assertions: a budget of 0 must give `not_verified` without
//! running tract, and a cancellation must end the run before the passes start, whatever the
//! machine's speed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use onnx_cle::builder::{ConvSpec, ModelBuilder};
use onnx_cle::onnx::ModelProto;
use onnx_cle::report::VerifyStatus;
use onnx_cle::{Control, CoreError, Options};

fn small() -> ModelProto {
    let mut b = ModelBuilder::new(13).seed(15);
    let x = b.batched_input("x", "N", &[3, 8, 8]);
    let y = b.conv("c1", &x, &ConvSpec::new(3, 4, &[3, 3]));
    let y = b.batch_norm("bn1", &y, 4);
    let y = b.relu("r1", &y);
    let y = b.conv("c2", &y, &ConvSpec::new(4, 2, &[1, 1]));
    b.output(&y);
    b.build()
}

/// A Conv and `n` Relu nodes: nothing to simplify, and tract's build of it grows with n².
fn relu_chain(n: usize) -> ModelProto {
    let mut b = ModelBuilder::new(13).seed(16);
    let x = b.batched_input("x", "N", &[3, 4, 4]);
    let mut y = b.conv("c", &x, &ConvSpec::new(3, 2, &[1, 1]));
    for i in 0..n {
        y = b.relu(&format!("r{i}"), &y);
    }
    b.output(&y);
    b.build()
}

#[test]
fn a_zero_budget_is_not_verified_at_once_and_the_model_still_comes_out() {
    let mut opts = Options::default();
    opts.verify.budget_s = Some(0.0);
    let out = onnx_cle::run(small(), None, &opts, None, Control::default()).unwrap();
    let v = &out.report.verification;
    assert_eq!(v.status, VerifyStatus::NotVerified);
    let reason = v.reason.as_deref().unwrap_or("");
    assert!(reason.starts_with("budget exceeded"), "{reason}");
    assert!(v.outputs.is_empty());
    assert_eq!(out.report.bn_folds.len(), 1);
    assert!(!out.model.is_empty());
    // The same model within the default budget is verified.
    let out = onnx_cle::run(small(), None, &Options::default(), None, Control::default()).unwrap();
    assert_eq!(out.report.verification.status, VerifyStatus::Verified);
}

#[test]
fn a_budget_is_an_option_checked_like_the_others() {
    for bad in [-1.0, f64::NAN, f64::INFINITY] {
        let mut opts = Options::default();
        opts.verify.budget_s = Some(bad);
        let r = onnx_cle::run(small(), None, &opts, None, Control::default());
        assert!(
            matches!(r, Err(CoreError::InvalidOptions(_))),
            "{bad}: {r:?}"
        );
    }
    let json = r#"{"verify": {"budget_s": 2.5}}"#;
    let o: Options = serde_json::from_str(json).unwrap();
    assert_eq!(o.verify.budget_s, Some(2.5));
    assert_eq!(onnx_cle::VerifyOptions::default_budget_s(0), 10.0);
    assert_eq!(onnx_cle::VerifyOptions::default_budget_s(100_000_000), 20.0);
}

#[test]
fn a_graph_too_long_for_the_budget_is_refused_before_tract_starts() {
    // 40 000 nodes: tract would spend about 35 s wiring each copy; a 5 s budget refuses it.
    let mut opts = Options::default();
    opts.verify.budget_s = Some(5.0);
    let out = onnx_cle::run(relu_chain(40_000), None, &opts, None, Control::default()).unwrap();
    let v = &out.report.verification;
    assert_eq!(v.status, VerifyStatus::NotVerified);
    let reason = v.reason.as_deref().unwrap_or("");
    assert!(
        reason.starts_with("budget exceeded") && reason.contains("square of the node count"),
        "{reason}"
    );
}

#[test]
fn cancellation_reaches_a_running_verification() {
    // 30 000 Relu nodes take tract many seconds to build; the run is canceled 200 ms into it
    // and must end there (before the passes), not when tract is done.
    let model = relu_chain(30_000);
    let mut opts = Options::default();
    opts.verify.budget_s = Some(3600.0);
    let cancel = AtomicBool::new(false);
    let stages = Mutex::new(Vec::<String>::new());
    let progress = |stage: &str| stages.lock().unwrap().push(stage.to_string());
    let ctl = Control {
        progress: Some(&progress),
        cancel: Some(&cancel),
    };
    let r = std::thread::scope(|s| {
        s.spawn(|| {
            while !stages
                .lock()
                .unwrap()
                .iter()
                .any(|s| s == "verify_original")
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_millis(200));
            cancel.store(true, Ordering::Relaxed);
        });
        onnx_cle::run(model, None, &opts, None, ctl)
    });
    assert!(
        matches!(r, Err(CoreError::Canceled)),
        "{:?}",
        r.map(|o| o.report.verification)
    );
    let seen = stages.lock().unwrap().clone();
    assert_eq!(seen, vec!["verify_original".to_string()], "{seen:?}");
}

#[test]
fn a_long_identity_chain_is_verified_on_a_simplified_copy() {
    let model = onnx_cle::builder::identity_chain(3_000);
    let simplified = onnx_cle::runtime::simplified(&model).expect("simplified");
    let g = simplified.graph.as_ref().unwrap();
    // The Conv and the Identity that names the graph output remain, reading the Conv.
    assert_eq!(g.node.len(), 2);
    assert_eq!(g.node[1].input[0], g.node[0].output[0]);
    let out = onnx_cle::run(model, None, &Options::default(), None, Control::default()).unwrap();
    let v = &out.report.verification;
    assert_eq!(v.status, VerifyStatus::Verified, "{:?}", v.reason);
    assert_eq!(v.max_rel_l2, Some(0.0));
    assert_eq!(out.report.model.nodes_after, 3_001);
}
