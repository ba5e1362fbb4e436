//! `model_only!(a, b, ...)`: the names of tests that only the vmnet model can run, as ignored
//! tests where the model is not built (without `--features model`, and on macOS), so a run there
//! lists them as ignored rather than leaving them out.

macro_rules! model_only {
    ($($name:ident),* $(,)?) => {$(
        #[test]
        #[ignore = "model-only: runs with cargo test -p vmnet --features model (a step of scripts/test)"]
        fn $name() {
            panic!("this test runs against the vmnet model only");
        }
    )*};
}
