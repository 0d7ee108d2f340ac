//! The walkeeper-patroni image in containers: three members, etcd and an S3 server on private
//! Docker networks, built locally and driven through the engine's API (bollard). Skipped, with
//! a message, where no Docker engine answers or `WALKEEPER_CONTAINER_TESTS=0`; see
//! CONTAINER_TESTS.md.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use support::containers::*;
use support::{parse_lsn, seg_of, timeline_1_past};

/// A cluster of `n` members: pg1 first, until it leads and its agent has taken the first
/// backup, then the others, until they stream.
fn cluster_of(test: &str, scope: &str, n: usize) -> Option<(Cluster, usize)> {
    let engine = engine(test)?;
    let mut c = Cluster::new(engine, scope);
    c.add_member(&[]);
    let l = c.wait_leader(Duration::from_secs(120));
    wait_for_backups(&c, l, 1);
    for _ in 1..n {
        c.add_member(&[]);
    }
    for i in 1..n {
        c.wait_streaming(i, Duration::from_secs(120));
    }
    Some((c, l))
}

fn wait_for_backups(c: &Cluster, i: usize, n: usize) {
    c.wait_until(
        &format!("{n} backup(s) in the archive"),
        Duration::from_secs(120),
        |c| c.backup_list(i).len() >= n,
        |c| c.all_logs(),
    );
}

fn server_now(c: &Cluster, i: usize) -> String {
    c.psql(
        i,
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    )
}

fn others(c: &Cluster, l: usize) -> Vec<usize> {
    (0..c.members()).filter(|&i| i != l).collect()
}

#[test]
fn read_write_replication_backups_a_value_is_replicated_backed_up_listed_in_etcd_and_restorable() {
    let Some((mut c, l)) = cluster_of("read_write_replication_backups", "rwrb", 3) else {
        return;
    };
    c.psql(l, "CREATE TABLE kv (k text PRIMARY KEY, v text)");
    c.psql(l, "INSERT INTO kv VALUES ('answer', '42')");
    for i in others(&c, l) {
        c.wait_until(
            &format!("{} to replicate the value", member(i)),
            Duration::from_secs(60),
            |c| {
                c.psql_try(i, "SELECT v FROM kv WHERE k = 'answer'")
                    .as_deref()
                    == Some("42")
            },
            |c| c.all_logs(),
        );
    }

    // A backup through the agent's API: refused without the token, taken with it.
    let (code, body) = c.agent(l, "POST", "/backup-push", "", false);
    assert_eq!(code, 401, "backup-push without the token: {body}");
    let (code, body) = c.agent(l, "POST", "/backup-push", "", true);
    assert_eq!(code, 200, "backup-push: {body}{}", c.all_logs());
    let rows = c.backup_list(l);
    assert_eq!(rows.len(), 2, "{rows:?}");
    let newest = rows.last().unwrap()[0].clone();
    // Every member sees the same list; etcd's copy (WAL-E's text format) names the new backup.
    for i in others(&c, l) {
        assert_eq!(c.backup_list(i), rows, "backup-list on {}", member(i));
    }
    let key = c.key("wale-backup-list");
    c.wait_until(
        "etcd's backup list to name the new backup",
        Duration::from_secs(60),
        |c| {
            c.etcd_get(&key)
                .is_some_and(|v| v.lines().skip(1).any(|l| l.starts_with(&newest)))
        },
        |c| format!("{key}: {:?}", c.etcd_get(&key)),
    );
    let listed = c.etcd_get(&key).unwrap();
    assert!(
        listed.starts_with("name\tlast_modified\texpanded_size_bytes\t"),
        "{listed}"
    );
    assert_eq!(listed.lines().count(), 3, "{listed}");

    // The archive alone, in a container of its own, gives the value back.
    c.switch_and_wait_archived(l);
    assert_eq!(
        c.standalone_restore_query("SELECT v FROM kv WHERE k = 'answer'"),
        "42"
    );
}

