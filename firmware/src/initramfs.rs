//! An initramfs assembled in memory and written as a gzip-compressed cpio archive.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use anyhow::{Context, Result};
use flate2::Compression;
use flate2::write::GzEncoder;

use crate::cpio::CpioWriter;
use crate::elf;
use crate::modules::Module;

#[derive(Debug)]
enum Entry {
    Dir,
    File { perm: u32, data: Vec<u8> },
    Symlink(String),
    CharDevice { major: u32, minor: u32 },
}

/// The contents of an initramfs. Paths are absolute (`/bin/sh`); parent directories are
/// created as needed, and entries are written in path order so a parent precedes its children.
#[derive(Debug, Default)]
pub struct Initramfs {
    entries: BTreeMap<String, Entry>,
}

impl Initramfs {
    /// The skeleton every image shares: the usual directories, `/dev/console` (the kernel opens
    /// it for init's stdio before init could mount devtmpfs), and the `sbin`/`usr` links.
    pub fn skeleton() -> Self {
        let mut fs = Self::default();
        for dir in ["/dev", "/proc", "/sys", "/tmp", "/run", "/etc", "/root"] {
            fs.dir(dir);
        }
        fs.char_device("/dev/console", 5, 1);
        fs.symlink("/sbin", "bin");
        fs.symlink("/usr/bin", "../bin");
        fs.symlink("/usr/sbin", "../bin");
        fs
    }

    /// Adds a directory.
    pub fn dir(&mut self, path: &str) {
        self.parents(path);
        self.entries.insert(key(path), Entry::Dir);
    }

    /// Adds a file.
    pub fn file(&mut self, path: &str, perm: u32, data: impl Into<Vec<u8>>) {
        self.parents(path);
        self.entries.insert(
            key(path),
            Entry::File {
                perm,
                data: data.into(),
            },
        );
    }

    /// Adds a symbolic link.
    pub fn symlink(&mut self, path: &str, target: &str) {
        self.parents(path);
        self.entries
            .insert(key(path), Entry::Symlink(target.to_string()));
    }

    /// Adds a character device node.
    pub fn char_device(&mut self, path: &str, major: u32, minor: u32) {
        self.parents(path);
        self.entries
            .insert(key(path), Entry::CharDevice { major, minor });
    }

    /// Adds a static busybox as `/bin/busybox` with a `/bin/<applet>` link for each applet.
    /// Returns the number of applets.
    pub fn busybox(&mut self, bin: Vec<u8>) -> usize {
        // Applets the init scripts use, if the table cannot be read from the binary.
        const FALLBACK: &[&str] = &[
            "sh", "ash", "mount", "mkdir", "cat", "cut", "echo", "sed", "grep", "sleep", "ip",
            "ping", "udhcpc", "udhcpd", "insmod", "poweroff", "dmesg", "tunctl", "unshare",
            "nsenter", "timeout", "touch", "readlink", "ls", "uname", "head", "tr",
        ];
        let applets = elf::busybox_applets(&bin)
            .unwrap_or_else(|| FALLBACK.iter().map(|s| s.to_string()).collect());
        self.file("/bin/busybox", 0o755, bin);
        let mut count = 0;
        for applet in applets.iter().filter(|a| a.as_str() != "busybox") {
            self.symlink(&format!("/bin/{applet}"), "busybox");
            count += 1;
        }
        count
    }

    /// Adds kernel modules as `/lib/modules/<name>.ko` and their load order, one name a line,
    /// as `/lib/modules/load.order` (what the init scripts `insmod` in turn).
    pub fn modules(&mut self, modules: Vec<Module>) {
        let order: String = modules.iter().map(|m| format!("{}\n", m.name)).collect();
        for module in modules {
            self.file(
                &format!("/lib/modules/{}.ko", module.name),
                0o644,
                module.data,
            );
        }
        self.file("/lib/modules/load.order", 0o644, order);
    }

    /// Writes the archive to `path`, gzip-compressed at `level` (0-9).
    pub fn write_gz(&self, path: &Path, level: u32) -> Result<u64> {
        let file =
            File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        let gz = GzEncoder::new(BufWriter::new(file), Compression::new(level));
        let mut cpio = CpioWriter::new(gz);
        for (path, entry) in &self.entries {
            match entry {
                Entry::Dir => cpio.dir(path, 0o755),
                Entry::File { perm, data } => cpio.file(path, *perm, data),
                Entry::Symlink(target) => cpio.symlink(path, target),
                Entry::CharDevice { major, minor } => cpio.char_device(path, 0o600, *major, *minor),
            }
            .with_context(|| format!("cannot write {}", path))?;
        }
        let gz = cpio.finish()?;
        let mut out = gz.finish()?;
        std::io::Write::flush(&mut out)?;
        Ok(std::fs::metadata(path)?.len())
    }

    fn parents(&mut self, path: &str) {
        let path = key(path);
        let mut prefix = String::new();
        let mut parts: Vec<&str> = path.split('/').collect();
        parts.pop();
        for part in parts {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            self.entries.entry(prefix.clone()).or_insert(Entry::Dir);
        }
    }
}

/// cpio paths are relative to the root.
fn key(path: &str) -> String {
    path.trim_start_matches('/').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_created_and_sorted_before_children() {
        let mut fs = Initramfs::default();
        fs.file("/lib/modules/tun.ko", 0o644, b"x".to_vec());
        let keys: Vec<&str> = fs.entries.keys().map(String::as_str).collect();
        assert_eq!(keys, ["lib", "lib/modules", "lib/modules/tun.ko"]);
    }

    #[test]
    fn a_symlink_is_not_replaced_by_a_directory_of_the_same_name() {
        let mut fs = Initramfs::skeleton();
        assert!(matches!(fs.entries.get("sbin"), Some(Entry::Symlink(_))));
        fs.file("/etc/x", 0o644, b"".to_vec());
        assert!(matches!(fs.entries.get("sbin"), Some(Entry::Symlink(_))));
    }
}
