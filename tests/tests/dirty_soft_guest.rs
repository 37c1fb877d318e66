//! checkpointd's soft-dirty tracker against the real kernel mechanism: the hosts' kernels have
//! no CONFIG_MEM_SOFT_DIRTY, Debian's 6.1 cloud kernel has, so this boots a TCG guest from it
//! with `dirtyprobe` (tests/src/bin) in its initramfs. A writer process maps a shared file and
//! writes random pages; the tracker, set up by checkpointd's own code on the writer's pid, must
//! report exactly those pages, with their new contents, over several rounds. Then it times the
//! tracker against the comparing tracker on the same memory (printed for BENCHMARKS.md).

use remus_tests::guest::{boot_and_collect, build_image, repo_root, result};
use std::time::Duration;

#[test]
fn soft_dirty_reports_exactly_the_written_pages_inside_a_6_1_guest() {
    let image = build_image(
        "softdirty",
        &[env!("CARGO_BIN_EXE_dirtyprobe")],
        &repo_root().join("tests/guest/softdirty.sh"),
    )
    .unwrap();
    let console = boot_and_collect(&image, 768, Duration::from_secs(300));
    let _ = std::fs::remove_dir_all(&image);
    let console = console.unwrap();
    eprintln!("{console}");
    let tracker = result(&console, "tracker").unwrap_or("none");
    assert!(
        tracker.starts_with("soft-dirty"),
        "the guest's kernel must have soft-dirty tracking: {tracker}"
    );
    let exact = result(&console, "exact").unwrap_or("no result");
    assert!(exact.starts_with("ok rounds=6 pages=1800"), "{exact}");
    let bench = result(&console, "bench").unwrap_or("no result");
    let ratio: f64 = bench
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("ratio="))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0.0);
    // Reading 8 bytes of pagemap per page must beat comparing 4096 bytes per page.
    assert!(
        ratio > 1.0,
        "soft-dirty scan is not cheaper than comparison: {bench}"
    );
}
