//! Where the image puts each memory region: regions with a `phys_addr` stay
//! there (device pages), every other one is carved from a RAM pool,
//! naturally aligned (its size rounded up to a power of two, at most 1 GiB,
//! at least its page size), so every buddy block of a RAM region is aligned
//! in physical memory too (the memserver's zones work on PFNs). Pure code: the build script includes this file, and the
//! library tests it on the host.

use core::fmt;

/// One memory region to place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionReq<'a> {
    pub name: &'a str,
    pub size: u64,
    /// The region's page size (4 KiB or 2 MiB).
    pub align: u64,
    /// `phys_addr` in system.xml.
    pub fixed: Option<u64>,
}

/// Why the regions do not fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayoutError {
    /// A size or alignment of zero, an alignment that is not a power of two,
    /// or a size that is not a multiple of it.
    BadShape { name: String },
    /// A fixed region that is not aligned to its page size.
    Misaligned { name: String, addr: u64 },
    /// Out of pool memory.
    DoesNotFit { name: String, size: u64 },
    /// Two regions would overlap.
    Overlap { a: String, b: String },
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayoutError::BadShape { name } => write!(
                f,
                "memory_region '{name}': size and page size must be non-zero multiples of a power of two"
            ),
            LayoutError::Misaligned { name, addr } => {
                write!(
                    f,
                    "memory_region '{name}': phys_addr {addr:#x} is not aligned to its page size"
                )
            }
            LayoutError::DoesNotFit { name, size } => {
                write!(
                    f,
                    "memory_region '{name}' ({size:#x} bytes) does not fit the image's RAM pool"
                )
            }
            LayoutError::Overlap { a, b } => write!(f, "memory_regions '{a}' and '{b}' overlap"),
        }
    }
}

/// The address of each region of `regions` (same order), carving the
/// non-fixed ones from `pool` (start, end), largest page size then size
/// first, so large
/// alignments do not fragment the pool.
pub fn place(regions: &[RegionReq<'_>], pool: (u64, u64)) -> Result<Vec<u64>, LayoutError> {
    let mut addrs = vec![0u64; regions.len()];
    let mut taken: Vec<(u64, u64, usize)> = Vec::new();
    for (i, r) in regions.iter().enumerate() {
        if r.size == 0 || !r.align.is_power_of_two() || r.size % r.align != 0 {
            return Err(LayoutError::BadShape {
                name: r.name.into(),
            });
        }
        if let Some(a) = r.fixed {
            if a % r.align != 0 {
                return Err(LayoutError::Misaligned {
                    name: r.name.into(),
                    addr: a,
                });
            }
            let end = a.checked_add(r.size).ok_or(LayoutError::DoesNotFit {
                name: r.name.into(),
                size: r.size,
            })?;
            claim(&mut taken, regions, (a, end, i))?;
            addrs[i] = a;
        }
    }
    let mut order: Vec<usize> = (0..regions.len())
        .filter(|&i| regions[i].fixed.is_none())
        .collect();
    order.sort_by_key(|&i| {
        (
            core::cmp::Reverse(regions[i].align),
            core::cmp::Reverse(regions[i].size),
            i,
        )
    });
    for i in order {
        let r = &regions[i];
        let align = r
            .size
            .checked_next_power_of_two()
            .unwrap_or(1 << 30)
            .clamp(r.align, (1 << 30).max(r.align));
        let mut at = pool.0.next_multiple_of(align);
        loop {
            let end =
                at.checked_add(r.size)
                    .filter(|&e| e <= pool.1)
                    .ok_or(LayoutError::DoesNotFit {
                        name: r.name.into(),
                        size: r.size,
                    })?;
            match taken.iter().find(|t| t.0 < end && at < t.1) {
                Some(t) => at = t.1.next_multiple_of(align),
                None => break,
            }
        }
        claim(&mut taken, regions, (at, at + r.size, i))?;
        addrs[i] = at;
    }
    Ok(addrs)
}

fn claim(
    taken: &mut Vec<(u64, u64, usize)>,
    regions: &[RegionReq<'_>],
    new: (u64, u64, usize),
) -> Result<(), LayoutError> {
    if let Some(t) = taken.iter().find(|t| t.0 < new.1 && new.0 < t.1) {
        return Err(LayoutError::Overlap {
            a: regions[t.2].name.into(),
            b: regions[new.2].name.into(),
        });
    }
    taken.push(new);
    Ok(())
}
