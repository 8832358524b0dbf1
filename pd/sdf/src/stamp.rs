//! What ties a PD build to the system description it was built from.
//!
//! A PD's channel ids, regions and zones are generated from one description
//! (`SYSTEM_XML`); run under another, it would disagree with the launcher or
//! the image about every one of them, silently. So, as sDDF's generated
//! config carries a magic checked at init, every PD build carries a *stamp*:
//! the SHA-256 of the description file's bytes and the path it was read
//! from, as a byte string in its read-only data. The tools read it out of
//! the built binary ([`find`]) and refuse to run or pack a PD whose stamp is
//! not the description's ([`check`]), with one line naming both.
//!
//! The stamp is found by scanning the file's bytes, not by symbol, so the
//! same check serves host executables, Microkit ELFs and bare images, with
//! or without symbols.

use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::path::Path;

/// Starts every stamp in a binary.
const MAGIC: &str = "sdf-system:sha256=";
const PATH: &str = ";path=";

/// The hash of a description: SHA-256 of its bytes, lower-case hex.
pub fn hash(xml: &[u8]) -> String {
    Sha256::digest(xml)
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The stamp of a build from `path` whose bytes are `xml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// [`hash`] of the description.
    pub sha256: String,
    /// Where it was read from when the PD was built (for the message only).
    pub path: String,
}

impl Stamp {
    pub fn new(path: &Path, xml: &[u8]) -> Stamp {
        Stamp {
            sha256: hash(xml),
            path: path.display().to_string(),
        }
    }

    /// A description's stamp, reading the file.
    pub fn of_file(path: &Path) -> Result<Stamp, String> {
        let xml = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Stamp::new(path, &xml))
    }

    /// The short form for messages: the path and the hash's first 12 digits.
    pub fn short(&self) -> String {
        format!("{} (sha256 {})", self.path, &self.sha256[..12])
    }

    /// Rust code for a generated configuration module: a static holding the
    /// stamp, kept in the binary (`#[used]`) although nothing reads it.
    pub fn code(&self) -> String {
        // The path goes in as printable ASCII (a byte string literal), no
        // `;`, bounded.
        let path: String = self
            .path
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    c
                } else {
                    '?'
                }
            })
            .filter(|c| *c != ';')
            .take(200)
            .collect();
        let text = format!("{MAGIC}{}{PATH}{path}\0", self.sha256);
        format!(
            "/// The system description this PD was built from (`sdf::stamp`): the\n\
             /// tools find it in the built binary and refuse to run it under another.\n\
             #[doc(hidden)]\n#[used]\n#[allow(dead_code)]\n\
             static __SDF_SYSTEM_STAMP: [u8; {}] = *b{:?};\n",
            text.len(),
            text
        )
    }
}

/// Every stamp in `binary`'s bytes, each once, in order of appearance.
pub fn find(binary: &[u8]) -> Vec<Stamp> {
    let mut out: Vec<Stamp> = Vec::new();
    let magic = MAGIC.as_bytes();
    let mut i = 0;
    while let Some(at) = binary[i..].windows(magic.len()).position(|w| w == magic) {
        let start = i + at + magic.len();
        i = start;
        let Some(hex) = binary.get(start..start + 64) else {
            break;
        };
        if !hex.iter().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let rest = &binary[start + 64..];
        let Some(rest) = rest.strip_prefix(PATH.as_bytes()) else {
            continue;
        };
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        let s = Stamp {
            sha256: String::from_utf8_lossy(hex).into_owned(),
            path: String::from_utf8_lossy(&rest[..end]).into_owned(),
        };
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

/// Check that the binary at `binary` (a PD `what` names, e.g. "PD 'memserver'")
/// was built from the description `want`: `Err` is one line naming both.
/// A binary built to serve several descriptions (its generated
/// configuration the same for each, [`crate::build::generate_for`]) carries
/// a stamp for each and fits any of them.
pub fn check(binary: &Path, what: &str, want: &Stamp) -> Result<(), String> {
    let bytes = std::fs::read(binary).map_err(|e| format!("{}: {e}", binary.display()))?;
    let found = find(&bytes);
    if found.iter().any(|s| s.sha256 == want.sha256) {
        return Ok(());
    }
    if found.is_empty() {
        return Err(format!(
            "{what} ({}) carries no system description stamp (not built by this tree's build scripts): rebuild it from {}",
            binary.display(),
            want.path
        ));
    }
    let built: Vec<String> = found.iter().map(Stamp::short).collect();
    Err(format!(
        "{what} ({}) was built for {}, not for {}: rebuild the PDs from {}",
        binary.display(),
        built.join(" and "),
        want.short(),
        want.path
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_is_found_in_the_bytes_around_it() {
        let a = Stamp::new(Path::new("a.xml"), b"<system/>");
        let text = format!("{MAGIC}{}{PATH}{}\0", a.sha256, a.path);
        let mut bin = b"\x7fELF junk sdf-system:sha256=zz".to_vec();
        bin.extend_from_slice(text.as_bytes());
        bin.extend_from_slice(b"more");
        bin.extend_from_slice(text.as_bytes());
        assert_eq!(find(&bin), std::slice::from_ref(&a));
        assert!(a.code().contains(&format!("{:?}", text)));
        assert_eq!(find(b"nothing here"), []);
    }

    #[test]
    fn a_binary_of_another_description_is_refused_in_one_line() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().to_path_buf();
        let bin = dir.join("pd");
        let a = Stamp::new(Path::new("a.xml"), b"<system>a</system>");
        let b = Stamp::new(Path::new("b.xml"), b"<system>b</system>");
        let text = format!("{MAGIC}{}{PATH}{}\0", a.sha256, a.path);
        std::fs::write(&bin, text).unwrap();
        assert_eq!(check(&bin, "PD 'x'", &a), Ok(()));
        let e = check(&bin, "PD 'x'", &b).unwrap_err();
        assert!(!e.contains('\n'), "{e}");
        assert!(
            e.contains(&format!("was built for a.xml (sha256 {})", &a.sha256[..12])),
            "{e}"
        );
        assert!(
            e.contains(&format!("not for b.xml (sha256 {})", &b.sha256[..12])),
            "{e}"
        );
        std::fs::write(&bin, "no stamp").unwrap();
        assert!(
            check(&bin, "PD 'x'", &a)
                .unwrap_err()
                .contains("no system description stamp")
        );
    }

    #[test]
    fn the_hash_is_of_the_bytes() {
        assert_eq!(
            hash(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_ne!(hash(b"<system/>"), hash(b"<system />"));
    }
}
