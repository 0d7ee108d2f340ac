//! The OpenStack Swift store against a real Swift (Debian's packages, tempauth, one replica on
//! loopback): token renewal, create-only writes, large objects, paged listings, and the errors
//! a Swift prefix gets when its settings are missing or wrong.

mod support;

use std::time::{Duration, Instant};

use support::stores::{already_exists, check_paged_listings, noise, runtime, store};
use support::swift::{Keystone, Swift, SWIFT_CONTAINER, SWIFT_PASSWORD};
use support::*;

#[test]
fn expired_and_revoked_tokens_are_renewed_without_failing_a_call() {
    // tempauth tokens that live 2 seconds.
    let swift = Swift::start(2);
    let s = store(&swift.vars("expiry"));
    let rt = runtime();
    rt.block_on(async {
        s.put_bytes("a", bytes::Bytes::from_static(b"first"))
            .await
            .unwrap();
        // Well past the token's life: the store renews before using it again.
        let issued = Instant::now();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(issued.elapsed() > Duration::from_secs(4));
        s.put_bytes("b", bytes::Bytes::from_static(b"second"))
            .await
            .unwrap();
        assert_eq!(&s.get_bytes("a").await.unwrap()[..], b"first");
        // The server forgets every token it issued: the next request is answered 401, and the
        // store authenticates again instead of failing.
        swift.forget_tokens();
        assert_eq!(&s.get_bytes("b").await.unwrap()[..], b"second");
        let listed: Vec<String> = s
            .list("")
            .await
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(listed, ["a", "b"]);
    });
}

#[test]
fn large_objects_are_segmented_create_only_and_deleted_with_their_segments() {
    let swift = Swift::start(3600);
    // WAL-G's names this time.
    let s = store(&[
        (
            "WALG_SWIFT_PREFIX".to_string(),
            format!("swift://{SWIFT_CONTAINER}/large"),
        ),
        ("OS_AUTH_URL".to_string(), swift.auth_url()),
        (
            "OS_USERNAME".to_string(),
            support::swift::SWIFT_USER.to_string(),
        ),
        ("OS_PASSWORD".to_string(), SWIFT_PASSWORD.to_string()),
    ]);
    let rt = runtime();
    let data = noise(12 * 1024 * 1024 + 12345, 7);
    let segments = format!("{SWIFT_CONTAINER}_segments");
    // The server's own listing (a blocking client: off the runtime's worker).
    let seglist = || tokio::task::block_in_place(|| swift.list(&segments));
    rt.block_on(async {
        let d = data.clone();
        let n = s.put_stream("big", move |w| w.write_all(&d)).await.unwrap();
        assert_eq!(n, data.len() as u64);
        let got = s.get_bytes("big").await.unwrap();
        assert!(
            got[..] == data[..],
            "the large object differs after the round trip"
        );
        let meta = s.head("big").await.unwrap().unwrap();
        assert_eq!(meta.size, data.len() as u64);
        // 5 MiB parts: three segments, and the manifest in the archive's container.
        assert_eq!(seglist().len(), 3, "{:?}", seglist());
        let listed = s.list("").await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].1.size, data.len() as u64);

        // A second writer of the same name is refused, and its segments are removed.
        let other = noise(11 * 1024 * 1024, 8);
        let e = s
            .put_stream("big", move |w| w.write_all(&other))
            .await
            .unwrap_err();
        assert!(already_exists(&e), "{e}");
        assert_eq!(seglist().len(), 3);
        assert!(s.get_bytes("big").await.unwrap()[..] == data[..]);
        // A small object is refused the same way.
        let e = s
            .put_bytes("big", bytes::Bytes::from_static(b"x"))
            .await
            .unwrap_err();
        assert!(already_exists(&e), "{e}");

        // Deleting the manifest deletes its segments.
        s.delete("big").await.unwrap();
        assert!(s.head("big").await.unwrap().is_none());
        assert_eq!(seglist(), Vec::<(String, u64)>::new());
    });
}

#[test]
fn listings_page_through_more_than_a_thousand_objects() {
    let swift = Swift::start(3600);
    check_paged_listings(&store(&swift.vars("paged")));
}

#[test]
fn a_swift_prefix_without_its_settings_names_the_missing_variables() {
    let scratch = Scratch::new();
    let pgdata = fake_pgdata(&scratch, "data");
    let vars = vec![(
        "WALE_SWIFT_PREFIX".to_string(),
        "swift://walkeeper/p".to_string(),
    )];
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
    let err = stderr(&out);
    for name in ["SWIFT_AUTHURL", "SWIFT_USER", "SWIFT_PASSWORD"] {
        assert!(err.contains(name), "{err}");
    }
    assert!(!err.contains("no archive prefix"), "{err}");
}

