//! Unpacking `.deb` files without dpkg: an `ar` archive whose `data.tar.*` member holds the
//! package's files.

use std::fs::{self, File};
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::progress;

/// Unpacks the files of `deb` into `<cache>/<deb file stem>/` once, and returns that
/// directory. A stamp file marks a complete unpack, so an interrupted one is redone.
pub fn unpack_cached(deb: &Path, cache: &Path) -> Result<PathBuf> {
    let stem = deb
        .file_stem()
        .and_then(|s| s.to_str())
        .with_context(|| format!("odd package file name {}", deb.display()))?;
    let dest = cache.join(stem);
    let stamp = dest.join(".unpacked");
    if stamp.exists() {
        return Ok(dest);
    }
    let _ = fs::remove_dir_all(&dest);
    fs::create_dir_all(&dest).with_context(|| format!("cannot create {}", dest.display()))?;
    progress(format!(
        "unpacking {} into {}",
        deb.display(),
        dest.display()
    ));
    unpack(deb, &dest).with_context(|| format!("cannot unpack {}", deb.display()))?;
    fs::write(&stamp, b"")?;
    Ok(dest)
}

fn unpack(deb: &Path, dest: &Path) -> Result<()> {
    let file = File::open(deb)?;
    let mut archive = ar::Archive::new(BufReader::new(file));
    while let Some(member) = archive.next_entry() {
        let member = member.context("corrupt ar archive")?;
        let name = String::from_utf8_lossy(member.header().identifier()).into_owned();
        let Some(compression) = name.strip_prefix("data.tar") else {
            continue;
        };
        let reader: Box<dyn Read + '_> = match compression {
            ".xz" => Box::new(lzma_rust2::XzReader::new(member, true)),
            ".gz" => Box::new(flate2::read::GzDecoder::new(member)),
            "" => Box::new(member),
            other => bail!("data.tar{other} is not supported (only .xz, .gz and plain)"),
        };
        let mut tar = tar::Archive::new(reader);
        tar.set_preserve_permissions(true);
        // `unpack` refuses paths that would leave `dest`.
        tar.unpack(dest).context("cannot unpack data.tar")?;
        return Ok(());
    }
    bail!("no data.tar member: not a Debian package")
}