#[test]
fn failover_stopping_the_leader_container_hands_over_cleanly_with_no_gap_in_the_archive() {
    let Some((c, old)) = cluster_of("failover", "failover", 3) else {
        return;
    };
    c.psql(old, "CREATE TABLE kv (k text PRIMARY KEY, v text)");
    c.psql(old, "INSERT INTO kv VALUES ('before', 'failover')");
    c.switch_and_wait_archived(old);
    for i in others(&c, old) {
        c.wait_until(
            "the replicas to replay the value",
            Duration::from_secs(60),
            |c| {
                c.psql_try(i, "SELECT v FROM kv WHERE k = 'before'")
                    .as_deref()
                    == Some("failover")
            },
            |c| c.all_logs(),
        );
    }

    // docker stop: SIGTERM to tini, to the entrypoint, to Patroni, which stops PostgreSQL and
    // releases the leader key; the container exits 0 well within its stop timeout.
    let (took, code) = c.stop(&member(old));
    assert_eq!(
        code,
        0,
        "exit code of the stopped leader\n{}",
        c.logs(&member(old))
    );
    assert!(took < Duration::from_secs(30), "docker stop took {took:?}");
    let log = c.logs(&member(old));
    assert!(
        log.contains("no longer holds the leader key"),
        "the agent should see the key released: {log}"
    );
    // The leader key was released, not left to expire (ttl 20 s): a replica takes over at once.
    let start = std::time::Instant::now();
    let mut new = old;
    c.wait_until(
        "a replica to take over",
        Duration::from_secs(60),
        |c| {
            new = c.leader().unwrap_or(old);
            new != old
        },
        |c| c.all_logs(),
    );
    let new = c.wait_leader(Duration::from_secs(60));
    assert_ne!(new, old);
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "takeover took {:?}: the key was not released",
        start.elapsed()
    );
    assert_eq!(
        c.psql(new, "SELECT v FROM kv WHERE k = 'before'"),
        "failover"
    );
    c.psql(new, "INSERT INTO kv VALUES ('after', 'failover')");
    let seg = c.switch_and_wait_archived(new);
    assert_eq!(seg_of(&seg).map(|s| s.0), Some(2), "{seg}");

    // Every segment from the backup to the newest, across the timeline switch, is archived.
    let out = c.walkeeper(new, &["wal-verify"]);
    assert_eq!(
        out.code,
        0,
        "wal-verify: {}{}{}",
        out.stdout,
        out.stderr,
        c.all_logs()
    );
    let archived = c.archived_wal();
    assert!(archived.contains("00000002.history"), "{archived:?}");
}

#[test]
fn restoration_a_cluster_whose_members_and_etcd_data_are_destroyed_comes_back_from_the_archive() {
    let Some((mut c, l)) = cluster_of("restoration", "restoration", 3) else {
        return;
    };
    c.psql(
        l,
        "CREATE TABLE kept AS SELECT generate_series(1, 5000) AS x",
    );
    c.psql(l, "INSERT INTO kept VALUES (424242)");
    c.switch_and_wait_archived(l);

    for i in 0..c.members() {
        c.remove(&member(i));
    }
    c.replace_etcd();
    assert_eq!(c.etcd_get(&c.key("initialize")), None);
    for i in 0..c.members() {
        c.start_member(i);
    }
    let l = c.wait_leader(Duration::from_secs(240));
    assert_eq!(c.psql(l, "SELECT count(*) FROM kept"), "5001");
    assert_eq!(c.psql(l, "SELECT count(*) FROM kept WHERE x = 424242"), "1");
    let log = c.logs_tail(&member(l), "all");
    assert!(
        log.contains("replica has been created using walkeeper"),
        "the first member should have been restored by walkeeper: {log}"
    );
    for i in others(&c, l) {
        c.wait_streaming(i, Duration::from_secs(240));
        assert_eq!(c.psql(i, "SELECT count(*) FROM kept"), "5001");
    }
}

