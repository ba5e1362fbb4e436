//! The fetcher against a fake mirror that the tests build: signed with a throwaway key,
//! served by an [`Http`] that counts requests.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use pgp::composed::{
    CleartextSignedMessage, EncryptionCaps, KeyType, SecretKeyParamsBuilder, SignedPublicKey,
    SignedSecretKey, SubkeyParamsBuilder,
};
use pgp::types::{KeyDetails, Password};
use sha2::{Digest, Sha256};

use super::*;

const MIRROR: &str = "http://mirror.test/debian";
const SECURITY: &str = "http://mirror.test/debian-security";

/// A throwaway key: with `subkey`, a certify-only primary and a signing subkey (as Debian's
/// archive keys are), otherwise a primary that signs.
fn keygen(subkey: bool) -> SignedSecretKey {
    let mut sign = SubkeyParamsBuilder::default();
    sign.key_type(KeyType::Ed25519Legacy)
        .can_sign(true)
        .can_encrypt(EncryptionCaps::None)
        .can_authenticate(false);
    let mut params = SecretKeyParamsBuilder::default();
    params
        .key_type(KeyType::Ed25519Legacy)
        .can_certify(true)
        .can_sign(!subkey)
        .can_encrypt(EncryptionCaps::None)
        .primary_user_id("Throwaway Test Archive Key <test@invalid>".into());
    if subkey {
        params.subkeys(vec![sign.build().unwrap()]);
    }
    params
        .build()
        .unwrap()
        .generate(rand::thread_rng())
        .unwrap()
}

fn sign(key: &SignedSecretKey, text: &str) -> String {
    let pw = Password::empty();
    let msg = match key.secret_subkeys.first() {
        Some(sub) => CleartextSignedMessage::sign(rand::thread_rng(), text, &sub.key, &pw),
        None => CleartextSignedMessage::sign(rand::thread_rng(), text, &key.primary_key, &pw),
    };
    msg.unwrap().to_armored_string(Default::default()).unwrap()
}

