//! Where QEMU maps the guest RAM file, and who else can write it.
//!
//! The uffd and soft-dirty trackers watch QEMU's page tables, so they see only writes made
//! through QEMU's own mapping. A vhost-user back end (or anything else) that maps the RAM file
//! writable, or holds it open for writing, writes past them: [`other_writers`] finds such
//! processes so that those trackers are refused. (Kernel vhost-net writes through QEMU's
//! mapping and is seen.)

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// A contiguous part of QEMU's mapping of the RAM file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Its address in QEMU.
    pub addr: u64,
    /// The RAM page (file offset / 4096) at `addr`.
    pub first_page: u64,
    pub pages: u64,
}

/// One line of /proc/PID/maps that maps the file (device, inode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMap {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    pub writable: bool,
    pub shared: bool,
}

/// The lines of a maps file that map the file with this device and inode.
pub fn parse_maps(text: &str, dev: (u32, u32), ino: u64) -> Vec<FileMap> {
    let mut v = Vec::new();
    for line in text.lines() {
        let mut f = line.split_ascii_whitespace();
        let (Some(range), Some(perms), Some(off), Some(d), Some(i)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        if i.parse::<u64>().ok() != Some(ino) {
            continue;
        }
        let Some((maj, min)) = d.split_once(':') else {
            continue;
        };
        let (Ok(maj), Ok(min)) = (u32::from_str_radix(maj, 16), u32::from_str_radix(min, 16))
        else {
            continue;
        };
        if (maj, min) != dev {
            continue;
        }
        let Some((s, e)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end), Ok(offset)) = (
            u64::from_str_radix(s, 16),
            u64::from_str_radix(e, 16),
            u64::from_str_radix(off, 16),
        ) else {
            continue;
        };
        let p = perms.as_bytes();
        v.push(FileMap {
            start,
            end,
            offset,
            writable: p.get(1) == Some(&b'w'),
            shared: p.get(3) == Some(&b's'),
        });
    }
    v
}

/// QEMU's mapping of the whole RAM file as segments, checked: shared, writable, every page
/// mapped exactly once. Anything else (a second mapping, a partial one) would let writes pass
/// unseen or leave pages untracked.
pub fn segments(maps: &[FileMap], ram_len: u64) -> Result<Vec<Segment>, String> {
    let mut m: Vec<&FileMap> = maps.iter().collect();
    m.sort_by_key(|x| x.offset);
    let mut next = 0u64;
    let mut v = Vec::new();
    for x in m {
        if !x.shared || !x.writable {
            return Err(format!(
                "QEMU maps the RAM file at {:#x} {} (expected one shared, writable mapping)",
                x.start,
                if x.shared { "read-only" } else { "private" }
            ));
        }
        if x.offset != next || x.offset % 4096 != 0 || x.start % 4096 != 0 {
            return Err(format!(
                "QEMU maps the RAM file more than once or with gaps (a mapping at file offset {:#x}, expected {next:#x})",
                x.offset
            ));
        }
        let len = x.end - x.start;
        v.push(Segment {
            addr: x.start,
            first_page: x.offset / 4096,
            pages: len / 4096,
        });
        next += len;
    }
    if next != ram_len {
        return Err(format!(
            "QEMU maps {next} bytes of the {ram_len}-byte RAM file (is --ram the file of this QEMU's memory-backend-file?)"
        ));
    }
    Ok(v)
}

fn dev_ino(path: &Path) -> Result<((u32, u32), u64), String> {
    let md = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let d = md.dev();
    Ok(((libc::major(d), libc::minor(d)), md.ino()))
}

/// QEMU's mapping of the RAM file `ram` (`ram_len` bytes).
pub fn locate(pid: i32, ram: &Path, ram_len: u64) -> Result<Vec<Segment>, String> {
    let (dev, ino) = dev_ino(ram)?;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_err(|e| format!("/proc/{pid}/maps: {e}"))?;
    segments(&parse_maps(&maps, dev, ino), ram_len)
}

/// Processes other than `except` that could write the RAM file without going through QEMU's
/// mapping: they map it writable or hold it open for writing. "PID (comm): how" each.
pub fn other_writers(ram: &Path, except: &[i32]) -> Result<Vec<String>, String> {
    let (dev, ino) = dev_ino(ram)?;
    let mut found = Vec::new();
    let procs = std::fs::read_dir("/proc").map_err(|e| format!("/proc: {e}"))?;
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if except.contains(&pid) {
            continue;
        }
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let who = format!("{pid} ({})", comm.trim());
        if let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) {
            if parse_maps(&maps, dev, ino)
                .iter()
                .any(|m| m.writable && m.shared)
            {
                found.push(format!("{who} maps it writable"));
                continue;
            }
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(md) = std::fs::metadata(fd.path()) else {
                continue;
            };
            let d = md.dev();
            if md.ino() != ino || (libc::major(d), libc::minor(d)) != dev {
                continue;
            }
            let info = std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .unwrap_or_default();
            let flags = info
                .lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|f| i64::from_str_radix(f.trim(), 8).ok())
                .unwrap_or(libc::O_RDWR as i64);
            if flags & libc::O_ACCMODE as i64 != libc::O_RDONLY as i64 {
                found.push(format!("{who} has it open for writing"));
                break;
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55dbb8040000-55dbb85d7000 r-xp 00407000 fe:00 10199113                   /usr/bin/qemu-system-x86_64
7f366ffff000-7f3673fff000 rw-s 00000000 00:1b 14                         /dev/shm/vm-ram
7f3673fff000-7f3677fff000 rw-s 04000000 00:1b 14                         /dev/shm/vm-ram
7f3677fff000-7f3678000000 ---p 00000000 00:00 0
7f3680000000-7f3680001000 rw-s 00000000 00:1c 14                         /other-fs-same-inode
";

    #[test]
    fn finds_the_mapping_by_device_and_inode_split_or_not() {
        let m = parse_maps(MAPS, (0, 0x1b), 14);
        assert_eq!(m.len(), 2);
        let s = segments(&m, 128 << 20).unwrap();
        assert_eq!(
            s,
            vec![
                Segment {
                    addr: 0x7f366ffff000,
                    first_page: 0,
                    pages: 16384
                },
                Segment {
                    addr: 0x7f3673fff000,
                    first_page: 16384,
                    pages: 16384
                }
            ]
        );
    }

    #[test]
    fn a_second_partial_or_private_mapping_is_refused() {
        let mut m = parse_maps(MAPS, (0, 0x1b), 14);
        assert!(segments(&m, 256 << 20)
            .unwrap_err()
            .contains("maps 134217728 bytes"));
        let twice = m[0].clone();
        m.push(twice);
        assert!(segments(&m, 128 << 20)
            .unwrap_err()
            .contains("more than once"));
        let mut p = parse_maps(MAPS, (0, 0x1b), 14);
        p[1].shared = false;
        assert!(segments(&p, 128 << 20).unwrap_err().contains("private"));
        assert!(segments(&[], 4096).is_err());
    }

    #[test]
    fn a_process_writing_our_file_is_found_and_we_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ram");
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        let me = std::process::id() as i32;
        let _rw = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let w = other_writers(&path, &[]).unwrap();
        assert!(
            w.iter()
                .any(|s| s.starts_with(&format!("{me} ")) && s.contains("open for writing")),
            "{w:?}"
        );
        assert!(other_writers(&path, &[me]).unwrap().is_empty());
        drop(_rw);
        let _ro = std::fs::File::open(&path).unwrap();
        assert!(
            other_writers(&path, &[]).unwrap().is_empty(),
            "readers are harmless"
        );
    }
}
