//! The gs:// store against a real fake-gcs-server on loopback: large objects through resumable
//! uploads in whole 256 KiB chunks, create-only writes, paged listings, the service-account
//! credential chain, and a missing bucket.

#[allow(dead_code)]
#[path = "support/storage.rs"]
mod faults;
mod support;

use support::gcs::{FakeGcs, GCS_BUCKET};
use support::stores::{already_exists, check_paged_listings, noise, runtime, store};
use support::*;

#[test]
fn large_objects_go_up_in_order_byte_identical_and_are_never_overwritten() {
    let gcs = FakeGcs::start();
    let s = store(&gcs.vars("large"));
    let rt = runtime();
    // Not a multiple of the 5 MiB part nor of the 256 KiB chunk.
    let data = noise(12 * 1024 * 1024 + 12345, 7);
    rt.block_on(async {
        let d = data.clone();
        let n = s.put_stream("big", move |w| w.write_all(&d)).await.unwrap();
        assert_eq!(n, data.len() as u64);
        let meta = s.head("big").await.unwrap().unwrap();
        assert_eq!(meta.size, data.len() as u64);
        let got = s.get_bytes("big").await.unwrap();
        assert!(got[..] == data[..], "the large object differs");

        // A second writer of the same name is refused, large or small, and the object keeps
        // its bytes.
        let other = noise(11 * 1024 * 1024, 8);
        let e = s
            .put_stream("big", move |w| w.write_all(&other))
            .await
            .unwrap_err();
        assert!(already_exists(&e), "{e}");
        let e = s
            .put_bytes("big", bytes::Bytes::from_static(b"x"))
            .await
            .unwrap_err();
        assert!(already_exists(&e), "{e}");
        assert!(s.get_bytes("big").await.unwrap()[..] == data[..]);

        s.delete("big").await.unwrap();
        assert!(s.head("big").await.unwrap().is_none());
    });
    // The server holds exactly that object and nothing else (no stray upload objects).
    assert_eq!(gcs.objects(), Vec::<String>::new());
}

#[test]
fn small_writes_are_create_only_at_the_server() {
    let gcs = FakeGcs::start();
    let s = store(&gcs.vars("small"));
    let rt = runtime();
    rt.block_on(async {
        s.put_bytes("a", bytes::Bytes::from_static(b"first"))
            .await
            .unwrap();
    });
    // Straight to the object API with the precondition walkeeper sends: refused.
    let r = reqwest::blocking::Client::new()
        .post(format!(
            "{}/upload/storage/v1/b/{GCS_BUCKET}/o?uploadType=multipart&ifGenerationMatch=0",
            gcs.base()
        ))
        .header("Content-Type", "multipart/related; boundary=b")
        .body("--b\r\nContent-Type: application/json\r\n\r\n{\"name\":\"small/a\"}\r\n--b\r\n\r\nsecond\r\n--b--\r\n")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 412);
    rt.block_on(async {
        let e = s
            .put_bytes("a", bytes::Bytes::from_static(b"second"))
            .await
            .unwrap_err();
        assert!(already_exists(&e), "{e}");
        assert_eq!(&s.get_bytes("a").await.unwrap()[..], b"first");
    });
    assert_eq!(gcs.read("small/a"), b"first");
}

#[test]
fn listings_page_through_more_than_a_thousand_objects() {
    let gcs = FakeGcs::start();
    check_paged_listings(&store(&gcs.vars("paged")));
}

#[test]
fn a_service_account_file_naming_the_server_archives_and_restores_a_segment() {
    let gcs = FakeGcs::start();
    let scratch = Scratch::new();
    let pgdata = fake_pgdata(&scratch, "data");
    let vars = gcs.service_account_vars("sa");
    let name = "000000010000000000000042";
    let seg = synthetic_segment(name, 42);
    std::fs::write(pgdata.join("pg_wal").join(name), &seg).unwrap();
    let out = run(&["wal-push", &format!("pg_wal/{name}")], &vars, &pgdata);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(gcs.objects(), vec![format!("sa/wal_005/{name}.lz4")]);
    let out = run(&["wal-fetch", name, "pg_wal/RECOVERYXLOG"], &vars, &pgdata);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(std::fs::read(pgdata.join("pg_wal/RECOVERYXLOG")).unwrap() == seg);
}