#[test]
fn restoration_point_in_time_a_restart_to_a_time_between_two_writes_keeps_the_first_only() {
    let Some((c, l)) = cluster_of("restoration_point_in_time", "pitr", 3) else {
        return;
    };
    c.psql(l, "CREATE TABLE marks (id int, note text)");
    c.psql(l, "INSERT INTO marks VALUES (1, 'first')");
    c.switch_and_wait_archived(l);
    let target = {
        // Strictly between the two commits on the server's clock.
        let t = server_now(&c, l);
        c.wait_until(
            "the server clock to move past the target",
            Duration::from_secs(5),
            |c| server_now(c, l) > t,
            |_| String::new(),
        );
        t
    };
    c.psql(l, "INSERT INTO marks VALUES (2, 'second')");
    c.switch_and_wait_archived(l);

    let body = format!("{{\"recovery_target_time\": \"{target}\"}}");
    let (code, msg) = c.agent(l, "POST", "/restart", &body, false);
    assert_eq!(code, 401, "a restart without the token: {msg}");
    let (code, msg) = c.agent(l, "POST", "/restart", &body, true);
    assert_eq!(code, 202, "{msg}{}", c.all_logs());
    let id = serde_json::from_str::<serde_json::Value>(&msg).unwrap()["id"]
        .as_str()
        .expect("a restart id")
        .to_string();
    let job = |c: &Cluster| -> serde_json::Value {
        let (_, j) = c.agent(l, "GET", &format!("/restart/{id}"), "", false);
        serde_json::from_str(&j).unwrap_or_default()
    };
    c.wait_until(
        "the restart to finish",
        Duration::from_secs(400),
        |c| job(c)["status"] != "running",
        |c| format!("{:#}\n{}", job(c), c.all_logs()),
    );
    let done = job(&c);
    assert_eq!(done["status"], "succeeded", "{done:#}\n{}", c.all_logs());
    let leader = c.wait_leader(Duration::from_secs(120));
    assert_eq!(leader, l);
    assert_eq!(
        c.psql(l, "SELECT string_agg(note, ',' ORDER BY id) FROM marks"),
        "first"
    );
    for i in others(&c, l) {
        c.wait_until(
            &format!("{} to follow the restored history", member(i)),
            Duration::from_secs(300),
            |c| {
                c.psql_try(i, "SELECT string_agg(note, ',' ORDER BY id) FROM marks")
                    .as_deref()
                    == Some("first")
                    && c.psql_try(i, "SELECT status FROM pg_stat_wal_receiver")
                        .as_deref()
                        == Some("streaming")
            },
            |c| c.all_logs(),
        );
    }
}