#[test]
fn wrong_credentials_and_a_missing_container_fail_loudly_without_showing_the_password() {
    let swift = Swift::start(3600);
    let scratch = Scratch::new();
    let pgdata = fake_pgdata(&scratch, "data");
    let name = "000000010000000000000001";
    std::fs::write(pgdata.join("pg_wal").join(name), synthetic_segment(name, 3)).unwrap();
    let wrong = "wrong-password-not-to-be-shown";
    let mut vars = swift.vars("creds");
    for (k, v) in vars.iter_mut() {
        if k == "SWIFT_PASSWORD" {
            *v = wrong.to_string();
        }
    }
    vars.push(("WALKEEPER_LOG".into(), "debug".into()));
    let started = Instant::now();
    let out = run(&["wal-push", &format!("pg_wal/{name}")], &vars, &pgdata);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("401"), "{err}");
    assert!(
        !err.contains(wrong) && !err.contains(SWIFT_PASSWORD),
        "{err}"
    );
    // Refused credentials are permanent: no retrying for the whole retry timeout.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    let out = run(&["wal-fetch", name, "pg_wal/RECOVERYXLOG"], &vars, &pgdata);
    assert_eq!(out.status.code(), Some(128), "{}", stderr(&out));

    // A container that does not exist is an error, never "not in the archive".
    let mut vars = swift.vars("p");
    for (k, v) in vars.iter_mut() {
        if k == "WALE_SWIFT_PREFIX" {
            *v = "swift://no-such-container/p".to_string();
        }
    }
    let out = run(&["wal-fetch", name, "pg_wal/RECOVERYXLOG"], &vars, &pgdata);
    assert_eq!(out.status.code(), Some(128), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no-such-container"),
        "{}",
        stderr(&out)
    );
    let out = run(&["wal-push", &format!("pg_wal/{name}")], &vars, &pgdata);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
}

// Passed 4 of 7 runs here: Keystone on sqlite (served by wsgiref) sometimes answers every write
// of the catalog registration with 500 "database is locked" until the 60 s poll gives up.
// Run it by hand with `cargo test --test swift -- --ignored keystone`.
#[test]
#[ignore = "flaky: Keystone on sqlite sometimes answers 500 'database is locked' to catalog writes"]
fn keystone_v3_tokens_archive_and_restore_segments_byte_identical() {
    let ks = Keystone::start();
    let swift = Swift::start_keystone(&ks);
    let scratch = Scratch::new();
    let pgdata = fake_pgdata(&scratch, "data");
    let vars = ks.vars("keystone");
    // Two segments: one of them large enough to be stored as a segmented object.
    for (i, name) in ["000000010000000000000001", "000000010000000000000002"]
        .iter()
        .enumerate()
    {
        let bytes = synthetic_segment(name, 10 + i as u64);
        std::fs::write(pgdata.join("pg_wal").join(name), &bytes).unwrap();
        let out = run(&["wal-push", &format!("pg_wal/{name}")], &vars, &pgdata);
        assert_eq!(out.status.code(), Some(0), "wal-push: {}", stderr(&out));
        let out = run(&["wal-fetch", name, "pg_wal/RECOVERYXLOG"], &vars, &pgdata);
        assert_eq!(out.status.code(), Some(0), "wal-fetch: {}", stderr(&out));
        let got = std::fs::read(pgdata.join("pg_wal/RECOVERYXLOG")).unwrap();
        assert!(got == bytes, "{name} differs after the round trip");
    }
    let out = run(
        &[
            "wal-fetch",
            "000000010000000000000003",
            "pg_wal/RECOVERYXLOG",
        ],
        &vars,
        &pgdata,
    );
    assert_eq!(out.status.code(), Some(74), "{}", stderr(&out));
    assert!(swift
        .list(SWIFT_CONTAINER)
        .iter()
        .any(|(n, _)| n == "keystone/wal_005/000000010000000000000001.lz4"));
    // A wrong password: Keystone refuses it (401), a fatal error, never "missing".
    let mut bad = vars.clone();
    for (k, v) in bad.iter_mut() {
        if k == "OS_PASSWORD" {
            *v = "wrong".into();
        }
    }
    let out = run(
        &[
            "wal-fetch",
            "000000010000000000000001",
            "pg_wal/RECOVERYXLOG",
        ],
        &bad,
        &pgdata,
    );
    assert_eq!(out.status.code(), Some(128), "{}", stderr(&out));
}
