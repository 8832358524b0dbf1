//! `tools guest`: prepare the Linux guest of issue 13 (kernel Image and
//! initramfs from Debian's arm64 packages, see `tools::linux_guest`) under
//! `target/linux-guest/`; with `--boot`, boot it directly under QEMU and
//! measure how fast the host gets the workload's freed memory back.

use super::image::workspace;
use std::process::ExitCode;
use std::time::Instant;
use tools::linux_guest::{self, Spec, direct};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Boot the guest directly under qemu-system-aarch64 and measure.
    #[arg(long)]
    pub boot: bool,
    /// With --boot: QEMU's virtio-balloon without free-page-reporting (the
    /// control run).
    #[arg(long)]
    pub no_reporting: bool,
    /// With --boot: MiB the workload touches and frees per round.
    #[arg(long, default_value_t = 64)]
    pub mib: u64,
    /// With --boot: how long it holds them (ms).
    #[arg(long, default_value_t = 2000)]
    pub hold_ms: u64,
    /// With --boot: rounds.
    #[arg(long, default_value_t = 1)]
    pub rounds: u32,
    /// With --boot: boot this many times and print a table with medians.
    #[arg(long, default_value_t = 1)]
    pub runs: u32,
    /// With --boot: more kernel command line words.
    #[arg(long, default_value = "")]
    pub append: String,
}

pub fn main(args: Args) -> ExitCode {
    let spec = Spec::new(&workspace());
    let t = Instant::now();
    let mut say = |l: &str| println!("[{:6.1} s] {l}", t.elapsed().as_secs_f64());
    let guest = match linux_guest::prepare(&spec, &mut say) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("guest: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "Image:     {} ({:.1} MiB)\ninitramfs: {} ({:.1} MiB)\nmanifest:  {}\ndownloaded {:.1} MiB",
        guest.image.display(),
        guest.manifest.image_bytes as f64 / (1 << 20) as f64,
        guest.initramfs.display(),
        guest.manifest.initramfs_bytes as f64 / (1 << 20) as f64,
        guest.manifest_path.display(),
        guest.downloaded as f64 / (1 << 20) as f64,
    );
    if !args.boot {
        return ExitCode::SUCCESS;
    }
    let mut cfg = direct::DirectConfig::new(!args.no_reporting, spec.out_dir.join("qmp.sock"));
    cfg.mib = args.mib;
    cfg.hold_ms = args.hold_ms;
    cfg.rounds = args.rounds;
    cfg.extra_append = args.append;
    println!(
        "booting: free-page-reporting={} append: {}",
        if cfg.reporting { "on" } else { "off" },
        cfg.append()
    );
    let t = Instant::now();
    let mut say = |l: &str| println!("[{:6.1} s] {l}", t.elapsed().as_secs_f64());
    match direct::measure(&guest, &cfg, args.runs.max(1), &mut say) {
        Ok(reports) => {
            let console = spec.out_dir.join("console.txt");
            let last = reports.last().expect("at least one run");
            let _ = std::fs::write(&console, &last.console);
            let _ = std::fs::write(spec.out_dir.join("timeline.csv"), last.timeline.csv());
            println!("{}console: {}", last.summary(), console.display());
            if reports.len() > 1 {
                println!("\n{}", direct::table(&reports));
            }
            if last.failure.is_some() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("guest: {e}");
            ExitCode::FAILURE
        }
    }
}