#[test]
fn a_missing_bucket_fails_at_once_naming_it_and_wal_fetch_exits_128() {
    let gcs = FakeGcs::start();
    let scratch = Scratch::new();
    let pgdata = fake_pgdata(&scratch, "data");
    let mut vars = gcs.vars("x");
    vars[0].1 = "gs://no-such-bucket/x".to_string();
    let out = run(
        &[
            "wal-fetch",
            "000000010000000000000001",
            "pg_wal/RECOVERYXLOG",
        ],
        &vars,
        &pgdata,
    );
    assert_eq!(out.status.code(), Some(128), "{}", stderr(&out));
    assert!(stderr(&out).contains("no-such-bucket"), "{}", stderr(&out));
    let name = "000000010000000000000002";
    std::fs::write(pgdata.join("pg_wal").join(name), synthetic_segment(name, 2)).unwrap();
    let out = run(&["wal-push", &format!("pg_wal/{name}")], &vars, &pgdata);
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("no-such-bucket"), "{}", stderr(&out));
}

#[test]
fn a_customer_supplied_key_goes_with_every_request_never_reaches_the_log_and_a_bad_one_is_refused()
{
    let gcs = FakeGcs::start();
    // Through a recording proxy, to see what walkeeper sends.
    let proxy = faults::Proxy::start(gcs.port);
    let scratch = Scratch::new();
    let pgdata = fake_pgdata(&scratch, "data");
    let mut vars = gcs.vars("csek");
    vars[1].1 = format!("127.0.0.1:{}", proxy.port);
    let key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    vars.push(("GCS_ENCRYPTION_KEY".into(), key.into()));
    vars.push(("WALKEEPER_LOG".into(), "debug".into()));
    let name = "000000010000000000000007";
    let seg = synthetic_segment(name, 7);
    std::fs::write(pgdata.join("pg_wal").join(name), &seg).unwrap();
    let out = run(&["wal-push", &format!("pg_wal/{name}")], &vars, &pgdata);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains(key), "the key is in the log");
    let out = run(&["wal-fetch", name, "pg_wal/RECOVERYXLOG"], &vars, &pgdata);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains(key), "the key is in the log");
    assert!(std::fs::read(pgdata.join("pg_wal/RECOVERYXLOG")).unwrap() == seg);
    // Every upload and every read of an object carried the key and its hash; listings and
    // deletes need none.
    let object_requests: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|(m, p, _)| p.starts_with("/upload/") || (m == "GET" && p.contains("/o/")))
        .collect();
    assert!(object_requests.len() >= 2, "{object_requests:?}");
    // The segment is larger than one part: it went up in a resumable session, whose chunks
    // declare their length.
    let chunks: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|(m, p, _)| m == "PUT" && p.contains("upload_id="))
        .collect();
    assert!(!chunks.is_empty(), "no resumable chunk was sent");
    for (_, p, head) in &chunks {
        assert!(
            head.contains("content-length: ") && head.contains("content-range: bytes "),
            "{p}: {head}"
        );
    }
    for (m, p, head) in &object_requests {
        assert!(
            head.contains("x-goog-encryption-algorithm: aes256")
                && head.contains(&format!("x-goog-encryption-key: {}", key.to_lowercase()))
                && head.contains("x-goog-encryption-key-sha256: "),
            "{m} {p} without the key headers"
        );
    }

    let last = vars.len() - 2;
    vars[last].1 = "c2hvcnQ=".into();
    let out = run(&["wal-push", &format!("pg_wal/{name}")], &vars, &pgdata);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("GCS_ENCRYPTION_KEY"),
        "{}",
        stderr(&out)
    );
    let out = run(&["wal-fetch", name, "pg_wal/RECOVERYXLOG"], &vars, &pgdata);
    assert_eq!(out.status.code(), Some(128), "{}", stderr(&out));
}