#[test]
fn partition_a_leader_cut_off_from_etcd_archives_none_of_its_divergent_wal_and_rejoins() {
    let Some((c, old)) = cluster_of("partition", "partition", 3) else {
        return;
    };
    c.psql(old, "CREATE TABLE t (id serial, note text)");
    c.psql(old, "INSERT INTO t (note) VALUES ('agreed')");
    c.switch_and_wait_archived(old);
    for i in others(&c, old) {
        c.wait_until(
            "the replicas to replay",
            Duration::from_secs(60),
            |c| c.psql_try(i, "SELECT count(*) FROM t").as_deref() == Some("1"),
            |c| c.all_logs(),
        );
    }

    // The leader loses the network to etcd and to the other members; it still reaches S3.
    c.disconnect(&member(old), &c.cluster_net);
    let mut isolated_segments = BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let new = loop {
        // It takes writes and finishes segments for as long as it still runs as a primary.
        if let Some(seg) = c.psql_try(
            old,
            "INSERT INTO t (note) SELECT 'isolated' FROM generate_series(1, 1000); \
             SELECT pg_walfile_name(pg_switch_wal())",
        ) {
            isolated_segments.insert(seg);
        }
        let taken_over = c.leader().filter(|&n| n != old);
        let demoted = c.psql_try(old, "SELECT pg_is_in_recovery()").as_deref() != Some("f");
        if let (Some(n), true) = (taken_over, demoted) {
            break n;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no takeover while {} was cut off{}",
            member(old),
            c.all_logs()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let new = {
        let l = c.wait_leader(Duration::from_secs(60));
        assert_eq!(l, new);
        l
    };
    // Where the new leader's timeline left timeline 1.
    let history = c.exec(
        &member(new),
        "postgres",
        &["cat", &format!("{PGDATA}/pg_wal/00000002.history")],
        &[],
    );
    assert!(history.ok(), "00000002.history: {}", history.stderr);
    let switch = history
        .stdout
        .lines()
        .find(|l| l.starts_with('1'))
        .map(|l| parse_lsn(l.split_whitespace().nth(1).unwrap()))
        .expect("a line for timeline 1");
    let divergent = |names: &BTreeSet<String>| timeline_1_past(names, switch);
    let made = divergent(&isolated_segments);
    assert!(
        !made.is_empty(),
        "the cut-off leader should have finished a segment past the switch point {switch:X}: {isolated_segments:?}"
    );
    let log = c.logs_tail(&member(old), "all");
    assert!(
        log.contains("archive command failed with exit code 4")
            && (log.contains("; not uploading") || log.contains("may not upload it")),
        "the cut-off leader's wal-push should have refused (exit 4): {log}"
    );

    // Back on the network: it follows the new leader (pg_rewind) and uploads nothing of its own.
    c.connect(&member(old), &c.cluster_net);
    c.psql(new, "INSERT INTO t (note) VALUES ('after the partition')");
    c.switch_and_wait_archived(new);
    c.wait_until(
        &format!("{} to rejoin on the new timeline", member(old)),
        Duration::from_secs(240),
        |c| {
            c.psql_try(
                old,
                "SELECT string_agg(note, ',' ORDER BY id) FROM t WHERE note <> 'isolated'",
            )
            .as_deref()
                == Some("agreed,after the partition")
                && c.psql_try(old, "SELECT count(*) FROM t WHERE note = 'isolated'")
                    .as_deref()
                    == Some("0")
        },
        |c| c.all_logs(),
    );
    c.wait_streaming(old, Duration::from_secs(120));
    let archived = c.archived_wal();
    assert_eq!(
        divergent(&archived),
        Vec::<String>::new(),
        "divergent timeline-1 WAL of the cut-off leader was archived (switch point {switch:X}; it made {made:?})"
    );
    let out = c.walkeeper(new, &["wal-verify"]);
    assert_eq!(out.code, 0, "wal-verify: {}{}", out.stdout, out.stderr);
}

#[test]
fn replica_bootstrap_from_the_archive_under_the_thresholds_and_by_basebackup_over_them() {
    let Some(engine) = engine("replica_bootstrap") else {
        return;
    };
    let mut c = Cluster::new(engine, "bootstrap");
    c.add_member(&[]);
    let l = c.wait_leader(Duration::from_secs(120));
    wait_for_backups(&c, l, 1);
    c.psql(l, "CREATE TABLE t AS SELECT generate_series(1, 1000) AS x");
    c.switch_and_wait_archived(l);

    let created_by = |c: &Cluster, i: usize| -> String {
        let mut how = String::new();
        c.wait_until(
            &format!("{} to be created", member(i)),
            Duration::from_secs(180),
            |c| {
                how = c
                    .logs_tail(&member(i), "all")
                    .lines()
                    .find_map(|l| l.split("replica has been created using ").nth(1))
                    .unwrap_or_default()
                    .trim()
                    .to_string();
                !how.is_empty()
            },
            |c| c.all_logs(),
        );
        how
    };

    // Under the thresholds the image's environment sets: from the archive.
    let a = c.add_member(&[
        ("WALE_BACKUP_THRESHOLD_MEGABYTES", "100000"),
        ("WALE_BACKUP_THRESHOLD_PERCENTAGE", "1000"),
    ]);
    assert_eq!(created_by(&c, a), "walkeeper", "{}", c.all_logs());
    c.wait_streaming(a, Duration::from_secs(120));
    assert_eq!(c.psql(a, "SELECT count(*) FROM t"), "1000");

    // Over them: by basebackup from the leader.
    let b = c.add_member(&[("WALE_BACKUP_THRESHOLD_MEGABYTES", "0")]);
    assert_eq!(created_by(&c, b), "basebackup", "{}", c.all_logs());
    c.wait_streaming(b, Duration::from_secs(120));
    assert_eq!(c.psql(b, "SELECT count(*) FROM t"), "1000");
}
