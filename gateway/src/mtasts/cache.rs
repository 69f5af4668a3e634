//! The policy cache on disk: `<spool.dir>/mta-sts/<domain>.policy`, one file per
//! recipient domain (RFC 8461 section 5.1: policies are cached per policy domain).
//!
//! Each file is a postcard record written atomically: a temporary file is written
//! and fsynced, renamed over the old one, and the directory fsynced, so a crash
//! leaves either the old or the new policy, never a torn one. Unreadable files are
//! skipped with a warning at load (the domain's policy is then fetched anew).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::policy::{valid_host_name, Policy};

/// The directory below the data directory.
pub const CACHE_DIR: &str = "mta-sts";
const SUFFIX: &str = ".policy";
/// Bumped whenever the record layout changes; older files are ignored.
const FORMAT: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{0:?} is not a domain name")]
    BadDomain(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot encode the cached policy: {0}")]
    Encode(String),
}

/// One domain's cached policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedPolicy {
    /// The recipient (policy) domain, normalised. The cache key: a policy is never
    /// applied to any other domain, even one sharing its MX hosts.
    pub domain: String,
    /// The `id` of the TXT record the policy was fetched for.
    pub id: String,
    pub policy: Policy,
    /// When the policy was fetched (seconds since the Unix epoch).
    pub fetched_at: u64,
}

impl CachedPolicy {
    pub fn fetched_at_time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.fetched_at)
    }

    /// The end of the policy's life: fetched_at + max_age.
    pub fn expires_at(&self) -> SystemTime {
        self.fetched_at_time() + self.policy.max_age()
    }

    pub fn is_expired(&self, now: SystemTime) -> bool {
        now >= self.expires_at()
    }

    /// Refresh ahead of time (section 10.2 recommends refreshing before expiry, so
    /// a policy never lapses while its host is briefly unreachable): once less than
    /// a quarter of max_age, and at most one day, is left.
    pub fn needs_refresh(&self, now: SystemTime) -> bool {
        let margin = (self.policy.max_age() / 4).min(Duration::from_secs(86_400));
        match self.expires_at().duration_since(now) {
            Ok(left) => left < margin || left.is_zero(),
            Err(_) => true,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    format: u8,
    entry: CachedPolicy,
}

/// Turn a domain as given (any case, trailing dot, U-labels) into the cache key:
/// lower-case A-labels without trailing dot. Refuses anything that is not a host
/// name, so a key can never name a path outside the cache directory.
pub fn normalize_domain(domain: &str) -> Result<String, CacheError> {
    let bad = || CacheError::BadDomain(domain.to_string());
    let d = domain.trim_end_matches('.');
    let ascii = if d.is_ascii() {
        d.to_ascii_lowercase()
    } else {
        hickory_resolver::proto::rr::Name::from_utf8(d)
            .map_err(|_| bad())?
            .to_ascii()
            .trim_end_matches('.')
            .to_ascii_lowercase()
    };
    if !valid_host_name(&ascii) || !ascii.contains('.') {
        return Err(bad());
    }
    Ok(ascii)
}

/// The cache directory of a data directory.
pub fn cache_dir(spool_dir: &Path) -> PathBuf {
    spool_dir.join(CACHE_DIR)
}

fn file_of(dir: &Path, domain: &str) -> PathBuf {
    dir.join(format!("{domain}{SUFFIX}"))
}

/// The files of the cache directory.
#[derive(Debug, Clone)]
pub(crate) struct DiskCache {
    dir: PathBuf,
}

impl DiskCache {
    /// Create the directory if needed.
    pub(crate) fn open(dir: PathBuf) -> Result<DiskCache, CacheError> {
        fs::create_dir_all(&dir).map_err(|source| CacheError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(DiskCache { dir })
    }

    /// Every readable, unexpired entry. Expired files are removed.
    pub(crate) fn load_all(&self, now: SystemTime) -> Vec<CachedPolicy> {
        let mut out = Vec::new();
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), "cannot read the MTA-STS cache: {e}");
                return out;
            }
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(domain) = name.to_str().and_then(|n| n.strip_suffix(SUFFIX)) else {
                continue;
            };
            match self.load(domain) {
                Ok(Some(c)) if c.is_expired(now) => {
                    tracing::info!(domain, "cached MTA-STS policy expired; removed");
                    let _ = self.remove(domain);
                }
                Ok(Some(c)) => out.push(c),
                Ok(None) => {}
                Err(e) => tracing::warn!(domain, "cached MTA-STS policy ignored: {e}"),
            }
        }
        out
    }

    /// One domain's entry, `None` if there is none or it is unusable.
    pub(crate) fn load(&self, domain: &str) -> Result<Option<CachedPolicy>, CacheError> {
        let path = file_of(&self.dir, domain);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CacheError::Io { path, source }),
        };
        match postcard::from_bytes::<OnDisk>(&bytes) {
            // The key inside must be the file's name: never apply a policy to a
            // domain it was not fetched for.
            Ok(d) if d.format == FORMAT && d.entry.domain == domain => Ok(Some(d.entry)),
            Ok(_) => {
                tracing::warn!(domain, path = %path.display(), "cache file of another format or domain ignored");
                Ok(None)
            }
            Err(e) => {
                tracing::warn!(domain, path = %path.display(), "unreadable cache file ignored: {e}");
                Ok(None)
            }
        }
    }

    /// Whether a file for the domain exists (an admin may have purged it).
    pub(crate) fn exists(&self, domain: &str) -> bool {
        file_of(&self.dir, domain).exists()
    }

    /// Write atomically: temp file, fsync, rename, fsync the directory.
    pub(crate) fn store(&self, entry: &CachedPolicy) -> Result<(), CacheError> {
        let bytes = postcard::to_stdvec(&OnDisk {
            format: FORMAT,
            entry: entry.clone(),
        })
        .map_err(|e| CacheError::Encode(e.to_string()))?;
        let path = file_of(&self.dir, &entry.domain);
        let tmp = self.dir.join(format!(".{}{SUFFIX}.tmp", entry.domain));
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| CacheError::Io { path, source }
        };
        {
            let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
            f.write_all(&bytes).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
        }
        fs::rename(&tmp, &path).map_err(io(&path))?;
        sync_dir(&self.dir)
    }

    /// Remove a domain's file; `Ok(false)` if there was none.
    pub(crate) fn remove(&self, domain: &str) -> Result<bool, CacheError> {
        remove_file(&self.dir, domain)
    }
}

