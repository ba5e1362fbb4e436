//! A suite's `InRelease`: its OpenPGP cleartext signature, checked against the archive keyring,
//! and the fields read from the signed text only.
//!
//! The format is Debian's "Release" file (wiki.debian.org/DebianRepository/Format): an RFC 822
//! style stanza whose `SHA256:` field lists ` <hash> <size> <path>` lines, one per index file,
//! signed with the cleartext signature framework (RFC 9580, section 7).

use pgp::composed::{CleartextSignedMessage, Deserializable, SignedPublicKey};
use pgp::types::{KeyDetails, VerifyingKey};

use super::FetchError;

/// The archive keys a signature may come from.
#[derive(Debug, Clone)]
pub struct Keyring {
    keys: Vec<SignedPublicKey>,
}

/// Debian's bookworm archive signing keys, from Debian's `debian-archive-keyring` package
/// (`firmware/keyring/README.md` tells how they were extracted and how to refresh them).
const DEBIAN_KEYS: &[(&str, &str)] = &[
    (
        "debian-archive-bookworm-automatic.asc",
        include_str!("../../keyring/debian-archive-bookworm-automatic.asc"),
    ),
    (
        "debian-archive-bookworm-security-automatic.asc",
        include_str!("../../keyring/debian-archive-bookworm-security-automatic.asc"),
    ),
    (
        "debian-archive-bookworm-stable.asc",
        include_str!("../../keyring/debian-archive-bookworm-stable.asc"),
    ),
];

impl Keyring {
    /// Debian's bookworm archive keys, carried in the repository.
    pub fn debian() -> Result<Self, FetchError> {
        let mut keys = Vec::new();
        for (name, armored) in DEBIAN_KEYS {
            keys.push(Self::parse(armored).map_err(|e| FetchError::Keyring {
                detail: format!("{name}: {e}"),
            })?);
        }
        Ok(Self { keys })
    }

    /// A keyring of armored public keys (tests use throwaway keys).
    pub fn from_keys(keys: Vec<SignedPublicKey>) -> Self {
        Self { keys }
    }

    fn parse(armored: &str) -> Result<SignedPublicKey, String> {
        let (mut key, _) = SignedPublicKey::from_string(armored).map_err(|e| e.to_string())?;
        // Only the self-signatures matter here: certifications of the user ids by other keys
        // (Debian's keys carry some) cannot be checked without those keys, and are dropped.
        let (fpr, id) = (
            key.primary_key.fingerprint(),
            key.primary_key.legacy_key_id(),
        );
        for user in &mut key.details.users {
            user.signatures.retain(|s| {
                s.issuer_fingerprint().contains(&&fpr) || s.issuer_key_id().contains(&&id)
            });
        }
        // The self-signatures and subkey bindings (with the subkeys' back signatures): a
        // subkey counts only when its owner bound it.
        key.verify_bindings().map_err(|e| e.to_string())?;
        Ok(key)
    }

    /// The fingerprints of the primary keys and their subkeys, in hex.
    pub fn fingerprints(&self) -> Vec<String> {
        let mut out = Vec::new();
        for key in &self.keys {
            out.push(hex_upper(key.primary_key.fingerprint().as_bytes()));
            for sub in &key.public_subkeys {
                out.push(hex_upper(sub.key.fingerprint().as_bytes()));
            }
        }
        out
    }

    /// Checks the cleartext-signed `text` and returns the signed text (LF line ends) when at
    /// least one signature is by a key of the keyring and verifies. Signatures by other keys
    /// are ignored (Debian signs with the next release's keys too).
    pub fn verify(&self, what: &str, text: &str) -> Result<String, FetchError> {
        let (msg, _) =
            CleartextSignedMessage::from_string(text).map_err(|e| FetchError::BadSignature {
                what: what.to_string(),
                detail: format!("not an OpenPGP cleartext-signed file: {e}"),
            })?;
        let signed = msg.signed_text();
        let mut issuers = Vec::new();
        let mut failures = Vec::new();
        for sig in msg.signatures() {
            let ids: Vec<String> = sig
                .issuer_fingerprint()
                .iter()
                .map(|f| hex_upper(f.as_bytes()))
                .chain(sig.issuer_key_id().iter().map(|id| hex_upper(id.as_ref())))
                .collect();
            let mut known = false;
            for key in &self.keys {
                let mut candidates: Vec<&dyn Candidate> = vec![&key.primary_key];
                candidates.extend(key.public_subkeys.iter().map(|s| &s.key as &dyn Candidate));
                for candidate in candidates {
                    if !candidate.issued(&ids) {
                        continue;
                    }
                    known = true;
                    match candidate.check(sig, signed.as_bytes()) {
                        Ok(()) => return Ok(signed.replace("\r\n", "\n")),
                        Err(e) => failures.push(format!("{}: {e}", candidate.fpr())),
                    }
                }
            }
            if !known {
                issuers.extend(ids);
            }
        }
        if !failures.is_empty() {
            return Err(FetchError::BadSignature {
                what: what.to_string(),
                detail: failures.join("; "),
            });
        }
        issuers.sort();
        issuers.dedup();
        Err(FetchError::UnknownKey {
            what: what.to_string(),
            issuers: if issuers.is_empty() {
                "none named".to_string()
            } else {
                issuers.join(", ")
            },
        })
    }
}

/// A primary key or a subkey that may have made a signature.
trait Candidate {
    fn fpr(&self) -> String;
    fn key_id(&self) -> String;
    fn check(&self, sig: &pgp::packet::Signature, data: &[u8]) -> pgp::errors::Result<()>;

