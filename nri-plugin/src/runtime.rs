//! What the connected runtime can do, decided at Configure.
//!
//! The NRI API version decides which events exist and whether a seccomp adjustment is applied.
//! From NRI v0.12 the runtime states its version in `ConfigureRequest.NRI_version`; before that
//! it is inferred from the runtime name and version, following containerd/nri's own table
//! (`InferVersionFromRuntime`): containerd 1.7.16–1.7.25 → v0.6.1, 1.7.26–2.1.x → v0.8.0,
//! 2.2.0 → v0.10.0, 2.2.1+ → v0.11.0, 2.3.0+ → v0.12.0.
//!
//! Capabilities by NRI version:
//! - v0.10+: events up to `VALIDATE_CONTAINER_ADJUSTMENT` (LAST = 15, before: 12) and the
//!   seccomp adjustment (containerd 2.2.0+);
//! - v0.12+: the container's current seccomp policy is reported (containerd 2.3.0+), and rules
//!   with `errno_ret` are safe: v0.10/v0.11 dereference a nil pointer on them (containerd 2.2.x).
//!
//! Limits: an unknown runtime that does not state its NRI version is treated as v0.6.1 (no
//! seccomp adjustment, the smallest event set); the runc wrapper covers it.

use std::fmt;

/// A `major.minor.patch` version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}.{}.{}", self.0, self.1, self.2)
    }
}

impl Version {
    /// Parses the leading `[v]MAJOR[.MINOR[.PATCH]]` of a version string, ignoring any suffix
    /// (`2.1.9+unknown`, `1.7.24~ds1`, `v2.3.0-rc.1`). `None` when it does not start with a
    /// number.
    pub fn parse_prefix(text: &str) -> Option<Version> {
        let text = text.trim().trim_start_matches('v');
        let mut parts = [0u32; 3];
        let mut rest = text;
        for (i, slot) in parts.iter_mut().enumerate() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                if i == 0 {
                    return None;
                }
                break;
            }
            *slot = rest[..digits].parse().ok()?;
            rest = &rest[digits..];
            match rest.strip_prefix('.') {
                Some(next) => rest = next,
                None => break,
            }
        }
        Some(Version(parts[0], parts[1], parts[2]))
    }
}

/// The runtime as it described itself at Configure, and what follows from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeInfo {
    /// `runtime_name` (e.g. `containerd`).
    pub name: String,
    /// `runtime_version` as sent (e.g. `2.1.9+unknown`).
    pub version: String,
    /// The NRI API version: stated by the runtime or inferred.
    pub nri_version: Version,
    /// Whether `nri_version` was stated by the runtime (true) or inferred (false).
    pub nri_version_stated: bool,
}

const NRI_0_6_1: Version = Version(0, 6, 1);

impl RuntimeInfo {
    /// Builds the runtime description from the Configure fields.
    pub fn from_configure(name: &str, version: &str, nri_version: &str) -> RuntimeInfo {
        let stated = Version::parse_prefix(nri_version);
        let nri = stated.unwrap_or_else(|| infer_nri_version(name, version));
        RuntimeInfo {
            name: name.to_string(),
            version: version.to_string(),
            nri_version: nri,
            nri_version_stated: stated.is_some(),
        }
    }

    /// The `Event::LAST` value of this API version.
    pub fn last_event(&self) -> i32 {
        if self.nri_version >= Version(0, 10, 0) {
            15
        } else {
            12
        }
    }

    /// Whether the runtime applies `LinuxContainerAdjustment.seccomp_policy`.
    pub fn applies_seccomp_adjustment(&self) -> bool {
        self.nri_version >= Version(0, 10, 0)
    }

    /// Whether the runtime reports the container's current seccomp policy
    /// (`LinuxContainer.seccomp_policy`, absent only for unconfined or privileged containers).
    pub fn reports_seccomp_policy(&self) -> bool {
        self.nri_version >= Version(0, 12, 0)
    }

    /// Whether seccomp rules may carry `errno_ret` (v0.10/v0.11 crash on them).
    pub fn accepts_errno_ret(&self) -> bool {
        self.nri_version >= Version(0, 12, 0)
    }
}

/// containerd/nri's version table, reduced to the ranges that matter here.
fn infer_nri_version(runtime: &str, version: &str) -> Version {
    let Some(v) = Version::parse_prefix(version) else {
        return NRI_0_6_1;
    };
    if runtime != "containerd" {
        return NRI_0_6_1;
    }
    match v {
        v if v < Version(1, 7, 26) => NRI_0_6_1,
        v if v < Version(2, 2, 0) => Version(0, 8, 0),
        v if v < Version(2, 2, 1) => Version(0, 10, 0),
        v if v < Version(2, 3, 0) => Version(0, 11, 0),
        _ => Version(0, 12, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_runtime_version_strings() {
        assert_eq!(
            Version::parse_prefix("2.1.9+unknown"),
            Some(Version(2, 1, 9))
        );
        assert_eq!(Version::parse_prefix("v1.7.24"), Some(Version(1, 7, 24)));
        assert_eq!(Version::parse_prefix("1.7.24~ds1"), Some(Version(1, 7, 24)));
        assert_eq!(Version::parse_prefix("v0.12"), Some(Version(0, 12, 0)));
        assert_eq!(Version::parse_prefix("unknown"), None);
        assert_eq!(Version::parse_prefix(""), None);
    }

    #[test]
    fn infers_capabilities_per_containerd_release() {
        let c = |v: &str| RuntimeInfo::from_configure("containerd", v, "");
        let old = c("1.7.24~ds1");
        assert_eq!((old.nri_version, old.last_event()), (Version(0, 6, 1), 12));
        assert!(!old.applies_seccomp_adjustment());
        let sid = c("2.1.9+unknown");
        assert_eq!(sid.nri_version, Version(0, 8, 0));
        assert!(!sid.applies_seccomp_adjustment());
        let first = c("v2.2.0");
        assert!(first.applies_seccomp_adjustment() && !first.accepts_errno_ret());
        assert_eq!(first.last_event(), 15);
        assert!(!c("v2.2.7").reports_seccomp_policy());
        let practical = RuntimeInfo::from_configure("containerd", "v2.3.0", "v0.12.0");
        assert!(practical.nri_version_stated);
        assert!(practical.reports_seccomp_policy() && practical.accepts_errno_ret());
    }

    #[test]
    fn unknown_runtimes_get_the_smallest_feature_set() {
        let info = RuntimeInfo::from_configure("cri-o", "1.31.0", "");
        assert_eq!(info.nri_version, Version(0, 6, 1));
        let stated = RuntimeInfo::from_configure("cri-o", "1.34.0", "v0.11.0");
        assert!(stated.applies_seccomp_adjustment());
    }
}
