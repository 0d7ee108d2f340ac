//! Storage failures are clean failures: under injected faults (503, reset, cut response, a
//! server that never answers, a wrong bucket) wal-push and wal-fetch end within the retry
//! timeout with exit 1 / 128 and one error line, never a panic; no multipart upload is left
//! open; S3 writes are create-only; temporary files of killed pushes are swept.

#[allow(dead_code)]
#[path = "support/storage.rs"]
mod faults;
mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use faults::{Blackhole, Fault, Match, Proxy, Tmpfs};
use support::*;

/// The retry timeout the fault tests run with, and the bound they allow on top of it.
const RETRY: u64 = 3;
const MARGIN: Duration = Duration::from_secs(5);

fn s3_vars(port: u16, bucket: &str, retry: u64) -> Vec<(String, String)> {
    let v = |k: &str, val: &str| (k.to_string(), val.to_string());
    vec![
        v("WALE_S3_PREFIX", &format!("s3://{bucket}/cluster-a")),
        v("AWS_ENDPOINT", &format!("http://127.0.0.1:{port}")),
        v("AWS_ACCESS_KEY_ID", S3_KEY),
        v("AWS_SECRET_ACCESS_KEY", S3_SECRET),
        v("AWS_REGION", "us-east-1"),
        v("AWS_S3_FORCE_PATH_STYLE", "true"),
        v("WALKEEPER_RETRY_TIMEOUT", &retry.to_string()),
    ]
}

/// A data directory holding one segment; `small` makes it compress to a single-request upload,
/// else it takes a multipart upload.
struct Site {
    _scratch: Scratch,
    pgdata: PathBuf,
}

const SEG: &str = "000000010000000000000001";

impl Site {
    fn new(seed: u64, small: bool) -> Site {
        let scratch = Scratch::new();
        let pgdata = fake_pgdata(&scratch, "data");
        std::fs::write(pgdata.join("pg_wal").join(SEG), segment(seed, small)).unwrap();
        Site {
            _scratch: scratch,
            pgdata,
        }
    }

    fn push(&self, vars: &[(String, String)]) -> (Output, Duration) {
        let t = Instant::now();
        let out = run(&["wal-push", &format!("pg_wal/{SEG}")], vars, &self.pgdata);
        (out, t.elapsed())
    }

    fn fetch(&self, vars: &[(String, String)]) -> (Output, Duration, PathBuf) {
        let rel = format!("pg_wal/fetched-{}", rand_suffix());
        let t = Instant::now();
        let out = run(&["wal-fetch", SEG, &rel], vars, &self.pgdata);
        (out, t.elapsed(), self.pgdata.join(rel))
    }

    fn segment(&self) -> Vec<u8> {
        std::fs::read(self.pgdata.join("pg_wal").join(SEG)).unwrap()
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn segment(seed: u64, small: bool) -> Vec<u8> {
    let mut v = synthetic_segment(SEG, seed);
    if small {
        v[8192..].fill(0);
        v[10_000] = seed as u8;
    }
    v
}

/// Asserts a failure: exit `code`, exactly one error line that contains `cause`, no panic.
fn assert_clean_failure(out: &Output, code: i32, cause: &str) -> String {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "{err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(lines.len(), 1, "expected one error line:\n{err}");
    assert!(
        lines[0].contains(cause),
        "{:?} does not name {cause:?}",
        lines[0]
    );
    lines[0].to_string()
}

/// Multipart uploads the server holds open: s3s-fs has no ListMultipartUploads, so this lists
/// its upload state files (`.upload-<id>.json`, `.upload_id-<id>.part-<n>`) in its root.
fn open_uploads(s3: &S3) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(&s3.root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".upload"))
        .collect();
    out.sort();
    out
}

fn archived(s3: &S3) -> Vec<String> {
    s3.objects()
        .into_iter()
        .filter(|o| o.starts_with("cluster-a/wal_005/") && !o.contains(".upload"))
        .collect()
}

/// Pushes through `fault` (applied to every matching request): a clean exit 1 within the retry
/// timeout, nothing stored, no upload open; then the same push without the fault succeeds and
/// the archived segment reads back byte-identical.
fn fails_cleanly_then_succeeds(small: bool, on: Match, fault: Fault) {
    let s3 = S3::start();
    let proxy = Proxy::start(s3.port);
    let site = Site::new(1, small);
    let vars = s3_vars(proxy.port, S3_BUCKET, RETRY);
    proxy.fault(on, fault, usize::MAX);
    let (out, took) = site.push(&vars);
    assert_clean_failure(&out, 1, SEG);
    assert!(proxy.count(on) >= 2, "the failed request was not retried");
    assert!(
        took < Duration::from_secs(RETRY) + MARGIN,
        "took {took:?} with a {RETRY} s retry timeout"
    );
    assert_eq!(open_uploads(&s3), Vec::<String>::new(), "uploads left open");
    if fault != Fault::Cut {
        assert_eq!(archived(&s3), Vec::<String>::new());
    }
    proxy.clear();
    let (out, _) = site.push(&vars);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(archived(&s3).len(), 1);
    assert_eq!(open_uploads(&s3), Vec::<String>::new(), "uploads left open");
    let (out, _, dest) = site.fetch(&s3_vars(s3.port, S3_BUCKET, RETRY));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        std::fs::read(dest).unwrap() == site.segment(),
        "fetched bytes differ"
    );
}

