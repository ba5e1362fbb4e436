//! Picking kernel modules out of an unpacked kernel package, with their dependencies, in load
//! order. Debian's package ships no `modules.dep` (depmod writes it at install time), so the
//! dependencies are read from each module's own `.modinfo` (`depends=`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::elf;

/// A module ready to go into an initramfs: its name and uncompressed contents.
#[derive(Debug)]
pub struct Module {
    /// The module name (`KBUILD_MODNAME`: the file name with `-` as `_`).
    pub name: String,
    /// The `.ko` contents, decompressed if the package ships `.ko.xz`.
    pub data: Vec<u8>,
}

/// The modules of one kernel, by module name.
#[derive(Debug)]
pub struct ModuleTree {
    files: BTreeMap<String, PathBuf>,
}

impl ModuleTree {
    /// Indexes `<root>/lib/modules/<release>/kernel`.
    pub fn open(modules_dir: &Path) -> Result<Self> {
        let mut files = BTreeMap::new();
        let kernel = modules_dir.join("kernel");
        walk(&kernel, &mut files).with_context(|| format!("cannot list {}", kernel.display()))?;
        if files.is_empty() {
            bail!("no modules under {}", kernel.display());
        }
        Ok(Self { files })
    }

    /// `roots` and everything they depend on, each after its dependencies.
    pub fn load_order(&self, roots: &[&str]) -> Result<Vec<Module>> {
        let mut done = BTreeSet::new();
        let mut order = Vec::new();
        for root in roots {
            self.visit(root, &mut done, &mut Vec::new(), &mut order)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
        order: &mut Vec<Module>,
    ) -> Result<()> {
        if done.contains(name) {
            return Ok(());
        }
        if path.iter().any(|p| p == name) {
            bail!("module dependency cycle: {} -> {name}", path.join(" -> "));
        }
        let file = self.files.get(name).with_context(|| {
            format!("kernel module {name} not found in the package (built in, or renamed?)")
        })?;
        let data = read_module(file)?;
        let depends: Vec<String> = elf::modinfo(&data)
            .with_context(|| format!("cannot read the modinfo of {}", file.display()))?
            .into_iter()
            .filter(|(key, _)| key == "depends")
            .flat_map(|(_, value)| {
                value
                    .split(',')
                    .filter(|d| !d.is_empty())
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect();
        path.push(name.to_string());
        for dep in &depends {
            self.visit(dep, done, path, order)?;
        }
        path.pop();
        done.insert(name.to_string());
        order.push(Module {
            name: name.to_string(),
            data,
        });
        Ok(())
    }
}

fn walk(dir: &Path, files: &mut BTreeMap<String, PathBuf>) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            walk(&path, files)?;
        } else if let Some(name) = module_name(&path) {
            files.insert(name, path);
        }
    }
    Ok(())
}

fn module_name(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let stem = file
        .strip_suffix(".ko")
        .or_else(|| file.strip_suffix(".ko.xz"))?;
    Some(stem.replace('-', "_"))
}

fn read_module(path: &Path) -> Result<Vec<u8>> {
    let raw = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "xz") {
        let mut data = Vec::new();
        lzma_rust2::XzReader::new(raw.as_slice(), true)
            .read_to_end(&mut data)
            .with_context(|| format!("cannot decompress {}", path.display()))?;
        Ok(data)
    } else {
        Ok(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_use_underscores_and_drop_the_suffix() {
        assert_eq!(
            module_name(Path::new("a/virtio-net.ko.xz")).as_deref(),
            Some("virtio_net")
        );
        assert_eq!(
            module_name(Path::new("a/failover.ko")).as_deref(),
            Some("failover")
        );
        assert_eq!(module_name(Path::new("a/modules.order")), None);
    }
}
