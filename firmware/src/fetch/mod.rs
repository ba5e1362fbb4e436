//! Fetching Debian's arm64 guest packages from a Debian mirror without apt (any OS).
//!
//! The chain of trust is apt's: a suite's `InRelease` carries an OpenPGP signature by one of
//! Debian's archive keys (carried in `firmware/keyring`, see its README); the signed text gives
//! the SHA-256 of `main/binary-arm64/Packages.xz`; the index gives the SHA-256 of each `.deb`.
//! Every file is checked before it is used, so plain `http://` mirrors are as safe as
//! `https://` ones (as with apt): a mirror or a network in between can withhold files or serve
//! old signed ones (refused when the signed `Valid-Until` has passed, or when a refresh would
//! go back in time), but cannot change them.
//!
//! Everything lands in `<cache>/fetch`: each suite's verified `InRelease` under
//! `dists/<suite>/`, and indexes and packages under `sha256/<hash>/` by the hash they were
//! checked against. A later run reads the cached `InRelease` files (verifying them again) and
//! finds everything else by hash, without a network request; `--refresh` asks the mirror for
//! new `InRelease` files. Downloads go to a `*.partial` file that is renamed into place only
//! when verified, and removed on any failure.

mod http;
mod packages;
mod release;
mod sources;

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

pub use self::http::{Http, UreqHttp};
pub use self::packages::{Index, Package, compare_versions, parse_packages};
pub use self::release::{Keyring, Release};
pub use self::sources::{mirror_from_apt_sources, parse_sources};
use crate::progress;

/// The suite the guest's packages come from.
pub const SUITE: &str = "bookworm";
/// Its security suite, on the security mirror, where kernel updates appear first.
pub const SECURITY_SUITE: &str = "bookworm-security";
/// The metapackage that names Debian's current arm64 kernel.
pub const KERNEL_METAPACKAGE: &str = "linux-image-arm64";
/// The guest's busybox.
pub const BUSYBOX_PACKAGE: &str = "busybox-static";
/// The environment variable read when `--mirror` is not given.
pub const MIRROR_ENV: &str = "VMNET_DEBIAN_MIRROR";
/// The environment variable for the security mirror.
pub const SECURITY_MIRROR_ENV: &str = "VMNET_DEBIAN_SECURITY_MIRROR";

/// The largest `InRelease` accepted (Debian's are about 150 KB).
const MAX_INRELEASE: u64 = 16 << 20;

/// Why a fetch failed. Each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The mirror did not answer (DNS, connection, TLS, timeout).
    #[error(
        "{url}: the mirror does not answer ({reason}); check the URL, the network and any proxy, or give another mirror"
    )]
    Unreachable { url: String, reason: String },
    /// The mirror answered with an HTTP error.
    #[error(
        "{url}: HTTP status {status}; is the mirror URL a Debian archive root (the form is http[s]://HOST/debian)? If cached indexes are old, run again with --refresh"
    )]
    Status { url: String, status: u16 },
    /// A signature by a known key that does not verify, or no signature at all.
    #[error(
        "{what}: bad OpenPGP signature ({detail}); the file was changed after Debian signed it: do not use this mirror"
    )]
    BadSignature { what: String, detail: String },
    /// Signatures only by keys the repository does not carry.
    #[error(
        "{what} is not signed by any of Debian's bookworm archive keys in firmware/keyring (signed by: {issuers}); if Debian rotated its keys, refresh firmware/keyring as its README says, otherwise do not use this mirror"
    )]
    UnknownKey { what: String, issuers: String },
    /// A file whose size or SHA-256 is not the signed one.
    #[error(
        "{what}: SHA-256 mismatch (expected {expected}, got {actual}): the download was changed or cut short; try again or use another mirror"
    )]
    HashMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    /// An `InRelease` past its signed `Valid-Until`, or older than the cached one.
    #[error(
        "{what} is stale ({detail}): the mirror serves an old copy; try another mirror or later"
    )]
    Stale { what: String, detail: String },
    /// An `InRelease` of another suite than the one asked for.
    #[error(
        "{what} is for suite {found:?}, not {expected:?}: the mirror serves the wrong files; use another mirror"
    )]
    WrongSuite {
        what: String,
        found: String,
        expected: String,
    },
    /// A package (or the kernel a metapackage names) that no suite's arm64 index lists.
    #[error(
        "no arm64 package {package} in {suites}: is the mirror a full Debian mirror carrying arm64 (some mirrors carry only amd64)? Or give the .deb files with --kernel-deb/--busybox-deb"
    )]
    NoPackage { package: String, suites: String },
    /// Something the mirror sent that does not have Debian's format.
    #[error("{what}: {detail}")]
    Malformed { what: String, detail: String },
    /// The keyring in the repository does not parse.
    #[error("the archive keyring in firmware/keyring is unusable: {detail}")]
    Keyring { detail: String },
    /// A cache file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A Debian archive (the directory holding `dists/` and `pool/`) and the suites to read in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// E.g. `https://HOST/debian`, without a trailing slash.
    pub url: String,
    /// E.g. `bookworm`.
    pub suite: String,
}

