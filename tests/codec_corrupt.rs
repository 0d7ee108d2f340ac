//! A damaged archived object never restores as a clean, short file: wal-fetch of a cut or
//! bit-flipped lz4 object of a real WAL segment exits 128 and leaves nothing at the destination.

mod support;

use std::path::{Path, PathBuf};

use support::*;

/// Offsets of the size words, block checksums, end mark and content checksum of a walkeeper
/// lz4 frame (7-byte descriptor, block checksums).
fn block_marks(frame: &[u8]) -> Vec<usize> {
    let mut marks = vec![4, 7];
    let mut at = 7;
    loop {
        let word = u32::from_le_bytes(frame[at..at + 4].try_into().unwrap());
        marks.push(at);
        marks.push(at + 4);
        if word == 0 {
            marks.push(at + 8);
            return marks;
        }
        let size = (word & !(1 << 31)) as usize;
        marks.push(at + 4 + size);
        at += 4 + size + 4;
    }
}

/// Every 8th block boundary and 1..4 bytes either side of it, the last 1..8 bytes missing,
/// and a few random offsets (the exhaustive set runs in-process in the codec's unit tests).
fn sample_cuts(frame: &[u8]) -> Vec<usize> {
    let marks = block_marks(frame);
    let mut cuts = std::collections::BTreeSet::new();
    for (i, &m) in marks.iter().enumerate() {
        if i % 8 != 0 && i + 6 < marks.len() {
            continue;
        }
        for d in [-4i64, -1, 0, 1, 4] {
            let c = m as i64 + d;
            if c > 0 && (c as usize) < frame.len() {
                cuts.insert(c as usize);
            }
        }
    }
    for k in 1..=8 {
        cuts.insert(frame.len() - k);
    }
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..10 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        cuts.insert((x % frame.len() as u64) as usize);
    }
    cuts.insert(0);
    cuts.into_iter().collect()
}

struct Archived {
    _scratch: Scratch,
    vars: Vec<(String, String)>,
    pgdata: PathBuf,
    object: PathBuf,
    frame: Vec<u8>,
    segment: Vec<u8>,
    name: String,
}

/// initdb writes a real first WAL segment; wal-push archives it as lz4.
fn archive_a_real_segment() -> Archived {
    let scratch = Scratch::new();
    let pg = Pg::init(&scratch, "data", "");
    let pgdata = pg.data.clone();
    let name = "000000010000000000000001".to_string();
    let segment = std::fs::read(pgdata.join("pg_wal").join(&name)).unwrap();
    assert_eq!(segment.len(), 16 << 20);
    let store = scratch.mkdir("archive");
    let vars = vec![
        ("WALG_FILE_PREFIX".to_string(), store.display().to_string()),
        ("WALG_COMPRESSION_METHOD".to_string(), "lz4".to_string()),
        ("WALKEEPER_RETRY_TIMEOUT".to_string(), "1".to_string()),
    ];
    let out = run(&["wal-push", &format!("pg_wal/{name}")], &vars, &pgdata);
    assert!(out.status.success(), "wal-push: {}", stderr(&out));
    let object = list_files(&store)
        .into_iter()
        .find(|f| f.ends_with(&format!("{name}.lz4")))
        .map(|f| store.join(f))
        .expect("the segment's lz4 object");
    let frame = std::fs::read(&object).unwrap();
    Archived {
        _scratch: scratch,
        vars,
        pgdata,
        object,
        frame,
        segment,
        name,
    }
}

impl Archived {
    /// Stores `bytes` as the object and runs wal-fetch into pg_wal/RECOVERYXLOG.
    fn fetch(&self, bytes: &[u8]) -> (Option<i32>, String, Option<Vec<u8>>) {
        std::fs::write(&self.object, bytes).unwrap();
        let dest = self.pgdata.join("pg_wal/RECOVERYXLOG");
        let _ = std::fs::remove_file(&dest);
        let out = run(
            &["wal-fetch", &self.name, "pg_wal/RECOVERYXLOG"],
            &self.vars,
            &self.pgdata,
        );
        (out.status.code(), stderr(&out), std::fs::read(&dest).ok())
    }

    fn expect_corrupt(&self, bytes: &[u8], what: &str) {
        let (code, err, left) = self.fetch(bytes);
        assert_eq!(
            code,
            Some(128),
            "{what}: wal-fetch exit code; stderr: {err}"
        );
        assert!(
            left.is_none(),
            "{what}: wal-fetch left a file at the destination"
        );
        assert!(
            err.contains(&format!("{}.lz4", self.name)),
            "{what}: the error names the object: {err}"
        );
        assert!(
            no_temp_files(&self.pgdata.join("pg_wal")),
            "{what}: a temporary file was left in pg_wal"
        );
    }
}