#[test]
fn push_fails_cleanly_when_every_multipart_completion_gets_503() {
    fails_cleanly_then_succeeds(false, Match::Complete, Fault::Unavailable);
}

#[test]
fn push_fails_cleanly_when_every_multipart_completion_is_reset() {
    fails_cleanly_then_succeeds(false, Match::Complete, Fault::Reset);
}

#[test]
fn push_fails_cleanly_when_every_multipart_completion_answer_is_cut() {
    fails_cleanly_then_succeeds(false, Match::Complete, Fault::Cut);
}

#[test]
fn push_fails_cleanly_when_every_single_put_gets_503() {
    fails_cleanly_then_succeeds(true, Match::Put, Fault::Unavailable);
}

#[test]
fn push_fails_cleanly_when_every_single_put_is_reset() {
    fails_cleanly_then_succeeds(true, Match::Put, Fault::Reset);
}

#[test]
fn push_fails_cleanly_when_every_part_upload_is_reset() {
    fails_cleanly_then_succeeds(false, Match::Put, Fault::Reset);
}

/// One cut answer to the completion: the object was stored, the retry finds it there with the
/// same bytes, and the push succeeds within the same call.
#[test]
fn push_succeeds_when_one_completion_answer_is_cut() {
    let s3 = S3::start();
    let proxy = Proxy::start(s3.port);
    let site = Site::new(2, false);
    proxy.fault(Match::Complete, Fault::Cut, 1);
    let (out, _) = site.push(&s3_vars(proxy.port, S3_BUCKET, RETRY));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(proxy.count(Match::Complete), 2);
    assert_eq!(open_uploads(&s3), Vec::<String>::new(), "uploads left open");
    let (out, _, dest) = site.fetch(&s3_vars(s3.port, S3_BUCKET, RETRY));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(std::fs::read(dest).unwrap() == site.segment());
}

#[test]
fn a_server_that_never_answers_ends_push_and_fetch_within_the_retry_timeout() {
    let hole = Blackhole::start();
    let site = Site::new(3, false);
    let vars = s3_vars(hole.port, S3_BUCKET, RETRY);
    let (out, took) = site.push(&vars);
    assert_clean_failure(&out, 1, SEG);
    assert!(
        took < Duration::from_secs(RETRY) + MARGIN,
        "push took {took:?}"
    );
    let (out, took, _) = site.fetch(&vars);
    assert_clean_failure(&out, 128, SEG);
    assert!(
        took < Duration::from_secs(RETRY) + MARGIN,
        "fetch took {took:?}"
    );
}

/// A completion request that is never answered: the push still ends within the retry timeout
/// (plus the abort's short budget), and the upload is aborted.
#[test]
fn a_completion_that_never_answers_ends_push_within_the_retry_timeout() {
    let s3 = S3::start();
    let proxy = Proxy::start(s3.port);
    let site = Site::new(6, false);
    proxy.fault(Match::Complete, Fault::Hold, usize::MAX);
    let (out, took) = site.push(&s3_vars(proxy.port, S3_BUCKET, RETRY));
    assert_clean_failure(&out, 1, SEG);
    assert!(
        took < Duration::from_secs(RETRY) + MARGIN,
        "push took {took:?}"
    );
    assert_eq!(open_uploads(&s3), Vec::<String>::new(), "uploads left open");
}

#[test]
fn a_missing_bucket_fails_at_once_naming_the_bucket() {
    let s3 = S3::start();
    let site = Site::new(4, true);
    // A long retry timeout: the failure must not wait for it.
    let vars = s3_vars(s3.port, "no-such-bucket", 30);
    let (out, took) = site.push(&vars);
    let line = assert_clean_failure(&out, 1, "\"no-such-bucket\"");
    assert!(line.contains("not retried"), "{line}");
    assert!(took < Duration::from_secs(5), "push took {took:?}");
    // Not "missing from the archive" (74): restore must stop.
    let (out, took, _) = site.fetch(&vars);
    assert_clean_failure(&out, 128, "\"no-such-bucket\"");
    assert!(took < Duration::from_secs(5), "fetch took {took:?}");
}

#[test]
fn a_refused_bucket_name_fails_at_once() {
    let s3 = S3::start();
    let site = Site::new(5, true);
    let vars = s3_vars(s3.port, "Bad_Bucket_Name", 30);
    let (out, took) = site.push(&vars);
    let line = assert_clean_failure(&out, 1, "Bad_Bucket_Name");
    assert!(line.contains("not retried"), "{line}");
    assert!(took < Duration::from_secs(5), "push took {took:?}");
}

