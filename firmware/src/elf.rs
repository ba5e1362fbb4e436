//! What the images need to know about ELF files: a module's `.modinfo`, and whether a binary
//! can run in an initramfs without a C library.

use anyhow::{Context, Result, bail};
use object::{Architecture, Object, ObjectSection};

/// The `key=value` strings of a kernel module's `.modinfo` section.
pub fn modinfo(ko: &[u8]) -> Result<Vec<(String, String)>> {
    let file = object::File::parse(ko).context("not an ELF file")?;
    let section = file
        .section_by_name(".modinfo")
        .context("no .modinfo section")?;
    let data = section.data().context("unreadable .modinfo")?;
    Ok(data
        .split(|&b| b == 0)
        .filter_map(|entry| {
            let entry = std::str::from_utf8(entry).ok()?;
            let (key, value) = entry.split_once('=')?;
            Some((key.to_string(), value.to_string()))
        })
        .collect())
}

/// Checks that `bin` is an arm64 executable with no program interpreter (statically linked).
pub fn check_static_aarch64(bin: &[u8]) -> Result<()> {
    let file = object::File::parse(bin).context("not an ELF file")?;
    if file.architecture() != Architecture::Aarch64 {
        bail!("built for {:?}, not aarch64", file.architecture());
    }
    if file.section_by_name(".interp").is_some() {
        bail!(
            "dynamically linked (it has a program interpreter): it cannot run in the host \
             initramfs; build it with `-C target-feature=+crt-static` (.cargo/config.toml)"
        );
    }
    Ok(())
}

/// The applet names of a busybox binary. Busybox keeps them as one sorted table of
/// NUL-terminated strings that starts with `[` and `[[` (`applet_names` in its
/// `applet_tables.h`), which lets us list them without running the arm64 binary.
pub fn busybox_applets(bin: &[u8]) -> Option<Vec<String>> {
    const START: &[u8] = b"\0[\0[[\0";
    let start = bin.windows(START.len()).position(|w| w == START)? + 1;
    let table = &bin[start..];
    let end = table.windows(2).position(|w| w == b"\0\0")?;
    let names: Vec<String> = table[..end]
        .split(|&b| b == 0)
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect();
    let plausible = names.len() > 10
        && names.windows(2).all(|w| w[0] < w[1])
        && names.iter().all(|n| {
            n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"[-_.".contains(&b))
        });
    plausible.then_some(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busybox_applet_table_is_found_between_other_strings() {
        let bin = b"junk\0more\0[\0[[\0ash\0ip\0sh\0\0tail";
        assert_eq!(
            busybox_applets(bin).map(|v| v.len()),
            None,
            "fewer than 10 names is not taken as the table"
        );
        let mut bin = b"junk\0[\0[[\0".to_vec();
        for name in [
            "a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8", "a9", "ash", "ip",
        ] {
            bin.extend_from_slice(name.as_bytes());
            bin.push(0);
        }
        bin.extend_from_slice(b"\0tail");
        let applets = busybox_applets(&bin).unwrap();
        assert_eq!(applets.first().map(String::as_str), Some("["));
        assert_eq!(applets.last().map(String::as_str), Some("ip"));
    }
}
