//! The `Packages` index of a suite's `main/binary-arm64`, Debian version ordering, and the
//! resolution of a package name to one package as apt would: the highest version across the
//! suites, and for a metapackage, the package its `Depends:` names.

use std::cmp::Ordering;

use super::FetchError;

/// One stanza of a `Packages` index (only the fields the fetcher uses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub architecture: String,
    pub depends: String,
    /// The path of the `.deb` below the mirror's root, e.g. `pool/main/b/busybox/...deb`.
    pub filename: String,
    pub size: u64,
    /// Lower-case hex.
    pub sha256: String,
    /// The suite whose index listed it (for messages).
    pub suite: String,
}

/// Parses a `Packages` file. Stanzas without the fields a download needs are skipped.
pub fn parse_packages(text: &str, suite: &str) -> Vec<Package> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let mut p = Package {
            name: String::new(),
            version: String::new(),
            architecture: String::new(),
            depends: String::new(),
            filename: String::new(),
            size: 0,
            sha256: String::new(),
            suite: suite.to_string(),
        };
        let mut size = None;
        for line in stanza.lines() {
            // Continuation lines (Description) start with a space; none of ours continue.
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            if key.starts_with(' ') || key.starts_with('\t') {
                continue;
            }
            let value = value.trim();
            match key {
                "Package" => p.name = value.to_string(),
                "Version" => p.version = value.to_string(),
                "Architecture" => p.architecture = value.to_string(),
                "Depends" => p.depends = value.to_string(),
                "Filename" => p.filename = value.to_string(),
                "Size" => size = value.parse().ok(),
                "SHA256" => p.sha256 = value.to_ascii_lowercase(),
                _ => {}
            }
        }
        let Some(size) = size else { continue };
        p.size = size;
        let hash_ok = p.sha256.len() == 64 && p.sha256.bytes().all(|b| b.is_ascii_hexdigit());
        // The file name comes from the mirror: it must stay a relative pool path.
        let path_ok = p.filename.starts_with("pool/")
            && !p.filename.split('/').any(|c| c == ".." || c.is_empty());
        if !p.name.is_empty() && !p.version.is_empty() && hash_ok && path_ok {
            out.push(p);
        }
    }
    out
}

/// Compares two Debian versions (`[epoch:]upstream[-revision]`) as dpkg does (Debian Policy,
/// section 5.6.12): epochs numerically, then upstream and revision by alternating non-digit
/// parts (letters before non-letters, `~` before everything, even the end) and numeric parts.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let (ea, ua, ra) = split_version(a);
    let (eb, ub, rb) = split_version(b);
    ea.cmp(&eb)
        .then_with(|| compare_part(ua, ub))
        .then_with(|| compare_part(ra, rb))
}

fn split_version(v: &str) -> (u64, &str, &str) {
    let (epoch, rest) = match v.split_once(':') {
        Some((e, rest)) if e.bytes().all(|b| b.is_ascii_digit()) => (e.parse().unwrap_or(0), rest),
        _ => (0, v),
    };
    match rest.rsplit_once('-') {
        Some((upstream, revision)) => (epoch, upstream, revision),
        None => (epoch, rest, ""),
    }
}

fn order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(c) => i32::from(c) + 256,
    }
}

fn compare_part(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    while !a.is_empty() || !b.is_empty() {
        // The non-digit prefixes, character by character.
        loop {
            let ca = a.first().copied().filter(|c| !c.is_ascii_digit());
            let cb = b.first().copied().filter(|c| !c.is_ascii_digit());
            if ca.is_none() && cb.is_none() {
                break;
            }
            let (oa, ob) = (order(ca), order(cb));
            if oa != ob {
                return oa.cmp(&ob);
            }
            a = &a[1..];
            b = &b[1..];
        }
        // The numeric parts, as numbers (leading zeros ignored, any length).
        let da = a.iter().take_while(|c| c.is_ascii_digit()).count();
        let db = b.iter().take_while(|c| c.is_ascii_digit()).count();
        let na = trim_zeros(&a[..da]);
        let nb = trim_zeros(&b[..db]);
        let by_number = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
        if by_number != Ordering::Equal {
            return by_number;
        }
        a = &a[da..];
        b = &b[db..];
    }
    Ordering::Equal
}

fn trim_zeros(digits: &[u8]) -> &[u8] {
    let zeros = digits.iter().take_while(|&&c| c == b'0').count();
    &digits[zeros..]
}

/// A version relation in a `Depends:` entry, e.g. `(= 6.1.158-1)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub op: String,
    pub version: String,
}

