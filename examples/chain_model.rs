//! Writes the long-graph benchmark model ([`onnx_cle::builder::identity_chain`]): one Conv and
//! a chain of Identity nodes.
//!
//! `cargo run --release --example chain_model -- OUT.onnx [NODES]` (default 100 000 nodes).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = args.next().ok_or("usage: chain_model OUT.onnx [NODES]")?;
    let nodes: usize = args.next().map_or(Ok(100_000), |s| s.parse())?;
    let model = onnx_cle::builder::identity_chain(nodes.saturating_sub(1));
    let bytes = onnx_cle::onnx::encode(&model);
    std::fs::write(&out, &bytes)?;
    eprintln!("{out}: {nodes} nodes, {} bytes", bytes.len());
    Ok(())
}
