//! Rigs shared by the benchmark and the tests.

pub mod direct;
