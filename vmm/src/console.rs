//! The serial console on the terminal: guest output to stdout, stdin to the guest.
//!
//! When stdin is a terminal it is put in raw mode (every key goes to the guest, Ctrl-C
//! included) and restored when the [`RawTerminal`] guard drops. Ctrl-A x leaves the VMM, as in
//! QEMU; Ctrl-A Ctrl-A sends one Ctrl-A to the guest.

use std::io::{self, Read};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use devices::serial::Pl011;

/// The escape key: Ctrl-A.
const ESCAPE: u8 = 0x01;

/// Puts the terminal on stdin in raw mode until dropped.
#[derive(Debug)]
pub struct RawTerminal {
    saved: Option<libc::termios>,
}

impl RawTerminal {
    /// Switches stdin to raw mode if it is a terminal; otherwise does nothing.
    pub fn enable() -> Self {
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
            return Self { saved: None };
        }
        // SAFETY: termios is plain data; tcgetattr fills it completely on success.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `t` is a valid termios to fill for a descriptor we checked is a terminal.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &raw mut t) } != 0 {
            return Self { saved: None };
        }
        let saved = t;
        // SAFETY: cfmakeraw only edits the struct it is given.
        unsafe { libc::cfmakeraw(&raw mut t) };
        // Keep output post-processing so the host terminal still turns \n into \r\n.
        t.c_oflag = saved.c_oflag;
        // SAFETY: sets attributes from a valid termios on a terminal descriptor.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw const t) } != 0 {
            return Self { saved: None };
        }
        Self { saved: Some(saved) }
    }

    /// Whether raw mode is on.
    pub fn is_raw(&self) -> bool {
        self.saved.is_some()
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            // SAFETY: restores attributes saved from the same terminal.
            unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, saved) };
        }
    }
}

/// Escape-sequence state of the input stream.
#[derive(Debug, Default)]
pub struct EscapeFilter {
    pending: bool,
}

/// What to do with a chunk of input.
#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    /// Bytes for the guest.
    Bytes(Vec<u8>),
    /// The user asked to quit, after these bytes for the guest.
    Quit(Vec<u8>),
}

impl EscapeFilter {
    /// Filters `chunk`: Ctrl-A x quits, Ctrl-A Ctrl-A sends Ctrl-A, Ctrl-A then anything else
    /// sends both.
    pub fn filter(&mut self, chunk: &[u8]) -> Input {
        let mut out = Vec::with_capacity(chunk.len());
        for &b in chunk {
            if self.pending {
                self.pending = false;
                match b {
                    b'x' | b'X' => return Input::Quit(out),
                    ESCAPE => out.push(ESCAPE),
                    other => out.extend_from_slice(&[ESCAPE, other]),
                }
            } else if b == ESCAPE {
                self.pending = true;
            } else {
                out.push(b);
            }
        }
        Input::Bytes(out)
    }
}

/// Feeds stdin to the UART on a thread of its own; sends on `quit` at Ctrl-A x. Ends at EOF.
pub fn spawn_input(uart: Arc<Mutex<Pl011>>, quit: Sender<()>, escape: bool) -> io::Result<()> {
    thread::Builder::new()
        .name("console-in".into())
        .spawn(move || {
            let mut stdin = io::stdin().lock();
            let mut filter = EscapeFilter::default();
            let mut buf = [0u8; 256];
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return,
                };
                let (bytes, leave) = if escape {
                    match filter.filter(&buf[..n]) {
                        Input::Bytes(b) => (b, false),
                        Input::Quit(b) => (b, true),
                    }
                } else {
                    (buf[..n].to_vec(), false)
                };
                feed(&uart, &bytes);
                if leave {
                    let _ = quit.send(());
                    return;
                }
            }
        })
        .map(|_| ())
}

/// Hands bytes to the UART as its FIFO frees up: typing faster than the guest reads waits
/// instead of losing characters.
fn feed(uart: &Mutex<Pl011>, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        let taken = {
            let mut u = uart.lock().unwrap_or_else(|e| e.into_inner());
            let room = u.input_space().min(bytes.len());
            u.enqueue_input(&bytes[..room])
        };
        bytes = &bytes[taken..];
        if !bytes.is_empty() {
            thread::sleep(Duration::from_millis(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctrl_a_x_quits_after_the_preceding_bytes() {
        let mut f = EscapeFilter::default();
        assert_eq!(f.filter(b"ls\x01x"), Input::Quit(b"ls".to_vec()));
    }

    #[test]
    fn ctrl_a_ctrl_a_sends_one_ctrl_a() {
        let mut f = EscapeFilter::default();
        assert_eq!(f.filter(b"\x01\x01a"), Input::Bytes(b"\x01a".to_vec()));
    }

    #[test]
    fn ctrl_a_then_another_key_sends_both() {
        let mut f = EscapeFilter::default();
        assert_eq!(f.filter(b"\x01c"), Input::Bytes(b"\x01c".to_vec()));
    }

    #[test]
    fn the_escape_may_span_two_reads() {
        let mut f = EscapeFilter::default();
        assert_eq!(f.filter(b"a\x01"), Input::Bytes(b"a".to_vec()));
        assert_eq!(f.filter(b"x"), Input::Quit(Vec::new()));
    }
}