/// The mirrors of the guest's packages: the main archive and the security archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// The Debian archive, e.g. `https://HOST/debian`.
    pub debian: String,
    /// The security archive, e.g. `https://HOST/debian-security`.
    pub security: String,
}

impl Mirror {
    /// `debian` and its security archive: `security` if given, otherwise the sibling
    /// `<debian>-security` directory (the layout of Debian's own mirror network, where
    /// `.../debian` and `.../debian-security` sit side by side).
    pub fn new(debian: &str, security: Option<&str>) -> Self {
        let debian = debian.trim_end_matches('/').to_string();
        let security = match security {
            Some(s) => s.trim_end_matches('/').to_string(),
            None => format!("{debian}-security"),
        };
        Self { debian, security }
    }

    /// `--mirror`/`--security-mirror`, or else [`MIRROR_ENV`]/[`SECURITY_MIRROR_ENV`].
    pub fn from_args_or_env(mirror: Option<&str>, security: Option<&str>) -> Option<Self> {
        let env = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        let debian = mirror.map(str::to_string).or_else(|| env(MIRROR_ENV))?;
        let security = security
            .map(str::to_string)
            .or_else(|| env(SECURITY_MIRROR_ENV));
        Some(Self::new(&debian, security.as_deref()))
    }

    /// The suites the guest's packages are resolved across.
    pub fn sources(&self) -> Vec<Source> {
        vec![
            Source {
                url: self.debian.clone(),
                suite: SUITE.to_string(),
            },
            Source {
                url: self.security.clone(),
                suite: SECURITY_SUITE.to_string(),
            },
        ]
    }
}

/// A verified `.deb` in the cache.
#[derive(Debug, Clone)]
pub struct FetchedDeb {
    /// Package name and version, e.g. `busybox-static 1:1.35.0-4+b3`.
    pub package: String,
    /// The file, under `<cache>/fetch/sha256/<hash>/`.
    pub path: PathBuf,
}

/// The fetcher: an HTTP layer, the cache directory, the keyring.
#[derive(Debug)]
pub struct Fetcher<H: Http> {
    http: H,
    root: PathBuf,
    keyring: Keyring,
    refresh: bool,
    now: SystemTime,
}

impl<H: Http> Fetcher<H> {
    /// A fetcher caching under `<cache>/fetch`. With `refresh`, the `InRelease` files are
    /// asked for again even if cached.
    pub fn new(http: H, cache: &Path, keyring: Keyring, refresh: bool) -> Self {
        Self {
            http,
            root: cache.join("fetch"),
            keyring,
            refresh,
            now: SystemTime::now(),
        }
    }

    /// The clock used for `Valid-Until` (tests set it).
    pub fn set_now(&mut self, now: SystemTime) {
        self.now = now;
    }

    /// The HTTP layer.
    pub fn http(&self) -> &H {
        &self.http
    }

    /// Loads the arm64 indexes of `sources` (from the cache or the mirror), verified.
    pub fn index(&self, sources: &[Source]) -> Result<Index, FetchError> {
        let mut index = Index::default();
        for source in sources {
            let release = self.release(source)?;
            let path = "main/binary-arm64/Packages.xz";
            let what = format!("{}/dists/{}/{path}", source.url, source.suite);
            let (size, hash) = release.file(path).ok_or_else(|| FetchError::NoPackage {
                package: format!("index ({path} is not in its InRelease)"),
                suites: format!("{} at {}", source.suite, source.url),
            })?;
            let url = if release.by_hash {
                format!(
                    "{}/dists/{}/main/binary-arm64/by-hash/SHA256/{hash}",
                    source.url, source.suite
                )
            } else {
                what.clone()
            };
            let file = self.by_hash(&url, &what, "Packages.xz", size, hash)?;
            let text = xz_text(&file).map_err(|e| FetchError::Malformed {
                what: what.clone(),
                detail: format!("cannot decompress: {e}"),
            })?;
            let packages = parse_packages(&text, &source.suite);
            if packages.is_empty() {
                return Err(FetchError::Malformed {
                    what,
                    detail: "the index lists no packages".into(),
                });
            }
            index.packages.extend(packages);
        }
        Ok(index)
    }

