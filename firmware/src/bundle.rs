//! A dynamically linked Debian arm64 program with the shared libraries it loads, for an
//! initramfs that has no C library (used for the `host.run=qemu` baseline: Debian's arm64
//! `qemu-system-aarch64` with KVM inside the emulated host).
//!
//! Without apt-file there is no soname -> package map here, so the libraries are found the
//! way dpkg-shlibdeps put them: each shared library a program needs comes from one of the
//! direct `Depends` of a package already used. Each round downloads the dependencies of the
//! packages that supplied files so far, until every `DT_NEEDED` is found.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use object::read::elf::{Dyn, ElfFile64, FileHeader};
use object::{Endianness, Object, ObjectSection};

use crate::{Layout, apt, deb, progress};

/// Where Debian's arm64 libraries live, relative to a package root.
const LIB_DIRS: &[&str] = &["lib/aarch64-linux-gnu", "usr/lib/aarch64-linux-gnu"];
/// Where the bundle puts them (a directory in the arm64 loader's default search path).
pub const BUNDLE_LIB_DIR: &str = "/lib/aarch64-linux-gnu";

/// One file of a bundle: where it goes in the initramfs and its contents.
#[derive(Debug)]
pub struct BundleFile {
    /// Absolute path in the initramfs.
    pub path: String,
    /// File contents.
    pub data: Vec<u8>,
}

/// The `DT_NEEDED` names and the program interpreter of an ELF file.
fn dynamic_info(data: &[u8]) -> Result<(Vec<String>, Option<String>)> {
    let elf = ElfFile64::<Endianness>::parse(data).context("not a 64-bit ELF file")?;
    let endian = elf.endian();
    let interp = elf
        .section_by_name(".interp")
        .and_then(|s| s.data().ok())
        .map(|d| {
            String::from_utf8_lossy(d)
                .trim_end_matches('\0')
                .to_string()
        });
    let sections = elf.elf_header().sections(endian, data)?;
    let mut needed = Vec::new();
    if let Some((entries, link)) = sections.dynamic(endian, data)? {
        let strings = sections.strings(endian, data, link)?;
        for entry in entries {
            if entry.d_tag(endian) == u64::from(object::elf::DT_NEEDED) {
                let name = entry.string(endian, strings)?;
                needed.push(String::from_utf8_lossy(name).into_owned());
            }
        }
    }
    Ok((needed, interp))
}

/// Reads `rel` inside `root`, following symbolic links (absolute ones re-rooted at `root`).
fn read_in_root(root: &Path, rel: &str) -> Result<Vec<u8>> {
    let mut path = root.join(rel.trim_start_matches('/'));
    for _ in 0..16 {
        match fs::read_link(&path) {
            Ok(target) if target.is_absolute() => {
                path = root.join(target.strip_prefix("/").unwrap_or(&target));
            }
            Ok(target) => {
                path = path.parent().unwrap_or(root).join(target);
            }
            Err(_) => {
                return fs::read(&path).with_context(|| format!("cannot read {}", path.display()));
            }
        }
    }
    bail!("too many symbolic links at {}", path.display())
}

/// The direct `Depends`/`PreDepends` of each of `packages` that are real arm64 packages,
/// with one apt query.
fn arm64_depends(packages: &[String]) -> Result<BTreeMap<String, Vec<String>>> {
    let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if packages.is_empty() {
        return Ok(deps);
    }
    let out = Command::new("apt-cache")
        .arg("depends")
        .args(packages)
        .output()
        .context("cannot run apt-cache")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut current = String::new();
    for line in text.lines() {
        if !line.starts_with(' ') {
            current = line.trim().to_string();
            deps.entry(current.clone()).or_default();
            continue;
        }
        let l = line.trim().trim_start_matches('|');
        if let Some(dep) = l
            .strip_prefix("Depends:")
            .or_else(|| l.strip_prefix("PreDepends:"))
            .map(str::trim)
            .filter(|p| p.ends_with(":arm64") && !p.starts_with('<'))
        {
            deps.entry(current.clone())
                .or_default()
                .push(dep.to_string());
        }
    }
    Ok(deps)
}

/// The package name of a `.deb` file (`name_version_arch.deb`), as `name:arm64`.
fn package_of(deb: &Path) -> String {
    let file = deb.file_name().unwrap_or_default().to_string_lossy();
    format!("{}:arm64", file.split('_').next().unwrap_or_default())
}

