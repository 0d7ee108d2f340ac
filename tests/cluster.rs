//! walkeeper as a Patroni cluster agent, against real etcd 3.4, Patroni, PostgreSQL 15 and an S3
//! server on loopback: leader-only archiving, split-brain, failover gap healing, replica
//! creation by threshold, the backup list in etcd, the PITR restart, and restoration of a
//! destroyed cluster from the archive.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use support::cluster::*;
use support::{chown_pg_recursive, parse_lsn, stderr, timeline_1_past, Pg, XfsMount};

/// Starts member 0, waits until it leads and its agent has taken the first backup, then starts
/// the others and waits until they stream.
fn cluster_of(scope: &str, n: usize, opts: MemberOpts) -> (Cluster, usize) {
    let mut c = Cluster::new(scope);
    for _ in 0..n {
        c.add(opts.clone());
    }
    c.start(0);
    let l = c.wait_leader(Duration::from_secs(90));
    wait_for_backups(&c, 1);
    for i in 1..n {
        c.start(i);
    }
    for i in 1..n {
        c.wait_streaming(i, Duration::from_secs(120));
    }
    (c, l)
}

fn wait_for_backups(c: &Cluster, n: usize) {
    wait_until_or(
        &format!("{n} backup(s) in the archive"),
        Duration::from_secs(90),
        || c.backup_list().len() >= n,
        || c.logs(),
    );
}

/// `outcome="uploaded"` segments in a wal-push log.
fn uploaded(log: &str) -> BTreeSet<String> {
    log.lines()
        .filter(|l| l.contains("outcome=\"uploaded\""))
        .filter_map(|l| {
            l.split("segment=")
                .nth(1)?
                .split_whitespace()
                .next()
                .map(String::from)
        })
        .collect()
}

/// WAL file names (without codec extension) in the archive.
fn archived_wal(c: &Cluster) -> BTreeSet<String> {
    c.objects()
        .iter()
        .filter_map(|o| o.strip_prefix("wal_005/"))
        .map(|o| o.rsplit_once('.').map(|(b, _)| b).unwrap_or(o).to_string())
        .collect()
}

/// The switch point of timeline 1 from a member's `00000002.history`.
fn switch_point_of_timeline_1(data: &Path) -> u64 {
    let text =
        std::fs::read_to_string(data.join("pg_wal/00000002.history")).expect("00000002.history");
    let line = text
        .lines()
        .find(|l| l.starts_with('1'))
        .expect("a line for timeline 1");
    parse_lsn(line.split_whitespace().nth(1).unwrap())
}

fn server_now(c: &Cluster, i: usize) -> String {
    c.psql(
        i,
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    )
}

#[test]
fn only_the_leader_uploads_and_replicas_with_archive_mode_always_only_verify() {
    let (c, l) = cluster_of(
        "leaderonly",
        3,
        MemberOpts {
            archive_mode: "always",
            ..Default::default()
        },
    );
    c.pgbench(l, &["-i", "-s", "2", "-q"]);
    let mut last = String::new();
    for _ in 0..3 {
        c.psql(l, "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) SELECT 1, 1, 1, 1, now() FROM generate_series(1, 1000)");
        last = c.switch_and_wait_archived(l);
    }
    // Replicas archive every segment they receive (archive_mode=always); wait until they have
    // got as far as the leader.
    for i in (0..3).filter(|&i| i != l) {
        wait_until_or(
            &format!("{} to archive up to {last}", c.members[i].name),
            Duration::from_secs(120),
            || {
                c.psql_try(
                    i,
                    "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver",
                )
                .is_some_and(|w| w >= last)
            },
            || c.logs(),
        );
    }
    let leader_uploads = uploaded(&c.members[l].wal_push_log_text());
    assert!(leader_uploads.contains(&last), "{leader_uploads:?}");
    for i in (0..3).filter(|&i| i != l) {
        let log = c.members[i].wal_push_log_text();
        assert!(
            uploaded(&log).is_empty(),
            "replica {} uploaded: {log}",
            c.members[i].name
        );
        assert!(
            log.contains("outcome=\"already-archived\""),
            "replica {} never ran wal-push: {log}",
            c.members[i].name
        );
    }
    // Every WAL object in the archive is one the leader uploaded.
    let archived = archived_wal(&c);
    let foreign: Vec<&String> = archived.difference(&leader_uploads).collect();
    assert!(
        foreign.is_empty(),
        "objects the leader did not upload: {foreign:?}"
    );
}