    /// The verified `.deb` of `package`, from the mirror of the suite whose index listed it.
    pub fn deb(&self, sources: &[Source], package: &Package) -> Result<FetchedDeb, FetchError> {
        let source = sources
            .iter()
            .find(|s| s.suite == package.suite)
            .ok_or_else(|| FetchError::NoPackage {
                package: format!("{} {}", package.name, package.version),
                suites: format!("the sources given (none is {})", package.suite),
            })?;
        let url = format!("{}/{}", source.url, package.filename);
        let name = package
            .filename
            .rsplit('/')
            .next()
            .filter(|n| n.ends_with(".deb"))
            .ok_or_else(|| FetchError::Malformed {
                what: format!("{} {}", package.name, package.version),
                detail: format!("odd file name {}", package.filename),
            })?;
        let path = self.by_hash(&url, &url, name, package.size, &package.sha256)?;
        Ok(FetchedDeb {
            package: format!("{} {}", package.name, package.version),
            path,
        })
    }

    /// The guest's kernel and busybox packages (`linux-image-arm64`, resolved as apt does, and
    /// `busybox-static`): resolved across `sources`, downloaded and verified.
    pub fn guest_debs(&self, sources: &[Source]) -> Result<(FetchedDeb, FetchedDeb), FetchError> {
        let index = self.index(sources)?;
        let suites = sources
            .iter()
            .map(|s| format!("{} at {}", s.suite, s.url))
            .collect::<Vec<_>>()
            .join(", ");
        let kernel = index.resolve_kernel(KERNEL_METAPACKAGE, &suites)?;
        progress(format!(
            "{KERNEL_METAPACKAGE} is {} {} ({})",
            kernel.name, kernel.version, kernel.suite
        ));
        let busybox = index.require(BUSYBOX_PACKAGE, &suites)?;
        progress(format!(
            "{BUSYBOX_PACKAGE} is {} ({})",
            busybox.version, busybox.suite
        ));
        Ok((self.deb(sources, kernel)?, self.deb(sources, busybox)?))
    }