fn no_temp_files(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .all(|e| !e.file_name().to_string_lossy().contains("RECOVERYXLOG"))
}

#[test]
fn wal_fetch_of_a_cut_or_bit_flipped_lz4_segment_exits_128_and_leaves_no_file() {
    let a = archive_a_real_segment();
    // The intact object restores byte-identical.
    let (code, err, got) = a.fetch(&a.frame);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        got.as_deref() == Some(&a.segment[..]),
        "restored bytes differ"
    );

    for cut in sample_cuts(&a.frame) {
        a.expect_corrupt(
            &a.frame[..cut],
            &format!("cut at {cut} of {}", a.frame.len()),
        );
    }
    let marks = block_marks(&a.frame);
    let mut flips: Vec<usize> = vec![0, 4, 5, 6, a.frame.len() - 1, a.frame.len() - 5];
    flips.extend(marks.iter().step_by(16).map(|m| m + 1));
    flips.extend([a.frame.len() / 3, a.frame.len() / 2 + 17]);
    let mut bad = a.frame.clone();
    for i in flips.into_iter().filter(|&i| i < a.frame.len()) {
        bad[i] ^= 0x10;
        a.expect_corrupt(&bad, &format!("bit 4 of byte {i} flipped"));
        bad[i] ^= 0x10;
    }
}

/// A primary that archives through walkeeper, with one base backup pushed.
struct Backed {
    scratch: Scratch,
    env: PathBuf,
    store: PathBuf,
    primary: Pg,
}

impl Backed {
    fn new() -> Backed {
        let scratch = Scratch::new();
        let backend = Backend::file(&scratch);
        let Backend::File(store) = &backend else {
            unreachable!()
        };
        let store = store.clone();
        let env = backend.envdir(&scratch, &[]);
        let mut primary = Pg::init(
            &scratch,
            "primary",
            &format!(
                "wal_level = replica\narchive_mode = on\narchive_command = '{} --envdir {} wal-push %p'\n",
                walkeeper(),
                env.display()
            ),
        );
        primary.start();
        let b = Backed {
            scratch,
            env,
            store,
            primary,
        };
        let out = b.walkeeper(&["backup-push", b.primary.data.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "backup-push: {}", stderr(&out));
        b
    }

    fn walkeeper(&self, args: &[&str]) -> std::process::Output {
        let mut c = as_postgres(walkeeper());
        c.arg("--envdir").arg(&self.env).args(args);
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PGHOST", &self.primary.sock)
            .env("PGPORT", self.primary.port.to_string())
            .env("PGUSER", "postgres")
            .current_dir(self.scratch.path());
        c.output().unwrap()
    }

    fn part(&self) -> PathBuf {
        let f = list_files(&self.store)
            .into_iter()
            .find(|f| f.ends_with("tar_partitions/part_001.tar.lz4"))
            .expect("the first partition");
        self.store.join(f)
    }
}

#[test]
fn backup_fetch_of_a_cut_or_bit_flipped_partition_fails_and_leaves_nothing_extracted() {
    let b = Backed::new();
    let part = b.part();
    let original = std::fs::read(&part).unwrap();
    let marks = block_marks(&original);
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    // Cut at a block boundary in the middle, just after a size word, and missing only the
    // content checksum, the end mark, or one byte.
    for cut in [
        marks[marks.len() / 2],
        marks[marks.len() / 3] + 4,
        original.len() - 4,
        original.len() - 8,
        original.len() - 1,
    ] {
        cases.push((format!("cut at {cut}"), original[..cut].to_vec()));
    }
    for i in [
        5,
        marks[marks.len() / 2] + 2,
        original.len() / 3,
        original.len() - 2,
    ] {
        let mut bad = original.clone();
        bad[i] ^= 0x04;
        cases.push((format!("bit 2 of byte {i} flipped"), bad));
    }
    for (i, (what, bytes)) in cases.iter().enumerate() {
        std::fs::write(&part, bytes).unwrap();
        let target = b.scratch.path().join(format!("restore-{i}"));
        let out = b.walkeeper(&["backup-fetch", target.to_str().unwrap(), "LATEST"]);
        assert_ne!(out.status.code(), Some(0), "{what}: backup-fetch succeeded");
        assert!(
            stderr(&out).contains("part_001"),
            "{what}: the error names the object: {}",
            stderr(&out)
        );
        let left: Vec<String> = match std::fs::read_dir(&target) {
            Ok(rd) => rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        };
        assert!(
            left.is_empty(),
            "{what}: left behind in the target: {left:?}"
        );
    }
    // The intact partition still restores.
    std::fs::write(&part, &original).unwrap();
    let target = b.scratch.path().join("restore-ok");
    let out = b.walkeeper(&["backup-fetch", target.to_str().unwrap(), "LATEST"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(target.join("global/pg_control").exists());
}
