//! Per-layer int8 weight figures (no inference): per-tensor symmetric SQNR of every layer weight
//! in the BN-folded and the equalized model, and the per-channel ceiling.

use std::collections::{HashMap, HashSet};

use rayon::prelude::*;

use super::{sqnr_of, Scheme};
use crate::layout::WeightLayout;
use crate::onnx::ModelProto;
use crate::passes::layer_of;
use crate::report::LayerQuant;
use crate::work::Work;

/// The int8 figures of one BN-folded layer weight: the "before" side of [`layer_table`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FoldedFigures {
    /// SQNR (dB) per-tensor symmetric.
    pub per_tensor_db: f64,
    /// SQNR (dB) per-channel symmetric.
    pub per_channel_db: f64,
}

/// [`FoldedFigures`] of every layer weight of `work`, by weight name (the first layer reading
/// a weight gives its layout). With `keep` the decoded weights stay in `work`'s cache for the
/// passes still to run; otherwise each is decoded and dropped in turn, so memory stays at one
/// layer.
pub fn folded_figures(work: &mut Work, keep: bool) -> HashMap<String, FoldedFigures> {
    let mut layers: Vec<(String, WeightLayout)> = Vec::new();
    let mut seen = HashSet::new();
    for i in 0..work.node_count() {
        if let Ok(l) = layer_of(work, i) {
            if seen.insert(l.weight.clone()) {
                layers.push((l.weight, l.layout));
            }
        }
    }
    if keep {
        let names: Vec<String> = layers.iter().map(|(w, _)| w.clone()).collect();
        work.prefetch(&names);
    }
    let work = &*work;
    layers
        .par_iter()
        .filter_map(|(weight, layout)| {
            let figures = |data: &[f32]| FoldedFigures {
                per_tensor_db: sqnr_of(data, layout, Scheme::PerTensorSymmetric),
                per_channel_db: sqnr_of(data, layout, Scheme::PerChannel),
            };
            let f = match work.cached(weight) {
                Some(t) => figures(&t.data),
                None => figures(&work.decode(weight).ok()?.data),
            };
            Some((weight.clone(), f))
        })
        .collect()
}

/// Per-layer weight SQNR, BN-folded vs equalized (layers matched by weight name). `labels` names
/// the nodes of `equalized` ([`crate::Equalized::labels`]), so rows use the report's labels.
pub fn layer_table(
    folded: &ModelProto,
    equalized: &ModelProto,
    labels: &[String],
) -> Vec<LayerQuant> {
    let before = Work::new(folded.clone())
        .map(|mut w| folded_figures(&mut w, false))
        .unwrap_or_default();
    let Ok(mut work) = Work::new(equalized.clone()) else {
        return Vec::new();
    };
    table_rows(&before, &mut work, |work, i| {
        labels
            .get(i)
            .map_or_else(|| work.label(i).to_string(), Clone::clone)
    })
}

/// [`layer_table`] on the equalized model still under edit (before [`Work::finish`]), with the
/// BN-folded side already computed ([`folded_figures`]): the modified weights are read from its
/// cache instead of being encoded and decoded again.
pub fn layer_table_in(before: &HashMap<String, FoldedFigures>, work: &mut Work) -> Vec<LayerQuant> {
    table_rows(before, work, |work, i| work.label(i).to_string())
}

fn table_rows(
    before: &HashMap<String, FoldedFigures>,
    work: &mut Work,
    label: impl Fn(&Work, usize) -> String + Sync,
) -> Vec<LayerQuant> {
    let mut layers = Vec::new();
    let mut seen = HashSet::new();
    for i in 0..work.node_count() {
        let Ok(l) = layer_of(work, i) else {
            continue;
        };
        if seen.insert(l.weight.clone()) {
            layers.push((i, l));
        }
    }
    let work = &*work;
    layers
        .par_iter()
        .filter_map(|(i, l)| {
            let decoded;
            let after = match work.cached(&l.weight) {
                Some(t) => &t.data,
                None => {
                    decoded = work.decode(&l.weight).ok()?;
                    &decoded.data
                }
            };
            let b = before.get(&l.weight);
            Some(LayerQuant {
                layer: label(work, *i),
                op: work.node(*i).op_type().to_string(),
                channels: l.layout.out_channels(),
                sqnr_before_db: b.map_or(f64::NAN, |b| b.per_tensor_db),
                sqnr_after_db: sqnr_of(after, &l.layout, Scheme::PerTensorSymmetric),
                sqnr_per_channel_db: b.map_or_else(
                    || sqnr_of(after, &l.layout, Scheme::PerChannel),
                    |b| b.per_channel_db,
                ),
            })
        })
        .collect()
}