    /// The verified Release of `source`: the cached `InRelease` unless refreshing or absent.
    fn release(&self, source: &Source) -> Result<Release, FetchError> {
        let dir = self.root.join("dists").join(&source.suite);
        let cached = dir.join("InRelease");
        let url = format!("{}/dists/{}/InRelease", source.url, source.suite);
        let old = match fs::read_to_string(&cached) {
            Ok(text) => {
                let what = format!("{} (cached)", cached.display());
                match self.check_release(&what, &text, &source.suite) {
                    Ok(release) if !self.refresh => return Ok(release),
                    Ok(release) => Some(release),
                    // A cache damaged on disk, or written with another keyring: ask again.
                    Err(e) => {
                        progress(format!("{e}: fetching it again"));
                        fs::remove_file(&cached).map_err(io_err(&cached))?;
                        None
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => None,
            Err(e) => return Err(io_err(&cached)(e)),
        };
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let partial = Partial::new(&cached);
        let got = self.download(&url, MAX_INRELEASE, partial.path(), &mut |_| {})?;
        let text = fs::read_to_string(partial.path()).map_err(|_| FetchError::Malformed {
            what: url.clone(),
            detail: format!("not text ({got} bytes)"),
        })?;
        let release = self.check_release(&url, &text, &source.suite)?;
        let now = self
            .now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if let Some(until) = release.valid_until
            && until < now
        {
            return Err(FetchError::Stale {
                what: url,
                detail: format!("its signed Valid-Until passed {} s ago", now - until),
            });
        }
        if let Some(old) = old
            && let (Some(before), Some(after)) = (old.date, release.date)
            && after < before
        {
            return Err(FetchError::Stale {
                what: url,
                detail: format!("dated {} s before the cached copy", before - after),
            });
        }
        partial.commit()?;
        Ok(release)
    }

    fn check_release(&self, what: &str, text: &str, suite: &str) -> Result<Release, FetchError> {
        let signed = self.keyring.verify(what, text)?;
        let release = Release::parse(&signed);
        if release.codename != suite && release.suite != suite {
            return Err(FetchError::WrongSuite {
                what: what.to_string(),
                found: release.codename,
                expected: suite.to_string(),
            });
        }
        Ok(release)
    }

    /// `<root>/sha256/<hash>/<name>`, downloaded from `url` if absent, with its size and
    /// SHA-256 checked (again, for a cached file: a cache must not hide a damaged file).
    fn by_hash(
        &self,
        url: &str,
        what: &str,
        name: &str,
        size: u64,
        hash: &str,
    ) -> Result<PathBuf, FetchError> {
        let dir = self.root.join("sha256").join(hash);
        let path = dir.join(name);
        if path.exists() {
            match check_file(&path, what, size, hash) {
                Ok(()) => return Ok(path),
                Err(FetchError::HashMismatch { .. }) => {
                    progress(format!(
                        "{} is damaged (SHA-256 differs): fetching it again",
                        path.display()
                    ));
                    fs::remove_file(&path).map_err(io_err(&path))?;
                }
                Err(e) => return Err(e),
            }
        }
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let partial = Partial::new(&path);
        let mut hasher = Sha256::new();
        let got = self.download(url, size, partial.path(), &mut |chunk| hasher.update(chunk))?;
        let actual = hex(&hasher.finalize());
        if got != size || actual != hash {
            return Err(FetchError::HashMismatch {
                what: what.to_string(),
                expected: format!("{hash} ({size} bytes)"),
                actual: format!("{actual} ({got} bytes)"),
            });
        }
        partial.commit()?;
        Ok(path)
    }

    /// Downloads `url` (at most `limit` bytes) into `dest`, feeding each chunk to `seen`, with
    /// a progress line before and after.
    fn download(
        &self,
        url: &str,
        limit: u64,
        dest: &Path,
        seen: &mut dyn FnMut(&[u8]),
    ) -> Result<u64, FetchError> {
        if limit != MAX_INRELEASE {
            progress(format!("downloading {url} ({})", size(limit)));
        }
        let start = Instant::now();
        let file = fs::File::create(dest).map_err(io_err(dest))?;
        let mut sink = Sink {
            file: io::BufWriter::new(file),
            seen,
        };
        let got = self.http.get(url, limit, &mut sink)?;
        sink.file
            .into_inner()
            .map_err(|e| io_err(dest)(e.into_error()))?
            .sync_all()
            .map_err(io_err(dest))?;
        let secs = start.elapsed().as_secs_f64().max(1e-3);
        progress(format!(
            "fetched {url}: {} in {secs:.1} s ({}/s)",
            size(got),
            size((got as f64 / secs) as u64)
        ));
        Ok(got)
    }
}

/// Fetches and verifies the guest's kernel and busybox `.deb` files from `mirror` through
/// `ureq`, with Debian's keyring, caching under `cache`. A failed download of a file named by
/// cached indexes (Debian removes superseded packages) is retried once with fresh indexes.
pub fn fetch_guest_debs(
    cache: &Path,
    mirror: &Mirror,
    refresh: bool,
) -> Result<(FetchedDeb, FetchedDeb), FetchError> {
    let keyring = Keyring::debian()?;
    let fetcher = Fetcher::new(UreqHttp::new(), cache, keyring.clone(), refresh);
    match fetcher.guest_debs(&mirror.sources()) {
        Err(FetchError::Status { url, status: 404 }) if !refresh => {
            progress(format!(
                "{url} is gone from the mirror (the cached indexes are old): refreshing them"
            ));
            Fetcher::new(UreqHttp::new(), cache, keyring, true).guest_debs(&mirror.sources())
        }
        other => other,
    }
}

/// A file being downloaded: `<dest>.partial`, removed unless committed (renamed to `dest`).
struct Partial {
    tmp: PathBuf,
    dest: PathBuf,
    done: bool,
}

impl Partial {
    fn new(dest: &Path) -> Self {
        let mut tmp = dest.as_os_str().to_owned();
        tmp.push(".partial");
        Self {
            tmp: tmp.into(),
            dest: dest.to_path_buf(),
            done: false,
        }
    }

    fn path(&self) -> &Path {
        &self.tmp
    }

    fn commit(mut self) -> Result<(), FetchError> {
        fs::rename(&self.tmp, &self.dest).map_err(io_err(&self.dest))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// A writer that also shows each chunk to a hasher.
struct Sink<'a> {
    file: io::BufWriter<fs::File>,
    seen: &'a mut dyn FnMut(&[u8]),
}

impl Write for Sink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        (self.seen)(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

fn check_file(path: &Path, what: &str, size: u64, hash: &str) -> Result<(), FetchError> {
    let mut file = fs::File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let got = io::copy(&mut file, &mut hasher).map_err(io_err(path))?;
    let actual = hex(&hasher.finalize());
    if got != size || actual != hash {
        return Err(FetchError::HashMismatch {
            what: what.to_string(),
            expected: format!("{hash} ({size} bytes)"),
            actual: format!("{actual} ({got} bytes)"),
        });
    }
    Ok(())
}

fn xz_text(path: &Path) -> io::Result<String> {
    let file = fs::File::open(path)?;
    let mut text = String::new();
    io::Read::read_to_string(
        &mut lzma_rust2::XzReader::new(io::BufReader::new(file), true),
        &mut text,
    )?;
    Ok(text)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn size(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MB", bytes as f64 / 1e6)
    } else {
        format!("{:.0} KB", bytes as f64 / 1e3)
    }
}

#[cfg(test)]
mod tests;