#[test]
fn split_brain_old_primary_cannot_archive_divergent_wal_but_a_plain_cp_would() {
    let (mut c, old) = cluster_of(
        "splitbrain",
        3,
        MemberOpts {
            cp_baseline: true,
            ..Default::default()
        },
    );
    c.psql(old, "CREATE TABLE t (id serial, note text)");
    c.psql(old, "INSERT INTO t (note) VALUES ('agreed')");
    c.switch_and_wait_archived(old);

    // Patroni dies, its PostgreSQL keeps running as a primary (no watchdog).
    c.signal_patroni(old, libc::SIGKILL);
    c.psql(old, "INSERT INTO t (note) VALUES ('during the lease')");
    let mut new = old;
    wait_until_or(
        "another member to take the leader key",
        Duration::from_secs(90),
        || {
            new = c.leader().unwrap_or(old);
            new != old
        },
        || c.logs(),
    );
    c.wait_leader(Duration::from_secs(60));
    // The old primary goes on taking writes and finishing segments on timeline 1.
    for _ in 0..3 {
        c.psql(
            old,
            "INSERT INTO t (note) SELECT 'divergent' FROM generate_series(1, 1000)",
        );
        c.psql(old, "SELECT pg_switch_wal()");
    }
    let switch = switch_point_of_timeline_1(&c.members[new].data);
    let cp_dir = c.members[old].dir.join("cp-archive");
    let divergent = |names: &BTreeSet<String>| timeline_1_past(names, switch);
    // Its archiver tries: the plain cp in front of wal-push copies what it is given.
    wait_until_or(
        "the old primary's archiver to try a divergent segment",
        Duration::from_secs(120),
        || {
            let names: BTreeSet<String> = std::fs::read_dir(&cp_dir)
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            !divergent(&names).is_empty()
        },
        || c.logs(),
    );
    let copied: BTreeSet<String> = std::fs::read_dir(&cp_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let baseline = divergent(&copied);
    // The old primary's wal-push was asked for what cp copied, and refused.
    wait_until_or(
        "the old primary's wal-push to refuse",
        Duration::from_secs(60),
        || {
            c.members[old]
                .wal_push_log_text()
                .contains("holds the leader key, not")
        },
        || c.logs(),
    );
    let archived = archived_wal(&c);
    assert_eq!(
        divergent(&archived),
        Vec::<String>::new(),
        "walkeeper archived divergent timeline-1 WAL (switch point {switch:X}); archive: {archived:?}"
    );
    assert!(
        !baseline.is_empty(),
        "the plain cp baseline should have copied a divergent segment"
    );
    eprintln!(
        "switch point {:X}: a plain cp archive_command copied divergent {baseline:?}; walkeeper archived none",
        switch
    );

    // Patroni comes back on the old primary: it demotes it, runs archive_command on its .ready
    // segments before pg_rewind (history up to the switch point may go in, nothing after), and
    // the member rejoins as a replica of the new leader.
    c.start_patroni(old);
    c.wait_streaming(old, Duration::from_secs(180));
    let archived = archived_wal(&c);
    assert_eq!(divergent(&archived), Vec::<String>::new(), "{archived:?}");
    assert!(
        c.members[old].patroni_log_text().contains("rewind"),
        "{}",
        c.members[old].patroni_log_text()
    );
}

#[test]
fn failover_under_load_leaves_no_gap_and_a_pitr_after_it_restores_the_right_rows() {
    let (mut c, old) = cluster_of(
        "failover",
        3,
        MemberOpts {
            blockable_archiving: true,
            ..Default::default()
        },
    );
    c.pgbench(old, &["-i", "-s", "2", "-q"]);
    c.switch_and_wait_archived(old);
    // The old leader's archiving falls behind: segments it finishes stay .ready...
    std::fs::write(c.members[old].dir.join("archive-blocked"), b"").unwrap();
    let bench = {
        let m = &c.members[old];
        support::pg_tool("pgbench")
            .arg("-h")
            .arg(&m.dir)
            .arg("-p")
            .arg(m.pg_port.to_string())
            .args(["-U", "postgres", "-c", "2", "-T", "600", "postgres"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let _bench = KillOnDrop(bench);
    let mut blocked = Vec::new();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(500));
        blocked.push(c.psql(old, "SELECT pg_walfile_name(pg_switch_wal())"));
    }
    let lsn = c.psql(old, "SELECT pg_current_wal_lsn()");
    // ...but the replicas have streamed them.
    for i in (0..3).filter(|&i| i != old) {
        wait_until_or(
            "the replicas to replay the blocked segments",
            Duration::from_secs(60),
            || {
                c.psql_try(i, &format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'"))
                    .as_deref()
                    == Some("t")
            },
            || c.logs(),
        );
    }
    let before = archived_wal(&c);
    let gap: Vec<&String> = blocked.iter().filter(|s| !before.contains(*s)).collect();
    assert!(!gap.is_empty(), "archiving was not blocked: {before:?}");

    // The leader's host dies.
    c.crash(old);
    let new = {
        let mut n = old;
        wait_until_or(
            "a new leader",
            Duration::from_secs(90),
            || {
                n = c.leader().unwrap_or(old);
                n != old
            },
            || c.logs(),
        );
        c.wait_leader(Duration::from_secs(60))
    };
    wait_until_or(
        "the new leader to heal the gap",
        Duration::from_secs(60),
        || {
            let now = archived_wal(&c);
            gap.iter().all(|s| now.contains(*s))
        },
        || c.logs(),
    );
    assert!(
        c.members[new].agent_log_text().contains("gap healing done"),
        "{}",
        c.members[new].agent_log_text()
    );
    drop(_bench);
    let other = (0..3).find(|&i| i != old && i != new).unwrap();
    c.wait_streaming(other, Duration::from_secs(120));

    c.psql(new, "CREATE TABLE marks (id int, note text)");
    c.psql(new, "INSERT INTO marks VALUES (1, 'before')");
    std::thread::sleep(Duration::from_millis(50));
    let target = server_now(&c, new);
    std::thread::sleep(Duration::from_millis(50));
    c.psql(new, "INSERT INTO marks VALUES (2, 'after')");
    c.switch_and_wait_archived(new);

    let out = c.walkeeper(&["wal-verify"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "wal-verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );

    // A point-in-time restore to a time after the failover, from the archive alone.
    let env = c.scratch.mkdir("restore-env");
    for (k, v) in c.archive_vars() {
        std::fs::write(env.join(&k), v).unwrap();
        std::fs::set_permissions(
            env.join(k),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
    }
    chown_pg_recursive(&env);
    let dir = c.scratch.path().join("pitr");
    let out = support::run(
        &[
            "--envdir",
            env.to_str().unwrap(),
            "restore",
            dir.to_str().unwrap(),
            "--target-time",
            &target,
        ],
        &[],
        c.scratch.path(),
    );
    assert_eq!(out.status.code(), Some(0), "restore: {}", stderr(&out));
    chown_pg_recursive(&dir);
    // The backup holds the leader's Patroni-written config: its files point into the member's
    // data directory; point them at the restored one.
    let files = format!(
        "archive_mode = off\nhba_file = '{d}/pg_hba.conf'\nident_file = '{d}/pg_ident.conf'\n",
        d = dir.display()
    );
    let mut pg = Pg::configure(&c.scratch, "pitr", dir, &files);
    pg.start();
    support::wait_until("recovery to the target", Duration::from_secs(300), || {
        pg.psql("SELECT pg_is_in_recovery()") == "f"
    });
    assert_eq!(
        pg.psql("SELECT string_agg(note, ',' ORDER BY id) FROM marks"),
        "before"
    );
    pg.stop();
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn replicas_are_built_from_the_archive_under_the_thresholds_and_by_basebackup_over_them() {
    let mut c = Cluster::new("thresholds");
    c.add(MemberOpts::default());
    c.start(0);
    let l = c.wait_leader(Duration::from_secs(90));
    wait_for_backups(&c, 1);
    c.psql(l, "CREATE TABLE t AS SELECT generate_series(1, 1000) AS x");
    c.switch_and_wait_archived(l);

    let created_by = |c: &Cluster, i: usize| -> String {
        let mut how = String::new();
        wait_until_or(
            &format!("{} to be created", c.members[i].name),
            Duration::from_secs(120),
            || {
                how = c.members[i]
                    .patroni_log_text()
                    .lines()
                    .find_map(|l| {
                        l.split("replica has been created using ")
                            .nth(1)
                            .map(String::from)
                    })
                    .unwrap_or_default();
                !how.is_empty()
            },
            || c.logs(),
        );
        how.trim().to_string()
    };
    let mib = |n: u64| n.to_string();

    // Thresholds from Patroni's method config (argv), generous: from the archive.
    let a = c.add(MemberOpts {
        method_args: vec![
            ("threshold_megabytes".into(), mib(100_000)),
            ("threshold_backup_size_percentage".into(), "1000".into()),
        ],
        ..Default::default()
    });
    c.start(a);
    assert_eq!(created_by(&c, a), "walkeeper", "{}", c.logs());
    c.wait_streaming(a, Duration::from_secs(120));
    assert_eq!(c.psql(a, "SELECT count(*) FROM t"), "1000");

    // Thresholds from the environment, exceeded: basebackup.
    let b = c.add(MemberOpts {
        env: vec![("WALE_BACKUP_THRESHOLD_MEGABYTES".into(), "0".into())],
        ..Default::default()
    });
    c.start(b);
    assert_eq!(created_by(&c, b), "basebackup", "{}", c.logs());
    assert!(
        c.members[b]
            .patroni_log_text()
            .contains("WALE_BACKUP_THRESHOLD_MEGABYTES"),
        "the decision should name where the threshold came from: {}",
        c.members[b].patroni_log_text()
    );
    c.wait_streaming(b, Duration::from_secs(120));

    // Thresholds from the environment, met: from the archive.
    let d = c.add(MemberOpts {
        env: vec![
            ("WALE_BACKUP_THRESHOLD_MEGABYTES".into(), mib(100_000)),
            ("WALE_BACKUP_THRESHOLD_PERCENTAGE".into(), "1000".into()),
        ],
        ..Default::default()
    });
    c.start(d);
    assert_eq!(created_by(&c, d), "walkeeper", "{}", c.logs());
    c.wait_streaming(d, Duration::from_secs(120));
    assert_eq!(c.psql(d, "SELECT count(*) FROM t"), "1000");
}

#[test]
fn the_backup_list_in_etcd_matches_backup_list_and_survives_a_listing_failure() {
    let (mut c, l) = cluster_of(
        "etcdlist",
        3,
        MemberOpts {
            env: vec![("WALKEEPER_RETAIN".into(), "2".into())],
            ..Default::default()
        },
    );
    // The leader recorded the cluster's system identifier in the archive.
    let sysid = c.psql(l, "SELECT system_identifier FROM pg_control_system()");
    let stored = std::fs::read_to_string(
        c.s3.root
            .join(support::S3_BUCKET)
            .join(&c.scope)
            .join("sysids/sysid"),
    );
    assert_eq!(stored.ok().as_deref(), Some(sysid.as_str()));
    c.psql(l, "CREATE TABLE t AS SELECT 1 AS x");
    let first = c.backup_list();
    c.backup();
    // Retention on the leader keeps the newest two of three.
    let rows = c.backup();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows.iter().all(|r| r[0] != first[0][0]),
        "the oldest backup was kept: {rows:?}"
    );
    let key = format!("/service/{}/wale-backup-list", c.scope);
    let listed = {
        let out = c.walkeeper(&["backup-list"]);
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    wait_until_or(
        "the etcd backup list to match backup-list",
        Duration::from_secs(30),
        || c.etcd.get(&key).as_deref() == Some(listed.as_str()),
        || format!("etcd: {:?}\nbackup-list: {listed}", c.etcd.get(&key)),
    );
    assert!(listed.starts_with("name\tlast_modified\texpanded_size_bytes\t"));
    let json: serde_json::Value = serde_json::from_str(
        &c.etcd
            .get(&format!("/service/{}/walkeeper-backup-list", c.scope))
            .expect("the JSON list"),
    )
    .unwrap();
    let names: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(names, want);

    // The store goes away: listings fail, and the list in etcd stays.
    let failures = |c: &Cluster| -> u64 {
        let (_, m) = c.agent_get(l, "/metrics");
        m.lines()
            .find(|x| x.starts_with("walkeeper_backup_list_failures_total"))
            .and_then(|x| x.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    let before = failures(&c);
    c.s3.stop();
    wait_until_or(
        "a failed listing",
        Duration::from_secs(60),
        || failures(&c) > before,
        || c.logs(),
    );
    assert_eq!(c.etcd.get(&key).as_deref(), Some(listed.as_str()));
    c.s3.restart();
    let (code, status) = c.agent_get(l, "/status");
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["role"], "leader");
    assert_eq!(status["last_backup"]["name"].as_str(), want.last().copied());
}

#[test]
fn a_restart_to_a_marker_time_keeps_rows_before_drops_rows_after_and_replicas_rejoin() {
    let (c, l) = cluster_of("restart", 3, MemberOpts::default());
    c.psql(l, "CREATE TABLE marks (id int, note text)");
    c.psql(l, "INSERT INTO marks VALUES (1, 'before')");
    std::thread::sleep(Duration::from_millis(50));
    let target = server_now(&c, l);
    std::thread::sleep(Duration::from_millis(50));
    c.psql(l, "INSERT INTO marks VALUES (2, 'after')");
    c.switch_and_wait_archived(l);
    let replica = (0..3).find(|&i| i != l).unwrap();

    // Refusals first: not the leader, not a time, the future, before the first backup.
    let body = |t: &str| format!("{{\"recovery_target_time\": \"{t}\"}}");
    let (code, msg) = c.agent_post(replica, "/restart", &body(&target));
    assert_eq!(code, 409, "{msg}");
    assert!(msg.contains(&c.members[l].name), "{msg}");
    let (code, msg) = c.agent_post(l, "/restart", &body("yesterday"));
    assert_eq!(code, 400, "{msg}");
    assert!(msg.contains("neither a time"), "{msg}");
    // A time without a zone is read in the server's TimeZone (dingo's form): a time, but before
    // the first backup.
    let (code, msg) = c.agent_post(l, "/restart", &body("2026-01-01 00:00:00"));
    assert_eq!(code, 400, "{msg}");
    assert!(msg.contains("earliest restorable point"), "{msg}");
    let (code, msg) = c.agent_post(l, "/restart", &body("2999-01-01T00:00:00Z"));
    assert_eq!(code, 400, "{msg}");
    assert!(msg.contains("future"), "{msg}");
    let (code, msg) = c.agent_post(l, "/restart", &body("2001-01-01T00:00:00Z"));
    assert_eq!(code, 400, "{msg}");
    assert!(msg.contains("earliest restorable point"), "{msg}");

    let job = restart_and_wait(&c, l, &target, None);
    assert_eq!(job["status"], "succeeded", "{job:#}\n{}", c.logs());
    // The job says how it restored (a full fetch or a seeded delta restore) and why.
    assert!(!seed_steps(&job).is_empty(), "{job:#}");
    let new_tli = job["new_timeline"].as_u64().unwrap();
    assert!(new_tli >= 2, "{job:#}");
    let leader = c.wait_leader(Duration::from_secs(60));
    assert_eq!(leader, l);
    assert_eq!(
        c.psql(l, "SELECT string_agg(note, ',' ORDER BY id) FROM marks"),
        "before"
    );
    let paused = c.patroni_state(l).unwrap()["pause"]
        .as_bool()
        .unwrap_or(false);
    assert!(!paused, "Patroni is still paused");
    replicas_follow_with_rows(
        &c,
        l,
        new_tli,
        "SELECT string_agg(note, ',' ORDER BY id) FROM marks",
        "before",
        &job,
    );
}

/// The details of a restart job's `seed` steps.
fn seed_steps(job: &serde_json::Value) -> Vec<String> {
    job["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["step"] == "seed")
        .filter_map(|s| s["detail"].as_str().map(str::to_string))
        .collect()
}

/// A cluster whose first member lives on an XFS loop mount: the cluster stops before the file
/// system is unmounted (fields drop in order).
struct OnXfs {
    c: Cluster,
    _xfs: XfsMount,
}

#[test]
fn a_restart_on_xfs_clones_the_old_data_directory_into_the_new_one_and_keeps_the_old_one_until_success(
) {
    let c = Cluster::new("pitrxfs");
    let xfs = XfsMount::new(&c.scratch.path().join("pg1"));
    let mut t = OnXfs { c, _xfs: xfs };
    let c = &mut t.c;
    c.add(MemberOpts::default());
    c.start(0);
    let l = c.wait_leader(Duration::from_secs(90));
    wait_for_backups(c, 1);
    c.psql(l, "CREATE TABLE marks (id int, note text)");
    c.psql(l, "INSERT INTO marks VALUES (1, 'before')");
    std::thread::sleep(Duration::from_millis(50));
    let target = server_now(c, l);
    std::thread::sleep(Duration::from_millis(50));
    c.psql(l, "INSERT INTO marks VALUES (2, 'after')");
    c.switch_and_wait_archived(l);

    let job = restart_and_wait(c, l, &target, None);
    assert_eq!(job["status"], "succeeded", "{job:#}\n{}", c.logs());
    let seeds = seed_steps(&job);
    assert!(
        seeds
            .iter()
            .any(|s| s.starts_with("delta restore:") && s.contains("reflink")),
        "{job:#}"
    );
    assert!(seeds.iter().any(|s| s.starts_with("cloned ")), "{job:#}");
    c.wait_leader(Duration::from_secs(60));
    assert_eq!(
        c.psql(l, "SELECT string_agg(note, ',' ORDER BY id) FROM marks"),
        "before"
    );
    // The old directory was kept until success, then removed.
    let parent = c.members[l].data.parent().unwrap().to_path_buf();
    let left: Vec<String> = std::fs::read_dir(&parent)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("data.walkeeper-restart-") && !n.ends_with(".log"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_destroyed_cluster_comes_back_from_the_archive() {
    let (mut c, l) = cluster_of("restoration", 3, MemberOpts::default());
    c.psql(
        l,
        "CREATE TABLE kept AS SELECT generate_series(1, 5000) AS x",
    );
    c.switch_and_wait_archived(l);
    for i in 0..3 {
        c.stop_member(i);
        std::fs::remove_dir_all(&c.members[i].data).unwrap();
    }
    c.etcd.wipe();
    assert_eq!(
        c.etcd.get(&format!("/service/{}/initialize", c.scope)),
        None
    );
    for i in 0..3 {
        c.start_agent(i);
    }
    assert!(
        c.etcd
            .get(&format!("/service/{}/initialize", c.scope))
            .is_some(),
        "an agent should have written the archived system identifier to initialize\n{}",
        c.logs()
    );
    for i in 0..3 {
        c.start_patroni(i);
    }
    let l = c.wait_leader(Duration::from_secs(180));
    assert_eq!(c.psql(l, "SELECT count(*) FROM kept"), "5000");
    for i in (0..3).filter(|&i| i != l) {
        c.wait_streaming(i, Duration::from_secs(180));
        assert_eq!(c.psql(i, "SELECT count(*) FROM kept"), "5000");
    }
}

#[test]
fn debian_patroni_3_archives_through_the_leader_and_builds_replicas_from_the_archive() {
    let opts = MemberOpts {
        patroni: PATRONI3,
        method_args: vec![
            ("threshold_megabytes".into(), "100000".into()),
            ("threshold_backup_size_percentage".into(), "1000".into()),
        ],
        ..Default::default()
    };
    let (c, l) = cluster_of("patroni3", 2, opts);
    let r = 1 - l;
    assert!(
        c.members[r]
            .patroni_log_text()
            .contains("replica has been created using walkeeper"),
        "{}",
        c.logs()
    );
    c.psql(l, "CREATE TABLE t AS SELECT 42 AS x");
    let seg = c.switch_and_wait_archived(l);
    assert!(uploaded(&c.members[l].wal_push_log_text()).contains(&seg));
    wait_until_or(
        "the replica to replay",
        Duration::from_secs(60),
        || c.psql_try(r, "SELECT x FROM t").as_deref() == Some("42"),
        || c.logs(),
    );
    let list = c
        .etcd
        .get(&format!("/service/{}/wale-backup-list", c.scope))
        .unwrap_or_default();
    assert!(list.lines().count() >= 2, "{list}");
}

/// Moves leadership from `from` to `to` through Patroni's REST API and waits until `to` leads
/// as primary and every other member streams again.
fn switchover(c: &Cluster, from: usize, to: usize) {
    let body = format!(
        "{{\"leader\": \"{}\", \"candidate\": \"{}\"}}",
        c.members[from].name, c.members[to].name
    );
    let http = reqwest::blocking::Client::new();
    let r = http
        .post(c.members[from].patroni_url("/switchover"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .expect("POST /switchover");
    let code = r.status().as_u16();
    let text = r.text().unwrap_or_default();
    assert_eq!(code, 200, "switchover: {text}\n{}", c.logs());
    wait_until_or(
        &format!("{} to lead", c.members[to].name),
        Duration::from_secs(90),
        || c.leader() == Some(to) && c.wait_leader(Duration::from_secs(30)) == to,
        || c.logs(),
    );
    for i in (0..c.members.len()).filter(|&i| i != to) {
        c.wait_streaming(i, Duration::from_secs(120));
    }
}

/// Commits three rows before a marker time and three after it on leader `l`, restarts the
/// cluster to the marker through `POST /restart`, and checks that the leader and every replica
/// hold exactly the rows committed at or before it, on the new timeline.
fn restart_to_marker_keeps_exactly_the_rows_before(
    c: &Cluster,
    l: usize,
    round: u32,
    under_load: bool,
) -> u64 {
    c.psql(
        l,
        "CREATE TABLE IF NOT EXISTS marks (round int, id int, note text)",
    );
    for id in 1..=3 {
        c.psql(
            l,
            &format!("INSERT INTO marks VALUES ({round}, {id}, 'before')"),
        );
    }
    let before_target = c.psql(l, "SELECT count(*) FROM marks");
    // Each psql call is its own transaction: the commits above end before the clock is read,
    // and the ones below start after it.
    let target = server_now(c, l);
    // pgbench keeps writing on the timeline the restart abandons, until PostgreSQL stops: the
    // replicas must never follow that branch.
    let _bench = under_load.then(|| {
        let m = &c.members[l];
        KillOnDrop(
            support::pg_tool("pgbench")
                .arg("-h")
                .arg(&m.dir)
                .arg("-p")
                .arg(m.pg_port.to_string())
                .args(["-U", "postgres", "-c", "2", "-T", "600", "postgres"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        )
    });
    for id in 4..=6 {
        c.psql(
            l,
            &format!("INSERT INTO marks VALUES ({round}, {id}, 'after')"),
        );
    }
    c.switch_and_wait_archived(l);
    let job = restart_and_wait(c, l, &target, None);
    assert_eq!(
        job["status"],
        "succeeded",
        "round {round}: {job:#}\n{}",
        c.logs()
    );
    let new_tli = job["new_timeline"].as_u64().unwrap();
    assert_eq!(c.wait_leader(Duration::from_secs(60)), l);
    let rows = "SELECT count(*) || ':' || count(*) FILTER (WHERE note = 'after') FROM marks";
    let want = format!("{before_target}:0");
    assert_eq!(c.psql(l, rows), want, "round {round}\n{}", c.logs());
    replicas_follow_with_rows(c, l, new_tli, rows, &want, &job);
    new_tli
}

#[test]
fn restarts_under_load_work_on_leaders_that_were_replicas_and_replicas_follow_the_new_timeline() {
    let (c, first) = cluster_of("restart-failed-over", 3, MemberOpts::default());
    let second = (0..3).find(|&i| i != first).unwrap();
    let third = (0..3).find(|&i| i != first && i != second).unwrap();
    // One switchover: the leader has been a replica, and Patroni 4 has written its empty
    // recovery_target* settings into its postgresql.conf.
    switchover(&c, first, second);
    let conf = std::fs::read_to_string(c.members[second].data.join("postgresql.conf")).unwrap();
    assert!(
        conf.lines().any(|l| l.starts_with("recovery_target_lsn")),
        "Patroni no longer writes empty recovery targets; this test no longer proves the fix:\n{conf}"
    );
    c.pgbench(second, &["-i", "-s", "2", "-q"]);
    let t1 = restart_to_marker_keeps_exactly_the_rows_before(&c, second, 1, true);
    // Two switchovers.
    switchover(&c, second, third);
    let t2 = restart_to_marker_keeps_exactly_the_rows_before(&c, third, 2, false);
    assert!(t2 > t1, "timeline {t2} after {t1}");
}

/// Blocks archiving on leader `l`, then ends `n` small segments that stay `.ready` there, and
/// makes every replica replay them, run a restartpoint and lose all but the newest
/// `keep_on_replicas` of them, as replicas recycle WAL. Returns the blocked segments, oldest
/// first.
fn blocked_segments_the_replicas_recycle(
    c: &Cluster,
    l: usize,
    n: usize,
    keep_on_replicas: usize,
) -> Vec<String> {
    std::fs::write(c.members[l].dir.join("archive-blocked"), b"").unwrap();
    c.psql(l, "CREATE TABLE IF NOT EXISTS filler (x int)");
    let mut blocked = Vec::new();
    for i in 0..n {
        c.psql(l, &format!("INSERT INTO filler VALUES ({i})"));
        blocked.push(c.psql(l, "SELECT pg_walfile_name(pg_switch_wal())"));
    }
    c.psql(l, "CHECKPOINT");
    let lsn = c.psql(l, "SELECT pg_current_wal_lsn()");
    for i in (0..c.members.len()).filter(|&i| i != l) {
        wait_until_or(
            "the replicas to replay the blocked segments",
            Duration::from_secs(60),
            || {
                c.psql_try(i, &format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'"))
                    .as_deref()
                    == Some("t")
            },
            || c.logs(),
        );
        c.psql(i, "CHECKPOINT");
        // A long-running replica would have recycled these by now; Patroni's member slots and
        // wal_keep_size keep them in a short test. The restartpoint above is past them, so the
        // replica never needs them again.
        let pg_wal = c.members[i].data.join("pg_wal");
        for seg in &blocked[..n - keep_on_replicas] {
            let _ = std::fs::remove_file(pg_wal.join(seg));
            let _ = std::fs::remove_file(pg_wal.join(format!("archive_status/{seg}.done")));
        }
    }
    blocked
}

#[test]
fn a_gap_the_new_leader_cannot_heal_is_closed_by_the_old_primary_that_rejoined_as_a_replica() {
    let (c, old) = cluster_of(
        "heal-rejoined",
        3,
        MemberOpts {
            blockable_archiving: true,
            ..Default::default()
        },
    );
    c.switch_and_wait_archived(old);
    let new = (0..3).find(|&i| i != old).unwrap();
    let blocked = blocked_segments_the_replicas_recycle(&c, old, 6, 2);
    let archived = archived_wal(&c);
    let gap: Vec<&String> = blocked.iter().filter(|s| !archived.contains(*s)).collect();
    let lacking: Vec<&&String> = gap
        .iter()
        .filter(|s| !c.members[new].data.join("pg_wal").join(s.as_str()).exists())
        .collect();
    assert!(
        !lacking.is_empty(),
        "the new leader still holds every blocked segment; the test cannot show the old primary closing the gap"
    );
    // A clean switchover: the old primary rejoins without a rewind, its unarchived segments
    // still .ready, and its archive_command still failing.
    switchover(&c, old, new);
    wait_until_or(
        "the gap to close with no further switchover",
        Duration::from_secs(90),
        || {
            let now = archived_wal(&c);
            gap.iter().all(|s| now.contains(*s))
        },
        || c.logs(),
    );
    assert!(
        c.members[old]
            .agent_log_text()
            .contains("gap healing from a non-leader"),
        "{}",
        c.members[old].agent_log_text()
    );
    assert_eq!(c.leader(), Some(new), "no switchover back");
    let out = c.walkeeper(&["wal-verify"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "wal-verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
}

#[test]
fn when_no_member_holds_a_gap_the_leader_takes_a_backup_and_the_gap_is_no_longer_reported() {
    let (mut c, old) = cluster_of(
        "heal-backup",
        2,
        MemberOpts {
            blockable_archiving: true,
            ..Default::default()
        },
    );
    c.switch_and_wait_archived(old);
    let new = 1 - old;
    let backups_before = c.backup_list().len();
    blocked_segments_the_replicas_recycle(&c, old, 6, 2);
    // The old primary's host dies with the only copies of the oldest blocked segments.
    c.crash(old);
    wait_until_or(
        "the replica to take over",
        Duration::from_secs(90),
        || c.leader() == Some(new),
        || c.logs(),
    );
    let status = |c: &Cluster| -> serde_json::Value {
        let (_, body) = c.agent_get(new, "/status");
        serde_json::from_str(&body).unwrap_or_default()
    };
    wait_until_or(
        "the new leader to report the gap",
        Duration::from_secs(90),
        || status(&c)["unhealable_segments"].as_i64().unwrap_or(0) > 0,
        || format!("{}\n{}", status(&c), c.logs()),
    );
    wait_until_or(
        "a base backup after the gap, and the gap no longer reported",
        Duration::from_secs(180),
        || {
            c.backup_list().len() > backups_before
                && status(&c)["unhealable_segments"].as_i64() == Some(0)
        },
        || format!("{}\n{}", status(&c), c.logs()),
    );
    let (_, metrics) = c.agent_get(new, "/metrics");
    assert!(
        metrics.contains("walkeeper_unhealable_segments 0"),
        "{metrics}"
    );
}

/// Starts a restart to `target` on leader `l`, optionally on `timeline`'s branch, and waits for
/// the job. Returns the job's final state.
fn restart_and_wait(
    c: &Cluster,
    l: usize,
    target: &str,
    timeline: Option<u32>,
) -> serde_json::Value {
    let body = match timeline {
        Some(t) => format!("{{\"recovery_target_time\": \"{target}\", \"timeline\": {t}}}"),
        None => format!("{{\"recovery_target_time\": \"{target}\"}}"),
    };
    let (code, msg) = c.agent_post(l, "/restart", &body);
    assert_eq!(code, 202, "{msg}\n{}", c.logs());
    let id = serde_json::from_str::<serde_json::Value>(&msg).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_job(c, l, &id)
}

/// Waits until restart `id` has finished, and returns its state.
fn wait_job(c: &Cluster, l: usize, id: &str) -> serde_json::Value {
    let job_state = || -> serde_json::Value {
        let (_, j) = c.agent_get(l, &format!("/restart/{id}"));
        serde_json::from_str(&j).unwrap_or_default()
    };
    wait_until_or(
        "the restart to finish",
        Duration::from_secs(400),
        || job_state()["status"] != "running",
        || format!("{:#}\n{}", job_state(), c.logs()),
    );
    job_state()
}

#[test]
fn a_target_on_a_branch_a_restart_abandoned_is_refused_or_restored_from_the_named_branch() {
    let (c, l) = cluster_of("abandoned-branch", 2, MemberOpts::default());
    c.psql(l, "CREATE TABLE marks (id int, note text)");
    c.psql(l, "INSERT INTO marks VALUES (1, 'a'), (2, 'a')");
    let t1 = server_now(&c, l);
    c.psql(l, "INSERT INTO marks VALUES (3, 'b')");
    c.psql(l, "INSERT INTO marks VALUES (4, 'b')");
    let t2 = server_now(&c, l);
    c.psql(l, "INSERT INTO marks VALUES (5, 'c')");
    c.switch_and_wait_archived(l);
    let rows = "SELECT string_agg(id::text, ',' ORDER BY id) FROM marks";

    // A restart to t1 abandons timeline 1's WAL after t1, with the rows 3, 4 and 5.
    let job = restart_and_wait(&c, l, &t1, None);
    assert_eq!(job["status"], "succeeded", "{job:#}\n{}", c.logs());
    assert_eq!(c.psql(l, rows), "1,2");

    // t2 lies on that abandoned branch: read on the current history it would restore 1,2.
    let body = format!("{{\"recovery_target_time\": \"{t2}\"}}");
    let (code, msg) = c.agent_post(l, "/restart", &body);
    assert_eq!(code, 400, "{msg}");
    assert!(msg.contains("timeline 1 ("), "{msg}");
    assert!(msg.contains("abandoned"), "{msg}");
    let dir = c.scratch.path().join("not-restored");
    let out = c.walkeeper(&["restore", dir.to_str().unwrap(), "--target-time", &t2]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("abandoned"), "{}", stderr(&out));
    assert!(!dir.join("PG_VERSION").exists());

    // Named, the branch restores exactly what it held at t2.
    let job = restart_and_wait(&c, l, &t2, Some(1));
    assert_eq!(job["status"], "succeeded", "{job:#}\n{}", c.logs());
    assert_eq!(c.psql(l, rows), "1,2,3,4");
    let other = 1 - l;
    wait_until_or(
        "the replica to show the branch's rows",
        Duration::from_secs(120),
        || c.psql_try(other, rows).as_deref() == Some("1,2,3,4"),
        || c.logs(),
    );
}

/// Waits until every member but `l` streams on `new_tli` and shows `want` for `rows`.
fn replicas_follow_with_rows(
    c: &Cluster,
    l: usize,
    new_tli: u64,
    rows: &str,
    want: &str,
    job: &serde_json::Value,
) {
    for i in (0..c.members.len()).filter(|&i| i != l) {
        wait_until_or(
            &format!("{} to follow timeline {new_tli}", c.members[i].name),
            Duration::from_secs(300),
            || {
                c.psql_try(
                    i,
                    "SELECT received_tli FROM pg_stat_wal_receiver WHERE status = 'streaming'",
                )
                .as_deref()
                    == Some(new_tli.to_string().as_str())
            },
            || format!("{job:#}\n{}", c.logs()),
        );
        wait_until_or(
            "the replica to show exactly the restored rows",
            Duration::from_secs(60),
            || c.psql_try(i, rows).as_deref() == Some(want),
            || c.logs(),
        );
    }
}

#[test]
fn dingo_restart_with_a_time_without_zone_reads_it_in_the_servers_timezone() {
    let (c, l) = cluster_of("dingo-time", 2, MemberOpts::default());
    // The server's TimeZone is not UTC (nor this machine's): +05:30.
    c.psql(l, "ALTER SYSTEM SET timezone = 'Asia/Kolkata'");
    c.psql(l, "SELECT pg_reload_conf()");
    wait_until_or(
        "the new TimeZone",
        Duration::from_secs(30),
        || c.psql(l, "SHOW timezone") == "Asia/Kolkata",
        || c.logs(),
    );
    c.psql(l, "CREATE TABLE marks (id int, note text)");
    c.psql(l, "INSERT INTO marks VALUES (1, 'before')");
    // dingo's `date "+%Y-%m-%d %H:%M:%S"`: whole seconds, no zone. The commits are more than a
    // second away on either side.
    std::thread::sleep(Duration::from_millis(1100));
    let now = c.psql(
        l,
        "SELECT to_char(t, 'YYYY-MM-DD HH24:MI:SS') || '|' || \
         to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
         FROM (SELECT date_trunc('second', clock_timestamp()) AS t) s",
    );
    let (local, utc) = now.split_once('|').unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    c.psql(l, "INSERT INTO marks VALUES (2, 'after')");
    c.switch_and_wait_archived(l);

    let (code, msg) = c.agent_post(
        l,
        "/restart",
        &format!("{{\"recovery_target_time\": \"{local}\"}}"),
    );
    assert_eq!(code, 202, "{msg}\n{}", c.logs());
    let answer: serde_json::Value = serde_json::from_str(&msg).unwrap();
    // The answer and the job's steps carry the absolute time the server's zone gives.
    let resolved = answer["job"]["recovery_target_time"].as_str().unwrap();
    let parse = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap();
    assert_eq!(parse(resolved), parse(utc), "{answer:#}");
    let steps = answer["job"]["steps"].to_string();
    assert!(
        steps.contains("Asia/Kolkata") && steps.contains(local),
        "{answer:#}"
    );
    let job = wait_job(&c, l, answer["id"].as_str().unwrap());
    assert_eq!(job["status"], "succeeded", "{job:#}\n{}", c.logs());
    let new_tli = job["new_timeline"].as_u64().unwrap();
    assert_eq!(c.wait_leader(Duration::from_secs(60)), l);
    let rows = "SELECT string_agg(note, ',' ORDER BY id) FROM marks";
    assert_eq!(c.psql(l, rows), "before");
    replicas_follow_with_rows(&c, l, new_tli, rows, "before", &job);
}

#[test]
fn dingo_stop_and_empty_the_data_directory_and_patroni_brings_the_member_back_from_the_archive() {
    let (mut c, l) = cluster_of("dingo-empty", 1, MemberOpts::default());
    c.psql(
        l,
        "CREATE TABLE kept AS SELECT generate_series(1, 4000) AS x",
    );
    c.switch_and_wait_archived(l);
    let sysid = c.psql(l, "SELECT system_identifier FROM pg_control_system()");
    let created = |c: &Cluster| {
        c.members[l]
            .patroni_log_text()
            .matches("replica has been created using walkeeper")
            .count()
    };
    let before = created(&c);

    // dingo: stop the container, empty the data directory, start it again.
    c.stop_member(l);
    for e in std::fs::read_dir(&c.members[l].data).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() && !p.is_symlink() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }
    c.start(l);
    let leader = c.wait_leader(Duration::from_secs(240));
    assert_eq!(leader, l);
    assert_eq!(created(&c), before + 1, "{}", c.logs());
    wait_until_or(
        "the member to lead read-write",
        Duration::from_secs(120),
        || c.psql_try(l, "SELECT pg_is_in_recovery()").as_deref() == Some("f"),
        || c.logs(),
    );
    assert_eq!(c.psql(l, "SELECT count(*) FROM kept"), "4000");
    assert_eq!(
        c.psql(l, "SELECT system_identifier FROM pg_control_system()"),
        sysid
    );
}

/// A restart held (`WALKEEPER_TEST_HOLD_RESTART_AT`) right after `step`'s action, its agent
/// stopped there with `sig`, and the agent started again without the hold.
struct Interruption {
    step: &'static str,
    sig: i32,
    /// The job ends restored (true) or rolled back (false).
    finished: bool,
}

#[test]
fn a_restart_interrupted_by_sigterm_or_sigkill_at_any_step_is_finished_or_rolled_back() {
    let (mut c, _) = cluster_of("restart-interrupted", 2, MemberOpts::default());
    let (term, kill) = (libc::SIGTERM, libc::SIGKILL);
    let rounds = [
        ("pause", term, false),
        ("stop", kill, false),
        ("move-aside", term, false),
        ("seed", kill, false),
        ("fetch", kill, false),
        ("start", term, true),
        ("promoted", kill, true),
        ("resume", term, true),
        ("reinitialize", kill, true),
    ]
    .map(|(step, sig, finished)| Interruption {
        step,
        sig,
        finished,
    });
    let leader = c.wait_leader(Duration::from_secs(60));
    c.psql(leader, "CREATE TABLE marks (round int, id int, note text)");
    c.pgbench(leader, &["-i", "-s", "1", "-q"]);
    for (round, r) in rounds.iter().enumerate() {
        let l = c.wait_leader(Duration::from_secs(90));
        // pgbench writes until the restart stops the server (or, rolled back, until the agent
        // is stopped).
        let m = &c.members[l];
        let bench = KillOnDrop(
            support::pg_tool("pgbench")
                .arg("-h")
                .arg(&m.dir)
                .arg("-p")
                .arg(m.pg_port.to_string())
                .args(["-U", "postgres", "-c", "1", "-T", "600", "postgres"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        for id in 1..=3 {
            c.psql(
                l,
                &format!("INSERT INTO marks VALUES ({round}, {id}, 'before')"),
            );
        }
        let target = server_now(&c, l);
        for id in 4..=6 {
            c.psql(
                l,
                &format!("INSERT INTO marks VALUES ({round}, {id}, 'after')"),
            );
        }
        c.switch_and_wait_archived(l);
        let ran = l;
        let hold = c.members[l].envdir.join("WALKEEPER_TEST_HOLD_RESTART_AT");
        std::fs::write(&hold, r.step).unwrap();
        c.stop_agent(l);
        c.start_agent(l);
        let holding = |c: &Cluster| {
            c.members[l]
                .agent_log_text()
                .matches("holding the restart here")
                .count()
        };
        let held_before = holding(&c);
        let body = format!("{{\"recovery_target_time\": \"{target}\"}}");
        let (code, msg) = c.agent_post(l, "/restart", &body);
        assert_eq!(code, 202, "round {round}: {msg}\n{}", c.logs());
        let id = serde_json::from_str::<serde_json::Value>(&msg).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        wait_until_or(
            &format!("the restart to hold after step {}", r.step),
            Duration::from_secs(300),
            || holding(&c) > held_before,
            || c.logs(),
        );
        c.signal_agent(l, r.sig);
        drop(bench);
        std::fs::remove_file(&hold).unwrap();
        c.start_agent(l);
        let job_state = || -> serde_json::Value {
            let (_, j) = c.agent_get(l, &format!("/restart/{id}"));
            serde_json::from_str(&j).unwrap_or_default()
        };
        wait_until_or(
            &format!("the job interrupted after {} to end", r.step),
            Duration::from_secs(400),
            || {
                let s = job_state();
                s["status"].is_string() && s["status"] != "running"
            },
            || format!("{:#}\n{}", job_state(), c.logs()),
        );
        let job = job_state();
        let ctx = format!(
            "round {round} (after {}, signal {}): {job:#}",
            r.step, r.sig
        );
        let steps: Vec<&str> = job["steps"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s["step"].as_str())
            .collect();
        assert!(steps.contains(&"interrupted"), "{ctx}");
        let rows = format!(
            "SELECT count(*) FILTER (WHERE note = 'before') || ':' || count(*) FILTER (WHERE note = 'after') FROM marks WHERE round = {round}"
        );
        let want = if r.finished {
            assert_eq!(job["status"], "succeeded", "{ctx}\n{}", c.logs());
            "3:0"
        } else {
            assert_eq!(job["status"], "failed", "{ctx}\n{}", c.logs());
            let err = job["error"].as_str().unwrap_or_default();
            assert!(
                err.contains("rolled back") || err.contains("nothing was restored"),
                "{ctx}"
            );
            "3:3"
        };
        // Every member: Patroni resumed, the right rows.
        let l = c.wait_leader(Duration::from_secs(120));
        for i in 0..c.members.len() {
            wait_until_or(
                &format!("{} to be resumed with the round's rows", c.members[i].name),
                Duration::from_secs(300),
                || {
                    let paused = c
                        .patroni_state(i)
                        .map(|s| s["pause"].as_bool().unwrap_or(false));
                    paused == Some(false) && c.psql_try(i, &rows).as_deref() == Some(want)
                },
                || format!("{ctx}\n{}", c.logs()),
            );
        }
        if r.finished {
            assert_eq!(l, ran, "{ctx}");
            let tli = c.psql(
                l,
                "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)",
            );
            assert_eq!(
                job["new_timeline"].as_u64(),
                u64::from_str_radix(&tli, 16).ok(),
                "{ctx}"
            );
        }
        // Nothing left aside: the old directory was removed (finished) or put back.
        let data = &c.members[ran].data;
        let parent = data.parent().unwrap();
        let leftovers: Vec<String> = std::fs::read_dir(parent)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("walkeeper-restart-") && !n.ends_with(".log"))
            .collect();
        assert!(leftovers.is_empty(), "{ctx}: {leftovers:?}");
    }
}
