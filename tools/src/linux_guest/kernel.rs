//! The kernel: Debian's `vmlinuz` made into the uncompressed arm64 `Image`
//! a VMM loads (a gzip of it in some releases, the Image itself with its
//! EFI stub in others, as bookworm's 6.1.0-57 ships it), and its header
//! checked (Linux `Documentation/arch/arm64/booting.rst`: magic "ARM\x64"
//! at 56, text_offset at 8, image_size at 16, little endian).

use super::error::{GuestError, io};
use flate2::read::GzDecoder;
use std::io::Read;
use std::path::Path;

/// The header fields a loader needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHeader {
    pub text_offset: u64,
    pub image_size: u64,
}

/// The arm64 magic at offset 56.
pub const MAGIC: &[u8; 4] = b"ARM\x64";

/// Check an arm64 Image header.
pub fn header(image: &[u8]) -> Result<ImageHeader, String> {
    if image.len() < 64 {
        return Err(format!(
            "{} bytes, shorter than the 64-byte header",
            image.len()
        ));
    }
    if &image[56..60] != MAGIC {
        return Err(format!(
            "no \"ARM\\x64\" magic at offset 56 (found {:02x?})",
            &image[56..60]
        ));
    }
    let le = |o: usize| u64::from_le_bytes(image[o..o + 8].try_into().expect("8 bytes"));
    let h = ImageHeader {
        text_offset: le(8),
        image_size: le(16),
    };
    if h.image_size == 0 {
        // Pre-3.17 kernels; the VMM places DTB and initrd after image_size.
        return Err("image_size is 0 (a kernel older than 3.17)".into());
    }
    Ok(h)
}

/// `vmlinuz` bytes -> Image bytes: gunzip when it is gzip.
pub fn uncompress(vmlinuz: &[u8]) -> std::io::Result<Vec<u8>> {
    if vmlinuz.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(vmlinuz.len() * 3);
        GzDecoder::new(vmlinuz).read_to_end(&mut out)?;
        Ok(out)
    } else {
        Ok(vmlinuz.to_vec())
    }
}

/// Read `vmlinuz`, write the checked Image to `out`.
pub fn make_image(vmlinuz: &Path, out: &Path) -> Result<ImageHeader, GuestError> {
    let raw = std::fs::read(vmlinuz).map_err(io(vmlinuz))?;
    let image = uncompress(&raw).map_err(|e| GuestError::NotArm64Image {
        path: vmlinuz.to_path_buf(),
        reason: format!("gunzip: {e}"),
    })?;
    let h = header(&image).map_err(|reason| GuestError::NotArm64Image {
        path: vmlinuz.to_path_buf(),
        reason,
    })?;
    std::fs::write(out, &image).map_err(io(out))?;
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn fake_image() -> Vec<u8> {
        let mut img = vec![0u8; 4096];
        img[8..16].copy_from_slice(&0u64.to_le_bytes());
        img[16..24].copy_from_slice(&0x1ab_0000u64.to_le_bytes());
        img[56..60].copy_from_slice(MAGIC);
        img
    }

    #[test]
    fn plain_and_gzipped_images_are_accepted() {
        let img = fake_image();
        let want = ImageHeader {
            text_offset: 0,
            image_size: 0x1ab_0000,
        };
        assert_eq!(header(&uncompress(&img).unwrap()).unwrap(), want);
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(&img).unwrap();
        let gz = gz.finish().unwrap();
        let un = uncompress(&gz).unwrap();
        assert_eq!(un, img);
        assert_eq!(header(&un).unwrap(), want);
    }

    #[test]
    fn other_files_are_refused_in_one_line() {
        let e = header(b"\x7fELF").unwrap_err();
        assert_eq!(e, "4 bytes, shorter than the 64-byte header");
        let mut x86 = fake_image();
        x86[56..60].copy_from_slice(b"HdrS");
        let e = header(&x86).unwrap_err();
        assert!(e.starts_with("no \"ARM\\x64\" magic at offset 56"), "{e}");
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().to_path_buf();
        let bad = dir.join("vmlinuz");
        std::fs::write(&bad, &x86).unwrap();
        let e = make_image(&bad, &dir.join("Image"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("vmlinuz is not an arm64 Image: no"), "{e}");
        std::fs::write(&bad, [0x1f, 0x8b, 0, 1, 2]).unwrap();
        let e = make_image(&bad, &dir.join("Image"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not an arm64 Image: gunzip"), "{e}");
    }
}