/// `program` (a path inside `package`, e.g. `usr/bin/qemu-system-aarch64`) and the shared
/// libraries it needs, as files for an initramfs: the program at `/bin/<name>`, the libraries
/// in [`BUNDLE_LIB_DIR`], and the loader at the program's interpreter path. `spec` is the
/// package, optionally with a version as apt takes it (`linux-perf:arm64=6.1.192-3`; the
/// libraries' packages are then found among the candidate version's dependencies).
pub fn bundle(layout: &Layout, spec: &str, program: &str) -> Result<Vec<BundleFile>> {
    let cache = layout.cache();
    let package = spec.split_once('=').map_or(spec, |(name, _)| name);
    let mut roots: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut frontier = vec![spec.to_string()];
    let mut depends: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for round in 1..=8 {
        for deb in apt::download_all(&std::mem::take(&mut frontier), &cache)? {
            roots.insert(package_of(&deb), deb::unpack_cached(&deb, &cache)?);
        }
        // soname -> (package, root)
        let mut index: BTreeMap<String, (String, PathBuf)> = BTreeMap::new();
        for (pkg, root) in &roots {
            for dir in LIB_DIRS {
                let Ok(entries) = fs::read_dir(root.join(dir)) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if name.contains(".so") {
                        index
                            .entry(name)
                            .or_insert_with(|| (pkg.clone(), root.clone()));
                    }
                }
            }
        }
        let main_root = roots
            .get(package)
            .with_context(|| format!("apt did not download {package}"))?;
        let main = read_in_root(main_root, program)?;
        let (mut queue, interp) = dynamic_info(&main)?;
        let mut files = vec![BundleFile {
            path: format!(
                "/bin/{}",
                Path::new(program)
                    .file_name()
                    .context("program has no file name")?
                    .to_string_lossy()
            ),
            data: main,
        }];
        let mut seen = BTreeSet::new();
        let mut used = BTreeSet::from([package.to_string()]);
        let mut missing = BTreeSet::new();
        while let Some(soname) = queue.pop() {
            if !seen.insert(soname.clone()) {
                continue;
            }
            let Some((pkg, root)) = index.get(&soname) else {
                missing.insert(soname);
                continue;
            };
            used.insert(pkg.clone());
            let data = LIB_DIRS
                .iter()
                .find_map(|dir| read_in_root(root, &format!("{dir}/{soname}")).ok())
                .with_context(|| format!("cannot read {soname} of {pkg}"))?;
            queue.extend(dynamic_info(&data)?.0);
            if interp
                .as_deref()
                .is_some_and(|i| Path::new(i).file_name() == Some(soname.as_ref()))
            {
                files.push(BundleFile {
                    path: interp.clone().unwrap_or_default(),
                    data: data.clone(),
                });
            }
            files.push(BundleFile {
                path: format!("{BUNDLE_LIB_DIR}/{soname}"),
                data,
            });
        }
        if missing.is_empty() {
            let size: usize = files.iter().map(|f| f.data.len()).sum();
            progress(format!(
                "bundled {program} of {package}: {} files, {:.1} MiB, from {} packages",
                files.len(),
                size as f64 / (1024.0 * 1024.0),
                used.len()
            ));
            return Ok(files);
        }
        let unexplored: Vec<String> = used
            .iter()
            .filter(|p| !depends.contains_key(*p))
            .cloned()
            .collect();
        depends.extend(arm64_depends(&unexplored)?);
        for dep in used
            .iter()
            .flat_map(|p| depends.get(p).into_iter().flatten())
        {
            if !roots.contains_key(dep) && !frontier.contains(dep) {
                frontier.push(dep.clone());
            }
        }
        progress(format!(
            "round {round}: {} libraries not found yet ({}), fetching {} more packages",
            missing.len(),
            missing.iter().cloned().collect::<Vec<_>>().join(" "),
            frontier.len()
        ));
        if frontier.is_empty() {
            bail!(
                "no dependency of {package} provides {}",
                missing.into_iter().collect::<Vec<_>>().join(" ")
            );
        }
    }
    bail!("the libraries of {package} are not found after 8 rounds of dependencies")
}