    /// Whether one of the signature's issuer ids (fingerprints or 8-byte key ids) is this key.
    fn issued(&self, ids: &[String]) -> bool {
        let (fpr, id) = (self.fpr(), self.key_id());
        ids.iter().any(|i| *i == fpr || *i == id)
    }
}

impl<K: VerifyingKey + KeyDetails> Candidate for K {
    fn fpr(&self) -> String {
        hex_upper(self.fingerprint().as_bytes())
    }
    fn key_id(&self) -> String {
        hex_upper(self.legacy_key_id().as_ref())
    }
    fn check(&self, sig: &pgp::packet::Signature, data: &[u8]) -> pgp::errors::Result<()> {
        sig.verify(self, data)
    }
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// The fields of a verified Release text that the fetcher uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Release {
    /// `Codename:` (e.g. `bookworm`, `bookworm-security`).
    pub codename: String,
    /// `Suite:` (e.g. `oldstable`).
    pub suite: String,
    /// `Date:` in seconds since the epoch.
    pub date: Option<u64>,
    /// `Valid-Until:` in seconds since the epoch.
    pub valid_until: Option<u64>,
    /// `Acquire-By-Hash: yes`: index files are also at `by-hash/SHA256/<hash>`.
    pub by_hash: bool,
    /// The `SHA256:` list: (path, size, hash).
    pub sha256: Vec<(String, u64, String)>,
}

impl Release {
    /// Parses the (already verified) Release text.
    pub fn parse(text: &str) -> Self {
        let mut rel = Release {
            codename: String::new(),
            suite: String::new(),
            date: None,
            valid_until: None,
            by_hash: false,
            sha256: Vec::new(),
        };
        let mut in_sha256 = false;
        for line in text.lines() {
            if line.starts_with(' ') || line.starts_with('\t') {
                if in_sha256 {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    if let [hash, size, path] = f[..]
                        && let Ok(size) = size.parse()
                        && hash.len() == 64
                        && hash.bytes().all(|b| b.is_ascii_hexdigit())
                    {
                        rel.sha256
                            .push((path.to_string(), size, hash.to_ascii_lowercase()));
                    }
                }
                continue;
            }
            let Some((key, value)) = line.split_once(':') else {
                in_sha256 = false;
                continue;
            };
            let value = value.trim();
            in_sha256 = key == "SHA256";
            match key {
                "Codename" => rel.codename = value.to_string(),
                "Suite" => rel.suite = value.to_string(),
                "Date" => rel.date = parse_date(value),
                "Valid-Until" => rel.valid_until = parse_date(value),
                "Acquire-By-Hash" => rel.by_hash = value.eq_ignore_ascii_case("yes"),
                _ => {}
            }
        }
        rel
    }

    /// The (size, hash) the Release gives for `path` (relative to the suite's directory).
    pub fn file(&self, path: &str) -> Option<(u64, &str)> {
        self.sha256
            .iter()
            .find(|(p, _, _)| p == path)
            .map(|(_, size, hash)| (*size, hash.as_str()))
    }
}

/// Parses a Release date, e.g. `Sat, 28 Nov 2026 02:53:00 UTC` (RFC 2822 form, always UTC in
/// Debian's archive), into seconds since the epoch.
pub fn parse_date(s: &str) -> Option<u64> {
    let s = s.split_once(',').map_or(s, |(_, rest)| rest).trim();
    let f: Vec<&str> = s.split_whitespace().collect();
    let [day, month, year, time, zone] = f[..] else {
        return None;
    };
    if !matches!(zone, "UTC" | "GMT" | "+0000" | "Z") {
        return None;
    }
    let day: u64 = day.parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == month)? as u64
        + 1;
    let year: u64 = year.parse().ok()?;
    let hms: Vec<u64> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, sec] = hms[..] else {
        return None;
    };
    if !(1..=31).contains(&day) || year < 1970 || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    // Days from 1970-01-01 to the civil date (the proleptic Gregorian calendar).
    let (y, mo) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + m * 60 + sec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_fields_and_sha256_list_are_read() {
        let text = "Origin: Debian\nSuite: oldstable\nCodename: bookworm\n\
                    Date: Sat, 11 Jul 2026 10:16:37 UTC\nAcquire-By-Hash: yes\nMD5Sum:\n \
                    0123 12 main/binary-arm64/Packages.xz\nSHA256:\n \
                    00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF 1234 \
                    main/binary-arm64/Packages.xz\n \
                    ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff 99 \
                    main/binary-arm64/Release\n";
        let rel = Release::parse(text);
        assert_eq!(rel.codename, "bookworm");
        assert_eq!(rel.suite, "oldstable");
        assert!(rel.by_hash);
        // `date -u -d '2026-07-11 10:16:37' +%s`
        assert_eq!(rel.date, Some(1_783_764_997));
        assert_eq!(
            rel.file("main/binary-arm64/Packages.xz"),
            Some((
                1234,
                "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
            ))
        );
        assert_eq!(rel.file("main/binary-amd64/Packages.xz"), None);
    }

    #[test]
    fn dates_are_utc_seconds() {
        assert_eq!(parse_date("Thu, 01 Jan 1970 00:00:00 UTC"), Some(0));
        // `date -u -d '2026-11-28 02:53:00' +%s`
        assert_eq!(
            parse_date("Sat, 28 Nov 2026 02:53:00 UTC"),
            Some(1_795_834_380)
        );
        assert_eq!(parse_date("Sat, 28 Nov 2026 02:53:00 +0100"), None);
        assert_eq!(parse_date("yesterday"), None);
    }
}