fn sha256(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn xz(data: &[u8]) -> Vec<u8> {
    let mut w =
        lzma_rust2::XzWriter::new(Vec::new(), lzma_rust2::XzOptions::with_preset(1)).unwrap();
    w.write_all(data).unwrap();
    w.finish().unwrap()
}

/// An [`Http`] serving a map of URLs, counting every request.
#[derive(Default)]
struct FakeMirror {
    files: RefCell<HashMap<String, Vec<u8>>>,
    requests: RefCell<Vec<String>>,
}

impl FakeMirror {
    fn put(&self, url: &str, data: impl Into<Vec<u8>>) {
        self.files.borrow_mut().insert(url.to_string(), data.into());
    }
    fn requests(&self) -> usize {
        self.requests.borrow().len()
    }
}

impl Http for &FakeMirror {
    fn get(&self, url: &str, limit: u64, out: &mut dyn Write) -> Result<u64, FetchError> {
        self.requests.borrow_mut().push(url.to_string());
        let files = self.files.borrow();
        let data = files.get(url).ok_or_else(|| FetchError::Status {
            url: url.to_string(),
            status: 404,
        })?;
        if data.len() as u64 > limit {
            return Err(FetchError::Malformed {
                what: url.to_string(),
                detail: "too long".into(),
            });
        }
        out.write_all(data).unwrap();
        Ok(data.len() as u64)
    }
}

const KERNEL_DEB: &[u8] = b"!<arch>\nthe kernel package of the test";
const NEW_KERNEL_DEB: &[u8] = b"!<arch>\nthe security update of the kernel";
const BUSYBOX_DEB: &[u8] = b"!<arch>\nthe busybox package of the test";

fn stanza(name: &str, version: &str, depends: &str, deb: &[u8]) -> String {
    format!(
        "Package: {name}\nVersion: {version}\nArchitecture: arm64\nDepends: {depends}\n\
         Filename: pool/main/x/{name}_{version}_arm64.deb\nSize: {}\nSHA256: {}\n\
         Description: test\n",
        deb.len(),
        sha256(deb)
    )
}

fn release(codename: &str, packages_xz: &[u8], valid_until: Option<&str>) -> String {
    let mut text = format!(
        "Origin: Debian\nSuite: test-{codename}\nCodename: {codename}\n\
         Date: Sat, 28 Nov 2026 02:53:00 UTC\nArchitectures: arm64\nComponents: main\n"
    );
    if let Some(v) = valid_until {
        text += &format!("Valid-Until: {v}\n");
    }
    text += &format!(
        "SHA256:\n {} {} main/binary-arm64/Packages.xz\n",
        sha256(packages_xz),
        packages_xz.len()
    );
    text
}

/// Puts a bookworm and a bookworm-security suite on `mirror`, signed by `key`: the security
/// suite carries a newer kernel metapackage and its kernel.
fn publish(mirror: &FakeMirror, key: &SignedSecretKey) {
    let main = format!(
        "{}\n{}\n{}\n",
        stanza(
            "linux-image-arm64",
            "6.1.1-1",
            "linux-image-6.1.0-1-arm64 (= 6.1.1-1)",
            b"meta"
        ),
        stanza("linux-image-6.1.0-1-arm64", "6.1.1-1", "kmod", KERNEL_DEB),
        stanza("busybox-static", "1:1.35.0-4+b3", "", BUSYBOX_DEB),
    );
    let security = format!(
        "{}\n{}\n",
        stanza(
            "linux-image-arm64",
            "6.1.2-1",
            "linux-image-6.1.0-2-arm64 (= 6.1.2-1)",
            b"meta2"
        ),
        stanza(
            "linux-image-6.1.0-2-arm64",
            "6.1.2-1",
            "kmod",
            NEW_KERNEL_DEB
        ),
    );
    for (url, suite, packages) in [(MIRROR, SUITE, main), (SECURITY, SECURITY_SUITE, security)] {
        let xz = xz(packages.as_bytes());
        let until = (suite == SECURITY_SUITE).then_some("Sat, 05 Dec 2026 02:53:00 UTC");
        mirror.put(
            &format!("{url}/dists/{suite}/InRelease"),
            sign(key, &release(suite, &xz, until)),
        );
        mirror.put(
            &format!("{url}/dists/{suite}/main/binary-arm64/Packages.xz"),
            xz,
        );
    }
    mirror.put(
        &format!("{SECURITY}/pool/main/x/linux-image-6.1.0-2-arm64_6.1.2-1_arm64.deb"),
        NEW_KERNEL_DEB,
    );
    mirror.put(
        &format!("{MIRROR}/pool/main/x/linux-image-6.1.0-1-arm64_6.1.1-1_arm64.deb"),
        KERNEL_DEB,
    );
    mirror.put(
        &format!("{MIRROR}/pool/main/x/busybox-static_1:1.35.0-4+b3_arm64.deb"),
        BUSYBOX_DEB,
    );
}

fn fetcher<'a>(
    mirror: &'a FakeMirror,
    cache: &Path,
    key: &SignedSecretKey,
) -> Fetcher<&'a FakeMirror> {
    let public = SignedPublicKey::from(key.clone());
    let mut f = Fetcher::new(mirror, cache, Keyring::from_keys(vec![public]), false);
    // Two days after the fixtures' Date, before the security suite's Valid-Until.
    f.set_now(UNIX_EPOCH + Duration::from_secs(1_795_834_380 + 2 * 86_400));
    f
}

fn sources() -> Vec<Source> {
    Mirror::new(MIRROR, None).sources()
}