impl Relation {
    fn allows(&self, version: &str) -> bool {
        let c = compare_versions(version, &self.version);
        match self.op.as_str() {
            "=" => c == Ordering::Equal,
            ">=" => c != Ordering::Less,
            "<=" => c != Ordering::Greater,
            ">>" => c == Ordering::Greater,
            "<<" => c == Ordering::Less,
            _ => false,
        }
    }
}

/// The entries of a `Depends:` field: for each, its first alternative's name and relation
/// (`linux-image-6.1.0-41-arm64 (= 6.1.158-1)` -> name and `= 6.1.158-1`). Architecture
/// qualifiers (`:any`) are dropped.
pub fn parse_depends(depends: &str) -> Vec<(String, Option<Relation>)> {
    depends
        .split(',')
        .filter_map(|entry| {
            let first = entry.split('|').next()?.trim();
            let (name, rest) = match first.find(['(', ' ']) {
                Some(i) => (&first[..i], first[i..].trim()),
                None => (first, ""),
            };
            let name = name.split(':').next()?.trim();
            if name.is_empty() {
                return None;
            }
            let relation = rest
                .strip_prefix('(')
                .and_then(|r| r.split_once(')'))
                .and_then(|(inner, _)| {
                    let inner = inner.trim();
                    let i = inner.find(|c: char| !matches!(c, '<' | '>' | '='))?;
                    Some(Relation {
                        op: inner[..i].trim().to_string(),
                        version: inner[i..].trim().to_string(),
                    })
                });
            Some((name.to_string(), relation))
        })
        .collect()
}

/// The packages of all the suites' indexes.
#[derive(Debug, Default)]
pub struct Index {
    pub packages: Vec<Package>,
}

impl Index {
    /// apt's candidate for `name` on arm64: the highest version across the suites that
    /// satisfies `relation`.
    pub fn candidate(&self, name: &str, relation: Option<&Relation>) -> Option<&Package> {
        self.packages
            .iter()
            .filter(|p| p.name == name && matches!(p.architecture.as_str(), "arm64" | "all"))
            .filter(|p| relation.is_none_or(|r| r.allows(&p.version)))
            .max_by(|a, b| compare_versions(&a.version, &b.version))
    }

    /// The package `name`, or [`FetchError::NoPackage`] naming the suites searched.
    pub fn require(&self, name: &str, suites: &str) -> Result<&Package, FetchError> {
        self.candidate(name, None)
            .ok_or_else(|| FetchError::NoPackage {
                package: name.to_string(),
                suites: suites.to_string(),
            })
    }

