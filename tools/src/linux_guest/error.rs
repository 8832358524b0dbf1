//! What can go wrong preparing the guest, one line each.

use std::fmt;
use std::path::PathBuf;

/// A failure of `tools guest` / [`super::prepare`].
#[derive(Debug)]
pub enum GuestError {
    /// A tool (apt-get, apt-cache, dpkg, dpkg-deb, cargo) failed or could
    /// not run; `detail` is the end of what it said.
    Command {
        what: String,
        detail: String,
    },
    /// apt knows no such package for arm64 (no arm64 lists, no network).
    NoPackage {
        package: String,
        detail: String,
    },
    /// The resolved kernel is not the 6.1 series the guest is built for.
    WrongKernel {
        package: String,
        version: String,
    },
    /// A downloaded .deb's SHA256 is not the one in apt's Packages index.
    HashMismatch {
        file: PathBuf,
        expected: String,
        actual: String,
    },
    /// The kernel is not an arm64 `Image`.
    NotArm64Image {
        path: PathBuf,
        reason: String,
    },
    /// A module the guest needs is neither in the package nor built in.
    MissingModule {
        module: String,
        kernel: String,
    },
    /// A module file that cannot be used (unreadable ELF, wrong kernel,
    /// bad compression).
    BadModule {
        path: PathBuf,
        reason: String,
    },
    /// The aarch64-unknown-linux-musl target is not installed.
    NoMuslTarget(String),
    Io(PathBuf, std::io::Error),
}

impl fmt::Display for GuestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuestError::Command { what, detail } => write!(f, "{what} failed: {detail}"),
            GuestError::NoPackage { package, detail } => write!(
                f,
                "apt has no package {package}: {detail} (is the arm64 architecture added and \
                 `apt-get update` able to reach the Debian archive?)"
            ),
            GuestError::WrongKernel { package, version } => write!(
                f,
                "{package} resolves to version {version}, not bookworm's 6.1 series"
            ),
            GuestError::HashMismatch {
                file,
                expected,
                actual,
            } => write!(
                f,
                "{}: SHA256 {actual} is not {expected}, the hash in apt's Packages index",
                file.display()
            ),
            GuestError::NotArm64Image { path, reason } => {
                write!(f, "{} is not an arm64 Image: {reason}", path.display())
            }
            GuestError::MissingModule { module, kernel } => write!(
                f,
                "kernel {kernel} has no module {module} (neither a .ko in the package nor in modules.builtin)"
            ),
            GuestError::BadModule { path, reason } => {
                write!(f, "{}: {reason}", path.display())
            }
            GuestError::NoMuslTarget(sysroot) => write!(
                f,
                "the Rust target aarch64-unknown-linux-musl is not installed in {sysroot}: \
                 run `rustup target add aarch64-unknown-linux-musl`"
            ),
            GuestError::Io(p, e) => write!(f, "{}: {e}", p.display()),
        }
    }
}

impl std::error::Error for GuestError {}

/// `map_err` helper: an I/O error on `path`.
pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> GuestError {
    let path = path.into();
    move |e| GuestError::Io(path, e)
}
