//! cgroup v2 paths and ids.
//!
//! Hosts may be hybrid (v1 controllers plus a v2 tree at
//! `/sys/fs/cgroup/unified`) or unified (`/sys/fs/cgroup`), so the v2 mount is
//! found from `/proc/self/mountinfo`, never assumed.

use std::{
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// Errors locating cgroup v2 directories.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup2 filesystem is mounted (looked in /proc/self/mountinfo)")]
    NoCgroup2,
    #[error("reading /proc/self/mountinfo: {0}")]
    MountInfo(#[source] io::Error),
    #[error("cgroup directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The cgroup2 mount point of this mount namespace.
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").map_err(CgroupError::MountInfo)?;
    find_cgroup2(&info).ok_or(CgroupError::NoCgroup2)
}

/// Finds the first cgroup2 mount in mountinfo text.
fn find_cgroup2(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        let fstype = post.split_whitespace().next()?;
        let mount_point = pre.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_octal(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(char::from(c));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Makes a configured cgroup path absolute: relative paths hang off `mount`.
pub fn resolve(mount: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        mount.join(path)
    }
}

/// The cgroup v2 id of a directory: its inode number, which is what
/// `bpf_get_current_cgroup_id()` returns for tasks inside it.
pub fn cgroup_id(dir: &Path) -> Result<u64, CgroupError> {
    let meta = std::fs::metadata(dir).map_err(|source| CgroupError::Dir {
        path: dir.to_owned(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(CgroupError::Dir {
            path: dir.to_owned(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a directory"),
        });
    }
    Ok(meta.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 1 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
27 25 0:25 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
";

    #[test]
    fn finds_the_v2_mount_on_a_hybrid_host() {
        assert_eq!(
            find_cgroup2(HYBRID),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn no_v2_mount_is_none() {
        assert_eq!(
            find_cgroup2(&HYBRID.replace("cgroup2 cgroup2", "tmpfs x")),
            None
        );
    }

    #[test]
    fn escaped_mount_points_are_decoded() {
        let line = "1 0 0:1 / /mnt/my\\040cg rw - cgroup2 none rw\n";
        assert_eq!(find_cgroup2(line), Some(PathBuf::from("/mnt/my cg")));
    }

    #[test]
    fn relative_paths_hang_off_the_mount() {
        let m = Path::new("/sys/fs/cgroup/unified");
        assert_eq!(resolve(m, Path::new("kubepods")), m.join("kubepods"));
        assert_eq!(resolve(m, Path::new("/x/y")), PathBuf::from("/x/y"));
    }

    #[test]
    fn cgroup_id_of_a_missing_dir_names_it() {
        let err = cgroup_id(Path::new("/nonexistent/nw")).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/nw"));
    }
}