    /// The kernel a metapackage such as `linux-image-arm64` stands for: the `linux-image-*`
    /// package of its candidate's `Depends:`, at the version the dependency asks for.
    pub fn resolve_kernel(&self, metapackage: &str, suites: &str) -> Result<&Package, FetchError> {
        let meta = self.require(metapackage, suites)?;
        let (name, relation) = parse_depends(&meta.depends)
            .into_iter()
            .find(|(name, _)| name.starts_with("linux-image-"))
            .ok_or_else(|| FetchError::Malformed {
                what: format!("{metapackage} {} ({})", meta.version, meta.suite),
                detail: format!(
                    "its Depends names no linux-image-* package: {}",
                    meta.depends
                ),
            })?;
        self.candidate(&name, relation.as_ref())
            .ok_or_else(|| FetchError::NoPackage {
                package: match &relation {
                    Some(r) => format!(
                        "{name} ({} {}), which {metapackage} {} depends on",
                        r.op, r.version, meta.version
                    ),
                    None => format!("{name}, which {metapackage} {} depends on", meta.version),
                },
                suites: suites.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_as_dpkg_does() {
        use Ordering::*;
        let cases = [
            ("1.0", "1.0", Equal),
            ("1.0", "1.1", Less),
            ("1.10", "1.9", Greater),
            ("1:1.0", "2.0", Greater),
            ("1.0~rc1", "1.0", Less),
            ("1.0", "1.0+b1", Less),
            ("1.0a", "1.0+", Less),
            ("6.1.158-1", "6.1.158-1~deb12u1", Greater),
            ("6.1.159-1", "6.1.158-2", Greater),
            ("1:1.35.0-4+b3", "1:1.35.0-4+deb12u1", Less),
            ("1.01", "1.1", Equal),
            ("2.0-1", "2.0-10", Less),
            ("1.0-", "1.0", Equal),
        ];
        for (a, b, want) in cases {
            assert_eq!(compare_versions(a, b), want, "{a} vs {b}");
            assert_eq!(compare_versions(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn depends_entries_with_relations() {
        let d =
            parse_depends("linux-image-6.1.0-41-arm64 (= 6.1.158-1), foo:any (>= 2) | bar, baz");
        assert_eq!(
            d,
            vec![
                (
                    "linux-image-6.1.0-41-arm64".to_string(),
                    Some(Relation {
                        op: "=".into(),
                        version: "6.1.158-1".into()
                    })
                ),
                (
                    "foo".to_string(),
                    Some(Relation {
                        op: ">=".into(),
                        version: "2".into()
                    })
                ),
                ("baz".to_string(), None),
            ]
        );
    }

    fn stanza(name: &str, version: &str, depends: &str, tag: char) -> String {
        format!(
            "Package: {name}\nSource: linux\nVersion: {version}\nArchitecture: arm64\n\
             Maintainer: Debian Kernel Team <debian-kernel@lists.debian.org>\n\
             Depends: {depends}\nDescription: test\n a continuation line: with a colon\n\
             Filename: pool/main/l/linux/{name}_{version}_arm64.deb\nSize: 42\n\
             SHA256: {}\n",
            tag.to_string().repeat(64)
        )
    }

    #[test]
    fn packages_index_is_parsed_and_bad_stanzas_dropped() {
        let text = format!(
            "{}\n{}\nPackage: evil\nVersion: 1\nArchitecture: arm64\n\
             Filename: pool/../../etc/passwd\nSize: 1\nSHA256: {}\n\n\
             Package: nohash\nVersion: 1\nArchitecture: arm64\nFilename: pool/x.deb\nSize: 1\n",
            stanza("busybox-static", "1:1.35.0-4+b3", "", 'a'),
            stanza(
                "linux-image-arm64",
                "6.1.158-1",
                "linux-image-6.1.0-41-arm64 (= 6.1.158-1)",
                'b'
            ),
            "c".repeat(64)
        );
        let p = parse_packages(&text, "bookworm");
        assert_eq!(p.len(), 2, "{p:#?}");
        assert_eq!(p[0].name, "busybox-static");
        assert_eq!(p[0].version, "1:1.35.0-4+b3");
        assert_eq!(p[0].size, 42);
        assert_eq!(p[0].sha256, "a".repeat(64));
        assert_eq!(
            p[1].filename,
            "pool/main/l/linux/linux-image-arm64_6.1.158-1_arm64.deb"
        );
    }

    #[test]
    fn the_kernel_metapackage_resolves_to_the_highest_version_across_suites() {
        let main = format!(
            "{}\n{}\n",
            stanza(
                "linux-image-arm64",
                "6.1.158-1",
                "linux-image-6.1.0-41-arm64 (= 6.1.158-1)",
                'a'
            ),
            stanza("linux-image-6.1.0-41-arm64", "6.1.158-1", "kmod", 'b'),
        );
        let security = format!(
            "{}\n{}\n{}\n",
            stanza(
                "linux-image-arm64",
                "6.1.159-1",
                "linux-image-6.1.0-42-arm64 (= 6.1.159-1)",
                'c'
            ),
            stanza("linux-image-6.1.0-42-arm64", "6.1.159-1", "kmod", 'd'),
            // A newer build of the same ABI that the metapackage does not ask for.
            stanza("linux-image-6.1.0-42-arm64", "6.1.159-2", "kmod", 'e'),
        );
        let mut index = Index::default();
        index.packages.extend(parse_packages(&main, "bookworm"));
        index
            .packages
            .extend(parse_packages(&security, "bookworm-security"));
        let k = index
            .resolve_kernel("linux-image-arm64", "bookworm")
            .unwrap();
        assert_eq!(
            (k.name.as_str(), k.version.as_str(), k.suite.as_str()),
            (
                "linux-image-6.1.0-42-arm64",
                "6.1.159-1",
                "bookworm-security"
            )
        );

        // Only the main suite: its own kernel.
        let mut index = Index::default();
        index.packages.extend(parse_packages(&main, "bookworm"));
        let k = index
            .resolve_kernel("linux-image-arm64", "bookworm")
            .unwrap();
        assert_eq!(k.name, "linux-image-6.1.0-41-arm64");

        // A metapackage whose kernel is missing, and a suite without the metapackage.
        let mut index = Index::default();
        index.packages.extend(parse_packages(
            &security[..security.find("\n\n").unwrap()],
            "s",
        ));
        assert!(matches!(
            index.resolve_kernel("linux-image-arm64", "s"),
            Err(FetchError::NoPackage { .. })
        ));
        let index = Index::default();
        assert!(matches!(
            index.resolve_kernel("linux-image-arm64", "s"),
            Err(FetchError::NoPackage { .. })
        ));
    }
}
