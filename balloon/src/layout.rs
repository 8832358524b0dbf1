//! Queue index derivation: a pure function over the offered and negotiated
//! features.
//!
//! Implementations disagree on how virtio-balloon queues are numbered
//! (../shared/DESIGN.md §3, verified by booting QEMU 10):
//! - QEMU creates queues for what the device *offers*, whatever the driver
//!   negotiates: inflate 0, deflate 1, stats 2, free-page 3 only when
//!   FREE_PAGE_HINT is offered, then reporting.
//! - Linux (`virtballoon` `init_vqs` passes NULL names for unused queues and
//!   `vp_find_vqs` skips them) and Firecracker count densely over the
//!   *negotiated* features.

use crate::defs::BalloonFeatures;

/// Which numbering the device uses.
#[derive(Copy, Clone, Debug, Default, Eq, PartialEq)]
pub enum QueueLayout {
    /// Indices follow the offered features (QEMU). The default.
    #[default]
    Offered,
    /// Indices are dense over the negotiated features (Linux, Firecracker, VIRTIO spec text).
    Dense,
}

/// Queue indices of the queues the driver uses; `None` for a queue not negotiated.
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
pub struct QueueIndices {
    /// Inflate queue (always 0).
    pub inflate: u16,
    /// Deflate queue (always 1).
    pub deflate: u16,
    /// Stats queue, when STATS_VQ is negotiated.
    pub stats: Option<u16>,
    /// Free page hinting queue; we never use it, but it shifts reporting.
    pub free_page: Option<u16>,
    /// Reporting queue, when REPORTING is negotiated.
    pub reporting: Option<u16>,
}

/// Derives the queue indices for `layout`.
pub fn queue_indices(
    offered: BalloonFeatures,
    negotiated: BalloonFeatures,
    layout: QueueLayout,
) -> QueueIndices {
    // A queue takes an index when its feature is in `counted`; the driver
    // uses it only when negotiated.
    let counted = match layout {
        QueueLayout::Offered => offered,
        QueueLayout::Dense => negotiated,
    };
    let mut next = 2u16;
    let mut take = |feature: BalloonFeatures| {
        if counted.contains(feature) {
            let i = next;
            next += 1;
            negotiated.contains(feature).then_some(i)
        } else {
            None
        }
    };
    let stats = take(BalloonFeatures::STATS_VQ);
    let free_page = take(BalloonFeatures::FREE_PAGE_HINT);
    let reporting = take(BalloonFeatures::REPORTING);
    QueueIndices {
        inflate: 0,
        deflate: 1,
        stats,
        free_page,
        reporting,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const F: BalloonFeatures = BalloonFeatures::empty();

    #[test]
    fn qemu_default_reporting_is_3() {
        // QEMU 10, free-page-reporting=on: offers STATS_VQ, REPORTING.
        let offered =
            BalloonFeatures::STATS_VQ | BalloonFeatures::REPORTING | BalloonFeatures::VERSION_1;
        let q = queue_indices(offered, offered, QueueLayout::Offered);
        assert_eq!(q.stats, Some(2));
        assert_eq!(q.reporting, Some(3));
    }

    #[test]
    fn qemu_with_hinting_offered_reporting_is_4() {
        let offered = BalloonFeatures::STATS_VQ
            | BalloonFeatures::FREE_PAGE_HINT
            | BalloonFeatures::REPORTING;
        let negotiated = BalloonFeatures::STATS_VQ | BalloonFeatures::REPORTING;
        let q = queue_indices(offered, negotiated, QueueLayout::Offered);
        assert_eq!(q.free_page, None);
        assert_eq!(q.reporting, Some(4));
        let d = queue_indices(offered, negotiated, QueueLayout::Dense);
        assert_eq!(d.reporting, Some(3));
    }

    #[test]
    fn dense_without_stats_puts_reporting_at_2() {
        let offered = BalloonFeatures::STATS_VQ | BalloonFeatures::REPORTING;
        let negotiated = BalloonFeatures::REPORTING;
        assert_eq!(
            queue_indices(offered, negotiated, QueueLayout::Dense).reporting,
            Some(2)
        );
        assert_eq!(
            queue_indices(offered, negotiated, QueueLayout::Offered).reporting,
            Some(3)
        );
        assert_eq!(queue_indices(F, F, QueueLayout::Dense).reporting, None);
    }

    fn features() -> impl Strategy<Value = BalloonFeatures> {
        (0u64..64).prop_map(BalloonFeatures::from_bits_truncate)
    }

    proptest! {
        /// Both layouts agree when everything offered is negotiated; indices
        /// are distinct and each used queue is negotiated.
        #[test]
        fn layouts_are_consistent(offered in features(), mask in features()) {
            let negotiated = offered & mask;
            for layout in [QueueLayout::Offered, QueueLayout::Dense] {
                let q = queue_indices(offered, negotiated, layout);
                let used: Vec<u16> = [q.stats, q.free_page, q.reporting].into_iter().flatten().collect();
                // Strictly ascending: ascending and distinct. (A dedup
                // without a sort let any order pass.)
                prop_assert!(used.windows(2).all(|w| w[0] < w[1]), "indices ascend and are distinct: {:?}", used);
                prop_assert!(used.iter().all(|&i| i >= 2));
                prop_assert_eq!(q.reporting.is_some(), negotiated.contains(BalloonFeatures::REPORTING));
                prop_assert_eq!(q.stats.is_some(), negotiated.contains(BalloonFeatures::STATS_VQ));
                if let Some(r) = q.reporting {
                    let dense = queue_indices(offered, negotiated, QueueLayout::Dense).reporting.unwrap();
                    prop_assert!(r >= dense, "offered numbering never lowers an index");
                }
            }
            prop_assert_eq!(
                queue_indices(offered, offered, QueueLayout::Offered),
                queue_indices(offered, offered, QueueLayout::Dense)
            );
        }
    }
}