fn temp_cache(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("firmware-fetch-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

/// Every file under `dir`, relative.
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn guest_packages_are_fetched_verified_and_a_second_run_is_offline() {
    let key = keygen(true);
    let mirror = FakeMirror::default();
    publish(&mirror, &key);
    let cache = temp_cache("offline");

    let (kernel, busybox) = fetcher(&mirror, &cache, &key)
        .guest_debs(&sources())
        .unwrap();
    // apt's choice: the security suite's newer metapackage, and the kernel it names.
    assert_eq!(kernel.package, "linux-image-6.1.0-2-arm64 6.1.2-1");
    assert_eq!(fs::read(&kernel.path).unwrap(), NEW_KERNEL_DEB);
    assert_eq!(fs::read(&busybox.path).unwrap(), BUSYBOX_DEB);
    assert!(
        kernel
            .path
            .starts_with(cache.join("fetch/sha256").join(sha256(NEW_KERNEL_DEB)))
    );
    // 2 InRelease, 2 Packages.xz, 2 .deb.
    assert_eq!(mirror.requests(), 6, "{:?}", mirror.requests.borrow());
    assert!(!files(&cache).iter().any(|f| f.ends_with(".partial")));

    // The second run: everything from the cache, no request at all.
    let again = fetcher(&mirror, &cache, &key)
        .guest_debs(&sources())
        .unwrap();
    assert_eq!(again.0.path, kernel.path);
    assert_eq!(again.1.path, busybox.path);
    assert_eq!(mirror.requests(), 6, "the second run asked the mirror");

    // A cached InRelease damaged on disk is fetched again, not trusted.
    let cached = cache.join("fetch/dists").join(SUITE).join("InRelease");
    let text = fs::read_to_string(&cached).unwrap();
    fs::write(
        &cached,
        text.replacen("Origin: Debian", "Origin: Debiam", 1),
    )
    .unwrap();
    fetcher(&mirror, &cache, &key)
        .guest_debs(&sources())
        .unwrap();
    assert_eq!(mirror.requests(), 7, "{:?}", mirror.requests.borrow());
    assert_eq!(fs::read_to_string(&cached).unwrap(), text);

    // A cached .deb damaged on disk is noticed and fetched again.
    fs::write(&busybox.path, b"damaged").unwrap();
    let third = fetcher(&mirror, &cache, &key)
        .guest_debs(&sources())
        .unwrap();
    assert_eq!(fs::read(&third.1.path).unwrap(), BUSYBOX_DEB);
    assert_eq!(mirror.requests(), 8);
    let _ = fs::remove_dir_all(&cache);
}

#[test]
fn an_index_changed_after_signing_is_refused() {
    let key = keygen(true);
    let mirror = FakeMirror::default();
    publish(&mirror, &key);
    let url = format!("{MIRROR}/dists/{SUITE}/main/binary-arm64/Packages.xz");
    let evil = stanza("busybox-static", "1:9.9-9", "", b"evil");
    mirror.put(&url, xz(evil.as_bytes()));
    let cache = temp_cache("index");
    let err = fetcher(&mirror, &cache, &key)
        .guest_debs(&sources())
        .unwrap_err();
    assert!(
        matches!(err, FetchError::HashMismatch { ref what, .. } if what.contains("Packages.xz")),
        "{err}"
    );
    assert!(
        !files(&cache)
            .iter()
            .any(|f| f.contains("partial") || f.ends_with("Packages.xz")),
        "{:?}",
        files(&cache)
    );
    let _ = fs::remove_dir_all(&cache);
}

#[test]
fn a_package_changed_after_indexing_is_refused() {
    let key = keygen(true);
    let mirror = FakeMirror::default();
    publish(&mirror, &key);
    let url = format!("{MIRROR}/pool/main/x/busybox-static_1:1.35.0-4+b3_arm64.deb");
    // Same length, other bytes.
    let mut evil = BUSYBOX_DEB.to_vec();
    *evil.last_mut().unwrap() ^= 1;
    mirror.put(&url, evil);
    let cache = temp_cache("deb");
    let err = fetcher(&mirror, &cache, &key)
        .guest_debs(&sources())
        .unwrap_err();
    assert!(
        matches!(err, FetchError::HashMismatch { ref what, .. } if what.ends_with(".deb")),
        "{err}"
    );
    let left = files(&cache);
    assert!(
        !left
            .iter()
            .any(|f| f.contains("busybox") || f.contains("partial")),
        "{left:?}"
    );
    let _ = fs::remove_dir_all(&cache);
}

#[test]
fn a_changed_inrelease_is_refused_as_a_bad_signature() {
    let key = keygen(true);
    let mirror = FakeMirror::default();
    publish(&mirror, &key);
    let url = format!("{MIRROR}/dists/{SUITE}/InRelease");
    let signed = String::from_utf8(mirror.files.borrow()[&url].clone()).unwrap();
    // Point the index hash elsewhere; the signature stays.
    let tampered = signed.replacen("Origin: Debian", "Origin: Debiam", 1);
    assert_ne!(tampered, signed);
    mirror.put(&url, tampered);
    let cache = temp_cache("sig");
    let err = fetcher(&mirror, &cache, &key)
        .guest_debs(&sources())
        .unwrap_err();
    assert!(matches!(err, FetchError::BadSignature { .. }), "{err}");
    assert!(files(&cache).is_empty(), "{:?}", files(&cache));

    // Unsigned text is refused too.
    mirror.put(&url, release(SUITE, b"", None));
    let err = fetcher(&mirror, &cache, &key)
        .guest_debs(&sources())
        .unwrap_err();
    assert!(matches!(err, FetchError::BadSignature { .. }), "{err}");
    let _ = fs::remove_dir_all(&cache);
}

#[test]
fn a_signature_by_an_unknown_key_is_refused() {
    let key = keygen(true);
    let stranger = keygen(false);
    let mirror = FakeMirror::default();
    publish(&mirror, &stranger);
    let cache = temp_cache("unknown");
    let err = fetcher(&mirror, &cache, &key)
        .guest_debs(&sources())
        .unwrap_err();
    let FetchError::UnknownKey { issuers, .. } = &err else {
        panic!("{err}");
    };
    let fpr = hex(stranger.primary_key.fingerprint().as_bytes()).to_uppercase();
    assert!(issuers.contains(&fpr), "{issuers} lacks {fpr}");
    assert!(files(&cache).is_empty(), "{:?}", files(&cache));
    let _ = fs::remove_dir_all(&cache);
}

#[test]
fn stale_and_misplaced_inreleases_are_refused() {
    let key = keygen(true);
    let mirror = FakeMirror::default();
    publish(&mirror, &key);
    let cache = temp_cache("stale");
    // Past the security suite's signed Valid-Until.
    let mut f = fetcher(&mirror, &cache, &key);
    f.set_now(UNIX_EPOCH + Duration::from_secs(1_795_834_380 + 30 * 86_400));
    let err = f.guest_debs(&sources()).unwrap_err();
    assert!(
        matches!(err, FetchError::Stale { ref what, .. } if what.contains(SECURITY_SUITE)),
        "{err}"
    );

    // bookworm's signed InRelease served as bookworm-security's.
    let main = mirror.files.borrow()[&format!("{MIRROR}/dists/{SUITE}/InRelease")].clone();
    mirror.put(
        &format!("{SECURITY}/dists/{SECURITY_SUITE}/InRelease"),
        main,
    );
    let err = fetcher(&mirror, &cache, &key)
        .guest_debs(&sources())
        .unwrap_err();
    assert!(matches!(err, FetchError::WrongSuite { .. }), "{err}");
    let _ = fs::remove_dir_all(&cache);
}

#[test]
fn a_refresh_that_goes_back_in_time_is_refused() {
    let key = keygen(true);
    let mirror = FakeMirror::default();
    publish(&mirror, &key);
    let cache = temp_cache("rollback");
    fetcher(&mirror, &cache, &key)
        .guest_debs(&sources())
        .unwrap();
    // The mirror now serves an older (validly signed) bookworm InRelease.
    let url = format!("{MIRROR}/dists/{SUITE}/InRelease");
    let old = release(SUITE, b"", None).replace("28 Nov 2026", "01 Nov 2026");
    mirror.put(&url, sign(&key, &old));
    let public = SignedPublicKey::from(key.clone());
    let mut f = Fetcher::new(&mirror, &cache, Keyring::from_keys(vec![public]), true);
    f.set_now(UNIX_EPOCH + Duration::from_secs(1_795_834_380 + 2 * 86_400));
    let err = f.guest_debs(&sources()).unwrap_err();
    assert!(
        matches!(err, FetchError::Stale { ref detail, .. } if detail.contains("before the cached")),
        "{err}"
    );
    // The cached copy stays the newer one.
    let cached =
        fs::read_to_string(cache.join("fetch/dists").join(SUITE).join("InRelease")).unwrap();
    assert!(cached.contains("28 Nov 2026"));
    let _ = fs::remove_dir_all(&cache);
}

#[test]
fn a_suite_without_an_arm64_kernel_says_so() {
    let key = keygen(true);
    let mirror = FakeMirror::default();
    let packages = stanza("busybox-static", "1:1.35.0-4+b3", "", BUSYBOX_DEB);
    for (url, suite) in [(MIRROR, SUITE), (SECURITY, SECURITY_SUITE)] {
        let xz = xz(packages.as_bytes());
        mirror.put(
            &format!("{url}/dists/{suite}/InRelease"),
            sign(&key, &release(suite, &xz, None)),
        );
        mirror.put(
            &format!("{url}/dists/{suite}/main/binary-arm64/Packages.xz"),
            xz,
        );
    }
    let cache = temp_cache("nokernel");
    let err = fetcher(&mirror, &cache, &key)
        .guest_debs(&sources())
        .unwrap_err();
    assert!(
        matches!(err, FetchError::NoPackage { ref package, .. } if package == KERNEL_METAPACKAGE),
        "{err}"
    );
    let _ = fs::remove_dir_all(&cache);
}

#[test]
fn debians_keyring_parses_with_its_signing_subkeys() {
    let fprs = Keyring::debian().unwrap().fingerprints();
    // `gpg --show-keys --with-subkey-fingerprints firmware/keyring/*.asc`
    for fpr in [
        "B8B80B5B623EAB6AD8775C45B7C5D7D6350947F8",
        "4CB50190207B4758A3F73A796ED0E7B82643E131",
        "05AB90340C0C5E797F44A8C8254CF3B5AEC0A8F0",
        "B0CAB9266E8C3929798B3EEEBDE6D2B9216EC7A8",
        "4D64FEC119C2029067D6E791F8D2585B8783D481",
    ] {
        assert!(fprs.iter().any(|f| f == fpr), "{fpr} missing from {fprs:?}");
    }
}
