//! `vmnet-dgram`: serves one vmnet interface to one datagram-socket client, one Ethernet frame
//! per datagram both ways, the protocol of vfkit, krunkit, QEMU's `-netdev dgram` and the
//! vmm's `--net dgram:PATH`.
//!
//! It starts the interface (mode and options from the command line), prints the interface's
//! parameters as one JSON line on standard output, binds a Unix datagram socket at a path (or
//! serves an inherited one) and links with the first peer that sends (or the `--peer` path).
//! One thread moves frames vmnet -> socket (`vmnet_read` batches into the frame buffers, sent
//! from there with `sendmmsg` on Linux, a `sendmsg` loop on macOS), another socket -> vmnet
//! (`recvmmsg` or a `recvmsg` loop into the frame buffers, written from there in `vmnet_write`
//! batches): no frame is copied on the server's side. Counters (frames and bytes each way, drops
//! by reason) go to standard error at exit and every `--stats-interval`; SIGINT and SIGTERM stop
//! the interface (`vmnet_stop_interface`) and remove the socket path.
//!
//! It runs on macOS (vmnet.framework); on Linux only in the test-only `model` build, against
//! `vmnet-model`, where `--model-tap NAME` joins a TAP to the interface's segment so tests can
//! reach a Linux network stack. Elsewhere the program parses its command line and says it
//! cannot run.

mod args;
#[cfg(any(target_os = "macos", feature = "model"))]
mod server;
#[cfg(any(target_os = "macos", feature = "model"))]
mod sock;

use std::process::ExitCode;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match args::parse(argv.iter().map(String::as_str)) {
        Ok(args::Parsed::Help) => {
            print!("{}", args::USAGE);
            return ExitCode::SUCCESS;
        }
        Ok(args::Parsed::Run(a)) => a,
        Err(e) => {
            eprintln!("vmnet-dgram: {e}");
            return ExitCode::from(2);
        }
    };
    serve(&args)
}

#[cfg(any(target_os = "macos", feature = "model"))]
fn serve(args: &args::Args) -> ExitCode {
    server::run(args)
}

#[cfg(not(any(target_os = "macos", feature = "model")))]
fn serve(_: &args::Args) -> ExitCode {
    eprintln!(
        "vmnet-dgram: this build has no vmnet.framework: vmnet-dgram runs on macOS (on Linux only \
         in the test-only build with the vmnet crate's `model` feature)"
    );
    ExitCode::from(2)
}
