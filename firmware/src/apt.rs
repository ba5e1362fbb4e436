//! Debian package look-ups and downloads through `apt-cache` and `apt-get download`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::progress;

/// Runs a command and returns its stdout, with the command and its stderr in the error.
fn output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {shown} (is apt installed?)"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("{shown} printed invalid UTF-8"))
}

/// The versioned kernel package a metapackage depends on, e.g. `linux-image-arm64:arm64` ->
/// `linux-image-6.1.0-56-arm64:arm64`. The ABI changes with Debian's updates, so it is never
/// hard-coded.
pub fn resolve_kernel_package(metapackage: &str) -> Result<String> {
    let text =
        output(Command::new("apt-cache").args(["depends", metapackage])).with_context(|| {
            format!(
                "cannot resolve {metapackage}: is the arm64 architecture added \
                 (dpkg --add-architecture arm64 && apt-get update)?"
            )
        })?;
    parse_kernel_dependency(&text).with_context(|| {
        format!("`apt-cache depends {metapackage}` names no linux-image-* dependency:\n{text}")
    })
}

/// [`resolve_kernel_package`] with `metapackage` taken from the Debian suite `release` (e.g.
/// `bookworm-backports`, which apt prefers to nothing unless asked: `apt-cache -t`). Fails
/// unless the kernel is at least `min` (major, minor).
pub fn resolve_kernel_package_in(
    metapackage: &str,
    release: &str,
    min: (u32, u32),
) -> Result<String> {
    let text = output(Command::new("apt-cache").args(["depends", "-t", release, metapackage]))
        .with_context(|| {
            format!(
                "cannot resolve {metapackage} from {release}: is {release} among apt's sources \
                 (scripts/setup adds it) and has `apt-get update` run since?"
            )
        })?;
    let package = parse_kernel_dependency(&text).with_context(|| {
        format!(
            "`apt-cache depends -t {release} {metapackage}` names no linux-image-* dependency:\n{text}"
        )
    })?;
    match kernel_version(&package) {
        Some(v) if v >= min => Ok(package),
        _ => bail!(
            "{metapackage} from {release} is {package}, older than the {}.{} this image needs",
            min.0,
            min.1
        ),
    }
}

/// `(major, minor)` of a versioned kernel package: `linux-image-6.12.95+deb12-arm64:arm64` ->
/// `(6, 12)`.
fn kernel_version(package: &str) -> Option<(u32, u32)> {
    let version = package.strip_prefix("linux-image-")?;
    let mut parts = version.split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

fn parse_kernel_dependency(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|pkg| pkg.starts_with("linux-image-"))
        .map(|pkg| {
            pkg.trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        })
}

/// What `apt-get download --print-uris` says about a package: its local file name and size.
#[derive(Debug, PartialEq)]
struct Uri {
    file_name: String,
    size: u64,
}

fn parse_print_uris(text: &str) -> Option<Uri> {
    // 'http://.../busybox-static_1%3a1.35.0-4+deb12u1+b1_arm64.deb' busybox-static_1%3a1.35.0-4+deb12u1+b1_arm64.deb 822236 SHA256:...
    let line = text.lines().find(|l| l.starts_with('\''))?;
    let mut fields = line.split_whitespace().skip(1);
    let file_name = fields.next()?.to_string();
    let size = fields.next()?.parse().ok()?;
    Some(Uri { file_name, size })
}

/// Downloads `package` (e.g. `busybox-static:arm64`) into `cache`, or reuses the file already
/// there. Returns the path of the `.deb`.
pub fn download(package: &str, cache: &Path) -> Result<PathBuf> {
    let uris = output(Command::new("apt-get").args(["download", "--print-uris", package]))
        .with_context(|| format!("cannot locate the Debian package {package}"))?;
    let uri = parse_print_uris(&uris)
        .with_context(|| format!("unexpected `apt-get download --print-uris` output:\n{uris}"))?;
    fetch(package, &uri, cache)
}

/// [`download`] for several packages, with one apt query (apt is slow to start). Returns
/// the `.deb` files in no particular order.
pub fn download_all(packages: &[String], cache: &Path) -> Result<Vec<PathBuf>> {
    if packages.is_empty() {
        return Ok(Vec::new());
    }
    let uris = output(
        Command::new("apt-get")
            .args(["download", "--print-uris"])
            .args(packages),
    )
    .with_context(|| format!("cannot locate the Debian packages {}", packages.join(" ")))?;
    uris.lines()
        .filter_map(parse_print_uris)
        .map(|uri| {
            let name = uri
                .file_name
                .split('_')
                .next()
                .unwrap_or_default()
                .to_string();
            fetch(&format!("{name}:arm64"), &uri, cache)
        })
        .collect()
}

fn fetch(package: &str, uri: &Uri, cache: &Path) -> Result<PathBuf> {
    fs::create_dir_all(cache).with_context(|| format!("cannot create {}", cache.display()))?;
    let deb = cache.join(&uri.file_name);
    if fs::metadata(&deb).is_ok_and(|m| m.len() == uri.size) {
        progress(format!("using cached {}", deb.display()));
        return Ok(deb);
    }
    // Download into a scratch directory and move the file in only when apt has verified it, so
    // an interrupted download is never mistaken for a cached one.
    let partial = cache.join("partial");
    let _ = fs::remove_dir_all(&partial);
    fs::create_dir_all(&partial)?;
    progress(format!(
        "downloading {package} ({:.1} MB) into {}",
        uri.size as f64 / 1e6,
        cache.display()
    ));
    output(
        Command::new("apt-get")
            .args(["download", "-q", package])
            .current_dir(&partial),
    )?;
    fs::rename(partial.join(&uri.file_name), &deb)
        .with_context(|| format!("apt-get download did not write {}", uri.file_name))?;
    let _ = fs::remove_dir_all(&partial);
    Ok(deb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_dependency_is_read_from_apt_cache_depends() {
        let text = "linux-image-arm64:arm64\n  Depends: linux-image-6.1.0-56-arm64:arm64\n";
        assert_eq!(
            parse_kernel_dependency(text).as_deref(),
            Some("linux-image-6.1.0-56-arm64:arm64")
        );
    }

    #[test]
    fn kernel_version_is_read_from_the_package_name() {
        assert_eq!(
            kernel_version("linux-image-6.12.95+deb12-arm64:arm64"),
            Some((6, 12))
        );
        assert_eq!(
            kernel_version("linux-image-6.1.0-57-arm64:arm64"),
            Some((6, 1))
        );
        assert_eq!(kernel_version("linux-image-arm64:arm64"), None);
        // 6.12 is newer than 6.4, and 6.1 older: compared as numbers, not text.
        assert!(kernel_version("linux-image-6.12.95+deb12-arm64").unwrap() >= (6, 4));
        assert!(kernel_version("linux-image-6.1.0-57-arm64").unwrap() < (6, 4));
    }

    #[test]
    fn print_uris_gives_file_name_and_size() {
        let text = "'http://deb.debian.org/debian/pool/main/b/busybox/busybox-static_1%3a1.35.0-4+deb12u1+b1_arm64.deb' busybox-static_1%3a1.35.0-4+deb12u1+b1_arm64.deb 822236 SHA256:00\n";
        assert_eq!(
            parse_print_uris(text),
            Some(Uri {
                file_name: "busybox-static_1%3a1.35.0-4+deb12u1+b1_arm64.deb".into(),
                size: 822_236
            })
        );
    }
}
