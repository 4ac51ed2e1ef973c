//! Builds the kernel programs (tracer-ebpf) for the BPF target with the nightly toolchain and
//! bpf-linker, and leaves the object in OUT_DIR for `include_bytes_aligned!`.
//! `cargo xtask setup` installs what this needs; the error below says so when it is missing.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../tracer-ebpf");
    let pkg = aya_build::Package {
        name: "tracer-ebpf",
        root_dir: root,
        ..Default::default()
    };
    aya_build::build_ebpf([pkg], aya_build::Toolchain::Nightly).context(
        "building the eBPF programs failed; run `cargo xtask setup` (nightly rust-src and bpf-linker)",
    )
}