/// Writer A's final request is held at the proxy while writer B stores different bytes under
/// the same key; released, A's create-only request is refused: exactly one writer wins and
/// the object holds the winner's bytes.
fn racing_writers(small: bool, held: Match) {
    let s3 = S3::start();
    let proxy = Proxy::start(s3.port);
    let a = Site::new(10, small);
    let b = Site::new(11, small);
    assert!(a.segment() != b.segment());
    proxy.fault(held, Fault::Hold, 1);
    let a_vars = s3_vars(proxy.port, S3_BUCKET, 30);
    let pgdata = a.pgdata.clone();
    let writer_a =
        std::thread::spawn(move || run(&["wal-push", &format!("pg_wal/{SEG}")], &a_vars, &pgdata));
    wait_until(
        "writer A's request to be held",
        Duration::from_secs(30),
        || proxy.held() == 1,
    );
    let (out, _) = b.push(&s3_vars(s3.port, S3_BUCKET, RETRY));
    assert_eq!(out.status.code(), Some(0), "writer B: {}", stderr(&out));
    proxy.release();
    let out_a = writer_a.join().unwrap();
    // A sees the archive hold other bytes under its segment's name.
    assert_clean_failure(&out_a, 3, SEG);
    assert_eq!(archived(&s3).len(), 1);
    let (out, _, dest) = b.fetch(&s3_vars(s3.port, S3_BUCKET, RETRY));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        std::fs::read(dest).unwrap() == b.segment(),
        "not the winner's bytes"
    );
    assert_eq!(open_uploads(&s3), Vec::<String>::new(), "uploads left open");
}

#[test]
fn a_create_only_multipart_upload_refuses_to_overwrite_a_racing_writers_object() {
    racing_writers(false, Match::Complete);
}

#[test]
fn a_create_only_put_refuses_to_overwrite_a_racing_writers_object() {
    racing_writers(true, Match::Put);
}

fn tmp_files(dir: &Path) -> Vec<(PathBuf, u64)> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| Some((e.path(), e.metadata().ok()?.len())))
                .collect()
        })
        .unwrap_or_default()
}

/// Pushes killed mid-write on a small file system leave temporary files that would fill it;
/// later pushes sweep them and succeed with no manual cleanup.
#[test]
fn temporary_files_of_killed_pushes_are_swept_by_later_pushes() {
    let fs = Tmpfs::mount("20m");
    let archive = fs.path.join("archive");
    let tmp_dir = archive.join(".walkeeper-tmp");
    let site = Site::new(20, false);
    // Incompressible past its header: every push writes ~16 MiB.
    let mut seg = site.segment();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for b in seg[8192..].iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(site.pgdata.join("pg_wal").join(SEG), &seg).unwrap();
    let vars = vec![
        (
            "WALG_FILE_PREFIX".to_string(),
            archive.display().to_string(),
        ),
        ("WALG_COMPRESSION_METHOD".to_string(), "lz4".to_string()),
    ];
    let mut stale_bytes = 0u64;
    let mut killed_mid_write = 0;
    for _ in 0..8 {
        let before: Vec<PathBuf> = tmp_files(&tmp_dir).into_iter().map(|(p, _)| p).collect();
        let mut child = command(&["wal-push", &format!("pg_wal/{SEG}")], &vars, &site.pgdata)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Kill it (by its pid) once its temporary file holds at least 4 MiB.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut killed = false;
        while Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            let growing = tmp_files(&tmp_dir)
                .into_iter()
                .any(|(p, len)| !before.contains(&p) && len >= 4 << 20);
            if growing {
                child.kill().unwrap();
                killed = true;
                break;
            }
        }
        let _ = child.wait();
        if killed {
            let left: u64 = tmp_files(&tmp_dir)
                .into_iter()
                .filter(|(p, _)| !before.contains(p))
                .map(|(_, l)| l)
                .sum();
            if left > 0 {
                killed_mid_write += 1;
                stale_bytes += left;
            }
        }
        // A push that finished after all: take its object away so the next one writes again.
        for (p, _) in tmp_files(&archive.join("wal_005")) {
            std::fs::remove_file(p).unwrap();
        }
    }
    assert!(
        killed_mid_write >= 3 && stale_bytes > 20 << 20,
        "only {killed_mid_write} kills landed mid-write ({stale_bytes} stale bytes): the test proves nothing"
    );
    // Stale files are swept once they are older than the sweep's minimum age (2 s).
    wait_until(
        "the last stale file to age",
        Duration::from_secs(10),
        || {
            tmp_files(&tmp_dir).iter().all(|(p, _)| {
                std::fs::metadata(p)
                    .and_then(|m| m.modified())
                    .is_ok_and(|m| m.elapsed().unwrap_or_default() > Duration::from_millis(2500))
            })
        },
    );
    let (out, _) = site.push(&vars);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        tmp_files(&tmp_dir),
        Vec::new(),
        "stale temporary files left"
    );
    assert_eq!(tmp_files(&archive.join("wal_005")).len(), 1);
}
