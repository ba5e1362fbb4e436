//! The Debian mirror a machine's apt already uses, read from its sources: deb822 `.sources`
//! files (`Types:`, `URIs:`, `Suites:`, `Enabled:`) and one-line `.list` files
//! (`deb [options] URI suite components`), as described in sources.list(5).

use std::fs;
use std::path::Path;

use super::{Mirror, SECURITY_SUITE, SUITE};

/// (URI, suite) pairs of the `deb` entries of one sources file; `deb822` selects the format.
pub fn parse_sources(text: &str, deb822: bool) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if deb822 {
        for stanza in text.split("\n\n") {
            let (mut types, mut uris, mut suites, mut enabled) = ("", "", "", true);
            for line in stanza.lines() {
                if line.trim_start().starts_with('#') {
                    continue;
                }
                let Some((key, value)) = line.split_once(':') else {
                    continue;
                };
                let value = value.trim();
                match key.trim() {
                    "Types" => types = value,
                    "URIs" => uris = value,
                    "Suites" => suites = value,
                    "Enabled" => enabled = !value.eq_ignore_ascii_case("no"),
                    _ => {}
                }
            }
            if !enabled || !types.split_whitespace().any(|t| t == "deb") {
                continue;
            }
            for uri in uris.split_whitespace() {
                for suite in suites.split_whitespace() {
                    out.push((uri.to_string(), suite.to_string()));
                }
            }
        }
    } else {
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or_default();
            let mut words = line.split_whitespace().peekable();
            if words.next() != Some("deb") {
                continue;
            }
            // `[arch=arm64 signed-by=...]` options, possibly with spaces inside the brackets.
            if words.peek().is_some_and(|w| w.starts_with('[')) {
                for w in words.by_ref() {
                    if w.ends_with(']') {
                        break;
                    }
                }
            }
            if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
                out.push((uri.to_string(), suite.to_string()));
            }
        }
    }
    out
}

/// The mirror of [`SUITE`] (and of [`SECURITY_SUITE`], when listed) in `entries`; only
/// http(s) URIs count (not `file:`, `cdrom:` or a proxy scheme the fetcher does not speak).
pub fn mirror_from_entries(entries: &[(String, String)]) -> Option<Mirror> {
    let find = |suite: &str| {
        entries
            .iter()
            .find(|(uri, s)| {
                s == suite && (uri.starts_with("http://") || uri.starts_with("https://"))
            })
            .map(|(uri, _)| uri.as_str())
    };
    Some(Mirror::new(find(SUITE)?, find(SECURITY_SUITE)))
}

/// The mirror named by the apt sources under `etc_apt` (normally `/etc/apt`): `sources.list`,
/// and `sources.list.d/*.list` and `*.sources`. `None` if no http(s) source lists [`SUITE`].
pub fn mirror_from_apt_sources(etc_apt: &Path) -> Option<Mirror> {
    let mut entries = Vec::new();
    if let Ok(text) = fs::read_to_string(etc_apt.join("sources.list")) {
        entries.extend(parse_sources(&text, false));
    }
    let mut files: Vec<_> = fs::read_dir(etc_apt.join("sources.list.d"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    for file in files {
        let deb822 = match file.extension().and_then(|e| e.to_str()) {
            Some("sources") => true,
            Some("list") => false,
            _ => continue,
        };
        if let Ok(text) = fs::read_to_string(&file) {
            entries.extend(parse_sources(&text, deb822));
        }
    }
    mirror_from_entries(&entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb822_sources_give_the_mirrors() {
        let text = "Types: deb\n# a comment\nURIs: http://mirror.example/debian\n\
                    Suites: bookworm bookworm-updates\nComponents: main\n\n\
                    Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n\n\
                    Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nEnabled: no\n\n\
                    Types: deb\nURIs: http://mirror.example/debian-security\n\
                    Suites: bookworm-security\nComponents: main\n";
        let entries = parse_sources(text, true);
        assert_eq!(entries.len(), 3, "{entries:?}");
        assert_eq!(
            mirror_from_entries(&entries),
            Some(Mirror {
                debian: "http://mirror.example/debian".into(),
                security: "http://mirror.example/debian-security".into()
            })
        );
    }

    #[test]
    fn one_line_sources_give_the_mirror() {
        let text = "# deb http://old.example/debian bookworm main\n\
                    deb cdrom:[Debian 12]/ bookworm main\n\
                    deb [arch=arm64 signed-by=/k.gpg] https://m.example/debian/ bookworm main\n";
        let entries = parse_sources(text, false);
        assert_eq!(
            mirror_from_entries(&entries),
            Some(Mirror {
                debian: "https://m.example/debian".into(),
                security: "https://m.example/debian-security".into()
            })
        );
        assert_eq!(
            mirror_from_entries(&parse_sources("deb http://x/ubuntu jammy main", false)),
            None
        );
    }
}
