//! A test-only model of vmnet.framework, and of the parts of libxpc and libdispatch that the
//! `vmnet` binding calls, for Linux: the same C symbols and ABI, with the semantics Apple
//! documents, so that the binding's runtime code (and what is built on it) runs in CI.
//!
//! **This is not the framework.** It stands in for it where no Mac is available; behaviour the
//! documentation leaves open is a `vmnet::Config` switch, and every rule cites its source.
//! A run on a Mac remains the only proof that the binding works with the real framework.
//!
//! Linking: a crate that uses the binding with its `model` feature links this crate; its
//! `#[unsafe(no_mangle)]` functions provide `vmnet_*`, `xpc_*` and `dispatch_*`. Blocks are
//! invoked through the Blocks runtime of LLVM's compiler-rt (Debian's `libblocksruntime-dev`).
//! On macOS this crate is empty.
#![cfg(not(target_os = "macos"))]

pub mod dispatch;
pub mod net;
pub mod vmnet;
pub mod xpc;

/// Every count the leak check compares: xpc objects, dispatch queues, started interfaces and
/// blocks held by the model, and the misuse counters (over-release, use after free, foreign
/// pointers), which must stay as they were.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accounting {
    /// The xpc counts (`created` excluded from comparisons).
    pub xpc: xpc::XpcStats,
    /// The dispatch counts.
    pub dispatch: dispatch::DispatchStats,
    /// Interfaces started and not stopped.
    pub interfaces: usize,
    /// Blocks the model holds.
    pub blocks: i64,
    /// Network configurations and networks (macOS 26) not yet released.
    pub cf: i64,
}

/// The accounting now.
pub fn accounting() -> Accounting {
    let (interfaces, blocks) = vmnet::live();
    Accounting {
        xpc: xpc::stats(),
        dispatch: dispatch::stats(),
        interfaces,
        blocks,
        cf: vmnet::cf_live(),
    }
}

impl Accounting {
    /// What differs from `before`, in words (empty when nothing leaked or was misused).
    pub fn leaks_since(&self, before: &Accounting) -> Vec<String> {
        let mut out = Vec::new();
        let mut cmp = |what: &str, a: i64, b: i64| {
            if a != b {
                out.push(format!("{what}: {b} before, {a} after"));
            }
        };
        cmp("live xpc objects", self.xpc.live, before.xpc.live);
        cmp(
            "xpc over-releases",
            self.xpc.over_releases as i64,
            before.xpc.over_releases as i64,
        );
        cmp(
            "xpc uses after free",
            self.xpc.use_after_free as i64,
            before.xpc.use_after_free as i64,
        );
        cmp(
            "foreign xpc pointers",
            self.xpc.foreign as i64,
            before.xpc.foreign as i64,
        );
        cmp(
            "live dispatch queues",
            self.dispatch.live,
            before.dispatch.live,
        );
        cmp(
            "dispatch over-releases",
            self.dispatch.over_releases as i64,
            before.dispatch.over_releases as i64,
        );
        cmp(
            "foreign dispatch pointers",
            self.dispatch.foreign as i64,
            before.dispatch.foreign as i64,
        );
        cmp(
            "started interfaces",
            self.interfaces as i64,
            before.interfaces as i64,
        );
        cmp("blocks held by the model", self.blocks, before.blocks);
        cmp("live network objects (CFRelease)", self.cf, before.cf);
        out
    }
}
