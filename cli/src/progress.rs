//! The initial sync, as one line: how much of the disk has reached the backup and whether the
//! first (full) memory checkpoint is safe there. Pure: built from the daemons' status JSON.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub struct SyncView {
    pub disk_done: u64,
    pub disk_total: u64,
    pub disk_in_sync: bool,
    pub disk_link: String,
    pub memory_mib: u64,
    pub memory_committed: bool,
}

impl SyncView {
    /// From diskrep primary's and checkpointd primary's `status json`.
    pub fn from_status(diskrep: &Value, checkpointd: Option<&Value>, memory_mib: u64) -> SyncView {
        let r = &diskrep["resync"];
        let region = diskrep["region_size"].as_u64().unwrap_or(0);
        let size = diskrep["size"].as_u64().unwrap_or(0);
        let link = diskrep["link"].as_str().unwrap_or("?").to_string();
        let in_sync = link == "protected";
        let (done, total) = match (r["regions_done"].as_u64(), r["regions_total"].as_u64()) {
            _ if in_sync => (size, size),
            (Some(d), Some(t)) if t > 0 => ((d * region).min(size), (t * region).min(size)),
            _ => (0, size),
        };
        SyncView {
            disk_done: done,
            disk_total: total,
            disk_in_sync: in_sync,
            disk_link: link,
            memory_mib,
            memory_committed: checkpointd
                .map(|c| c["committed_through"].is_u64())
                .unwrap_or(false),
        }
    }

    pub fn done(&self) -> bool {
        self.disk_in_sync && self.memory_committed
    }

    pub fn render(&self, width: usize) -> String {
        let pct = match (self.disk_done * 100).checked_div(self.disk_total) {
            Some(p) => p as usize,
            None if self.disk_in_sync => 100,
            None => 0,
        };
        let filled = pct * width / 100;
        let bar: String = "#".repeat(filled) + &"-".repeat(width - filled);
        let mib = |b: u64| b / (1 << 20);
        let disk = if self.disk_in_sync {
            format!("{} MiB in sync", mib(self.disk_total))
        } else {
            format!(
                "{}/{} MiB ({})",
                mib(self.disk_done),
                mib(self.disk_total),
                self.disk_link
            )
        };
        let memory = if self.memory_committed {
            format!("{} MiB committed", self.memory_mib)
        } else {
            format!("first full copy of {} MiB", self.memory_mib)
        };
        format!("initial sync [{bar}] {pct:3}%  disk {disk} · memory {memory}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_line_follows_the_sync() {
        let d = json!({"link": "syncing", "size": 1u64 << 30, "region_size": 1u64 << 20,
                       "resync": {"regions_done": 256, "regions_total": 1024}});
        let v = SyncView::from_status(&d, Some(&json!({"committed_through": null})), 128);
        assert_eq!(v.disk_done, 256 << 20);
        assert!(!v.done());
        let line = v.render(20);
        assert!(line.contains("[#####---------------]  25%"), "{line}");
        assert!(line.contains("256/1024 MiB (syncing)"), "{line}");
        assert!(line.contains("first full copy of 128 MiB"), "{line}");

        let d = json!({"link": "protected", "size": 1u64 << 30, "region_size": 1u64 << 20,
                       "resync": {"regions_done": 0, "regions_total": 0}});
        let v = SyncView::from_status(&d, Some(&json!({"committed_through": 4})), 128);
        assert!(v.done());
        let line = v.render(10);
        assert!(line.contains("[##########] 100%"), "{line}");
        assert!(
            line.contains("1024 MiB in sync") && line.contains("128 MiB committed"),
            "{line}"
        );
    }

    #[test]
    fn missing_fields_show_nothing_done() {
        let v = SyncView::from_status(&json!({}), None, 64);
        assert_eq!((v.disk_done, v.disk_total), (0, 0));
        assert!(!v.done());
        assert!(v.render(4).contains("[----]   0%"));
    }
}
