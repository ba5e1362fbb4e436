//! Off macOS, `dispatch2` links a library named `dispatch` and `objc2` (under `block2`'s
//! compiler-rt runtime) one named `objc`. This model implements every libdispatch function the
//! binding calls, and nothing of the Objective-C runtime is called by blocks, so both names are
//! satisfied by empty archives (an empty `ar` archive is the same for every target, the arm64
//! cross build included); the symbols come from this crate.
//!
//! `VMNET_MODEL_LIB_DIR`, when set, names a directory holding the Blocks runtime as a static
//! library (`libBlocksRuntime.a`, and no `.so`): the static arm64 cross build of the e2e test
//! takes it from Debian's arm64 `libblocksruntime-dev`, unpacked, because that package cannot
//! be installed beside the host's own. It is linked into this crate, so that the C library,
//! which the linker sees after every crate, resolves what it calls (block2's own
//! `-lBlocksRuntime` comes after the C library in a static link).
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=VMNET_MODEL_LIB_DIR");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("macos") {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    for name in ["libdispatch.a", "libobjc.a"] {
        std::fs::write(out.join(name), b"!<arch>\n").expect("write an empty archive");
    }
    println!("cargo:rustc-link-search=native={}", out.display());
    if let Some(dir) = std::env::var_os("VMNET_MODEL_LIB_DIR") {
        println!(
            "cargo:rustc-link-search=native={}",
            PathBuf::from(dir).display()
        );
        println!("cargo:rustc-link-lib=static=BlocksRuntime");
    }
}