fn remove_file(dir: &Path, domain: &str) -> Result<bool, CacheError> {
    let path = file_of(dir, domain);
    match fs::remove_file(&path) {
        Ok(()) => {
            sync_dir(dir)?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(CacheError::Io { path, source }),
    }
}

fn sync_dir(dir: &Path) -> Result<(), CacheError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| CacheError::Io {
            path: dir.to_owned(),
            source,
        })
}

/// Remove a domain's cached policy straight from the cache directory of a data
/// directory, without a running daemon's help (what `qrelay mta-sts purge` does).
///
/// This is safe while the relay runs: a file is only ever replaced by rename, so
/// the removal never meets a half-written file, and the relay checks that a
/// domain's file still exists before it uses the policy it holds in memory, so it
/// forgets the policy at its next lookup for that domain and fetches it anew.
/// Returns whether there was a cached policy.
pub fn purge_cached(spool_dir: &Path, domain: &str) -> Result<bool, CacheError> {
    let domain = normalize_domain(domain)?;
    remove_file(&cache_dir(spool_dir), &domain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mtasts::policy::Mode;

    fn entry(domain: &str, max_age: u32, fetched_at: u64) -> CachedPolicy {
        CachedPolicy {
            domain: domain.into(),
            id: "1".into(),
            policy: Policy {
                mode: Mode::Enforce,
                max_age,
                mx: vec!["mx.example.com".into()],
            },
            fetched_at,
        }
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn e4_refresh_ahead_of_expiry() {
        // One week: refresh during the last day.
        let e = entry("example.com", 7 * 86_400, 1_000_000);
        assert!(!e.needs_refresh(at(1_000_000 + 5 * 86_400)));
        assert!(e.needs_refresh(at(1_000_000 + 6 * 86_400 + 1)));
        assert!(!e.is_expired(at(1_000_000 + 7 * 86_400 - 1)));
        assert!(e.is_expired(at(1_000_000 + 7 * 86_400)));
        // One hour: refresh in the last quarter.
        let e = entry("example.com", 3600, 1_000_000);
        assert!(!e.needs_refresh(at(1_000_000 + 2600)));
        assert!(e.needs_refresh(at(1_000_000 + 2701)));
        // max_age 0: always due, always expired.
        let e = entry("example.com", 0, 1_000_000);
        assert!(e.needs_refresh(at(1_000_000)) && e.is_expired(at(1_000_000)));
    }

    #[test]
    fn e4_domains_are_normalised_and_never_paths() {
        assert_eq!(normalize_domain("Example.COM.").unwrap(), "example.com");
        assert_eq!(
            normalize_domain("bücher.example").unwrap(),
            "xn--bcher-kva.example"
        );
        for bad in [
            "",
            ".",
            "../etc",
            "a/b.example",
            "com",
            "a..b",
            "-x.example",
            "x y.example",
        ] {
            assert!(normalize_domain(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn e4_store_load_remove_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(cache_dir(dir.path())).unwrap();
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).unwrap().as_secs();
        let live = entry("live.example", 86_400, secs);
        let dead = entry("dead.example", 60, secs - 3600);
        cache.store(&live).unwrap();
        cache.store(&dead).unwrap();
        assert_eq!(cache.load("live.example").unwrap(), Some(live.clone()));
        // Loading drops the expired one, from disk too.
        assert_eq!(cache.load_all(now), vec![live.clone()]);
        assert!(!cache.exists("dead.example"));
        // A garbage file and a file holding another domain's policy are ignored.
        fs::write(cache_dir(dir.path()).join("junk.example.policy"), b"xx").unwrap();
        fs::copy(
            cache_dir(dir.path()).join("live.example.policy"),
            cache_dir(dir.path()).join("other.example.policy"),
        )
        .unwrap();
        assert_eq!(cache.load("junk.example").unwrap(), None);
        assert_eq!(cache.load("other.example").unwrap(), None);
        assert!(purge_cached(dir.path(), "LIVE.example.").unwrap());
        assert!(!purge_cached(dir.path(), "live.example").unwrap());
        assert_eq!(cache.load("live.example").unwrap(), None);
        // No temporary files are left behind.
        let names: Vec<_> = fs::read_dir(cache_dir(dir.path()))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }
}
