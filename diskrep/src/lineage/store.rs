//! The metadata file beside an image (`IMAGE.lineage` unless `--lineage PATH`), written
//! crash-safely: the new record goes to `PATH.tmp`, is fsynced, renamed over `PATH`, and the
//! directory is fsynced, so that after a crash the file is the old record or the new one, never
//! a mixture (the record's checksum catches a file system that breaks that promise anyway).

use super::meta::{DiskMeta, MetaError};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The default place of an image's metadata.
pub fn default_path(image: &Path) -> PathBuf {
    let mut s = image.as_os_str().to_owned();
    s.push(".lineage");
    PathBuf::from(s)
}

/// What reading the file found.
#[derive(Debug)]
pub enum Loaded {
    Found(DiskMeta),
    /// No file: an image nobody has recorded anything about.
    Missing,
    /// A file that is not a valid record: treated as "lineage unknown" (a full sync), and said.
    Damaged(String),
}

pub fn load(path: &Path) -> std::io::Result<Loaded> {
    match std::fs::read(path) {
        Ok(b) => Ok(match DiskMeta::decode(&b) {
            Ok(m) => Loaded::Found(m),
            Err(e @ (MetaError::Header | MetaError::Checksum | MetaError::Json(_)))
            | Err(e @ MetaError::Runs) => Loaded::Damaged(format!("{}: {e}", path.display())),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Loaded::Missing),
        Err(e) => Err(e),
    }
}

/// Replaces the file with `meta`, durably. Blocking (a few milliseconds: two fsyncs).
pub fn store(path: &Path, meta: &DiskMeta) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&meta.encode())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lineage::meta::MetaRole;

    #[test]
    fn store_then_load_and_damage_is_reported() {
        let dir = std::env::temp_dir().join(format!("lineage-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = default_path(&dir.join("vm.img"));
        assert!(matches!(load(&p).unwrap(), Loaded::Missing));
        let m = DiskMeta::new(1 << 20, 4096, MetaRole::Backup);
        store(&p, &m).unwrap();
        match load(&p).unwrap() {
            Loaded::Found(x) => assert_eq!(x, m),
            other => panic!("{other:?}"),
        }
        std::fs::write(&p, b"remus-diskrep-lineage 1 crc32c=00000000\n{}").unwrap();
        assert!(matches!(load(&p).unwrap(), Loaded::Damaged(d) if d.contains("checksum")));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
