//! Make cargo rebuild the kernel programs when bpf-linker changes (it is the linker for this crate).
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
