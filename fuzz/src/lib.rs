//! Fuzz targets for the guest-facing surfaces of the `devices` and `vmm` crates.
//!
//! Each module holds one target's harness (`run(data)`) so the fuzz binaries are one line and the
//! seed generator (`src/bin/gen_seeds.rs`) can build inputs with the same encoding. Inputs are
//! sequences of fixed-width little-endian fields read through [`arbitrary::Unstructured`]
//! ([`input::Src`]); every target asserts invariants beyond "no panic" (see each module).

pub mod boot;
pub mod datapath;
pub mod esr_psci;
pub mod input;
pub mod transport;
