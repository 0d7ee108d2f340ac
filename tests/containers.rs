//! The walkeeper-patroni image in containers: three members, etcd and an S3 server on private
//! Docker networks, built locally and driven through the engine's API (bollard). Skipped, with
//! a message, where no Docker engine answers or `WALKEEPER_CONTAINER_TESTS=0`; see
//! CONTAINER_TESTS.md.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig};

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

#[test]
fn etcd_over_tls_the_leader_archives_and_lists_its_backup_in_etcd_and_clients_without_the_ca_are_refused(
) {
    let Some(engine) = engine("etcd_over_tls") else {
        return;
    };
    // images/compose.tls.yml's setup: etcd with --client-cert-auth, certificates made by
    // images/make-etcd-certs, Patroni and walkeeper given them under Patroni's variables.
    let mut c = Cluster::with_tls_etcd(engine, "etcdtls");
    c.add_member(&[]);
    let l = c.wait_leader(Duration::from_secs(120));
    assert!(
        c.logs_tail(&member(l), "all").contains("(https)"),
        "the entrypoint should report etcd over https: {}",
        c.all_logs()
    );
    // The agent took the first backup and published it in etcd (the guarded write, over TLS).
    wait_for_backups(&c, l, 1);
    let newest = c.backup_list(l)[0][0].clone();
    let key = c.key("wale-backup-list");
    c.wait_until(
        "etcd's backup list to name the backup",
        Duration::from_secs(60),
        |c| {
            c.etcd_get(&key)
                .is_some_and(|v| v.lines().skip(1).any(|l| l.starts_with(&newest)))
        },
        |c| format!("{key}: {:?}{}", c.etcd_get(&key), c.all_logs()),
    );
    // The leader archives: wal-push's leadership check reached etcd over TLS.
    c.psql(l, "CREATE TABLE t AS SELECT generate_series(1, 100) AS x");
    let seg = c.switch_and_wait_archived(l);
    assert!(
        c.archived_wal().contains(&seg),
        "{seg} is not in the archive"
    );

    // Clients without the certificates get nothing: without the CA the client refuses etcd's
    // certificate, without a client certificate etcd refuses the client, plain HTTP is refused.
    let refused = |args: &[&str], why: &str| {
        let mut cmd = vec!["etcdctl", "--dial-timeout=3s", "--command-timeout=5s"];
        cmd.extend_from_slice(args);
        cmd.extend(["get", key.as_str()]);
        let e = c.exec("etcd", "root", &cmd, &[]);
        assert_ne!(e.code, 0, "{why}: {cmd:?} read the key: {}", e.stdout);
        e.stderr
    };
    let no_ca = refused(
        &[
            "--endpoints=https://127.0.0.1:2379",
            "--cert=/etc/etcd/tls/client.crt",
            "--key=/etc/etcd/tls/client.key",
        ],
        "without the CA",
    );
    assert!(
        no_ca.contains("certificate") || no_ca.contains("deadline"),
        "{no_ca}"
    );
    refused(
        &[
            "--endpoints=https://127.0.0.1:2379",
            "--cacert=/etc/etcd/tls/ca.crt",
        ],
        "without a client certificate",
    );
    refused(&["--endpoints=http://127.0.0.1:2379"], "over plain HTTP");
}

/// A plain PostgreSQL 15 container (no Patroni, no etcd) configured as Timescale's sidecar
/// documentation shows: archive_command, or (`restore`) restore_command, by wget to `wale`.
/// Restoring, it waits for the sidecar to fetch the base backup (the marker `restored`).
const PLAIN_PG: &str = r#"set -eu
D=/var/lib/postgresql/data/pgdata
install -d -o postgres -g postgres -m 0700 "$D"
install -d -o postgres -g postgres -m 2775 /var/run/postgresql
cd /var/lib/postgresql
as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
if [ "$MODE" = restore ]; then
  until [ -e /var/lib/postgresql/data/restored ]; do sleep 0.2; done
  as_pg touch "$D/recovery.signal"
  set -- -c "restore_command=/usr/bin/wget wale/wal-fetch/%f -O -"
else
  printf '%s\n' "$POSTGRES_PASSWORD" >/tmp/pw && chown postgres /tmp/pw
  as_pg /usr/lib/postgresql/15/bin/initdb -D "$D" -U postgres --pwfile=/tmp/pw \
    --auth-local=peer --auth-host=scram-sha-256 >/dev/null
  rm -f /tmp/pw
  echo "host all all all scram-sha-256" >>"$D/pg_hba.conf"
  set -- -c archive_mode=on -c "archive_command=/usr/bin/wget wale/wal-push/%f -O -"
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups /usr/lib/postgresql/15/bin/postgres \
  -D "$D" -c listen_addresses='*' -c wal_level=replica "$@"
"#;
const PLAIN_PG_PASSWORD: &str = "sidecar-pg-secret";
const SIDECAR_PGDATA: &str = "/var/lib/postgresql/data/pgdata";

fn start_plain_pg(c: &mut Cluster, logical: &str, mode: &str) {
    let body = ContainerCreateBody {
        image: Some(format!("walkeeper-patroni:{TAG}")),
        entrypoint: Some(
            ["/usr/bin/tini", "--", "bash", "-c", PLAIN_PG]
                .map(String::from)
                .to_vec(),
        ),
        env: Some(vec![
            format!("MODE={mode}"),
            format!("POSTGRES_PASSWORD={PLAIN_PG_PASSWORD}"),
        ]),
        // The data volume the sidecar shares (--volumes-from).
        volumes: Some(vec!["/var/lib/postgresql/data".into()]),
        ..Default::default()
    };
    let net = c.cluster_net.clone();
    c.start_container(logical, body, &net, &[]);
}

/// `walkeeper agent` standalone, as the sidecar `wale`: the PostgreSQL container's volumes,
/// its connection settings, port 80, token-less GET for the PostgreSQL container's network.
fn start_sidecar(c: &mut Cluster, pg: &str) {
    let subnet = c.subnet(&c.cluster_net.clone());
    let mut env = c.storage_env();
    env.extend([
        format!("PGDATA={SIDECAR_PGDATA}"),
        format!("PGHOST={pg}"),
        "PGUSER=postgres".into(),
        format!("PGPASSWORD={PLAIN_PG_PASSWORD}"),
        "WALE_LISTEN_PORT=80".into(),
        "WALE_LOG_DESTINATION=stderr".into(),
        format!("WALKEEPER_API_TOKENLESS_NETWORKS={subnet}"),
        "WALKEEPER_API_HOSTS=wale".into(),
    ]);
    let body = ContainerCreateBody {
        image: Some(format!("walkeeper-patroni:{TAG}")),
        user: Some("postgres".into()),
        entrypoint: Some(
            ["/usr/bin/tini", "--", "walkeeper", "agent"]
                .map(String::from)
                .to_vec(),
        ),
        env: Some(env),
        host_config: Some(HostConfig {
            volumes_from: Some(vec![c.container(pg)]),
            sysctls: Some(
                [(
                    "net.ipv4.ip_unprivileged_port_start".to_string(),
                    "0".to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    };
    let (net, storage) = (c.cluster_net.clone(), c.storage_net.clone());
    c.start_container("wale", body, &net, &[&storage]);
    c.wait_until(
        "the sidecar to answer",
        Duration::from_secs(60),
        |c| {
            c.exec(pg, "postgres", &["curl", "-sf", "http://wale/health"], &[])
                .ok()
        },
        |c| c.logs("wale"),
    );
}

#[test]
fn timescale_sidecar_archives_by_wget_backs_up_and_a_new_pair_restores_latest_with_equal_rows() {
    let Some(engine) = engine("timescale_sidecar") else {
        return;
    };
    let mut c = Cluster::new(engine, "sidecar");
    start_plain_pg(&mut c, "db", "archive");
    start_sidecar(&mut c, "db");
    c.wait_until(
        "PostgreSQL to accept connections",
        Duration::from_secs(60),
        |c| c.psql_in_try("db", "SELECT 1").as_deref() == Some("1"),
        |c| format!("{}{}", c.logs("db"), c.logs("wale")),
    );
    let psql = |c: &Cluster, sql: &str| {
        c.psql_in_try("db", sql)
            .unwrap_or_else(|| panic!("{sql} failed: {}{}", c.logs("db"), c.logs("wale")))
    };
    psql(&c, "CREATE TABLE t AS SELECT generate_series(1, 1000) AS x");
    // A base backup by `curl http://wale/backup-push`, and by `docker exec wale wal-e ...`.
    let curl = c.exec(
        "db",
        "postgres",
        &["curl", "-sS", "-f", "http://wale/backup-push"],
        &[],
    );
    assert!(curl.ok(), "curl: {}{}", curl.stderr, c.logs("wale"));
    assert!(curl.stdout.contains("finish_lsn"), "{}", curl.stdout);
    psql(&c, "INSERT INTO t SELECT generate_series(1001, 2000)");
    let exec = c.exec(
        "wale",
        "postgres",
        &["wal-e", "backup-push", SIDECAR_PGDATA],
        &[],
    );
    assert!(exec.ok(), "wal-e backup-push: {}", exec.stderr);
    let list = c.exec("wale", "postgres", &["wal-e", "backup-list"], &[]);
    assert_eq!(
        list.stdout.lines().count(),
        3,
        "{}{}",
        list.stdout,
        list.stderr
    );
    psql(&c, "INSERT INTO t SELECT generate_series(2001, 2500)");
    let seg = psql(&c, "SELECT pg_walfile_name(pg_switch_wal())");
    c.wait_until(
        &format!("{seg} to be archived by wget"),
        Duration::from_secs(60),
        |c| {
            c.psql_in_try(
                "db",
                "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver",
            )
            .is_some_and(|l| l >= seg)
        },
        |c| format!("{}{}", c.logs("db"), c.logs("wale")),
    );
    let rows = psql(&c, "SELECT count(*), sum(x) FROM t");
    assert_eq!(rows, "2500|3126250");
    // A client outside the listed network (the S3 server's) needs the token.
    let outside = c.exec(
        "s3",
        "root",
        &[
            "bash",
            "-c",
            "exec 3<>/dev/tcp/wale/80 && printf 'GET /backup-push HTTP/1.0\\r\\nHost: wale\\r\\n\\r\\n' >&3 && head -n1 <&3",
        ],
        &[],
    );
    assert!(outside.stdout.contains(" 401"), "{outside:?}");

    // A new pair: PostgreSQL waits while its sidecar fetches LATEST, then replays the archive
    // with the wget restore_command.
    c.remove("wale");
    c.remove("db");
    start_plain_pg(&mut c, "db2", "restore");
    start_sidecar(&mut c, "db2");
    let fetch = c.exec(
        "wale",
        "postgres",
        &["wal-e", "backup-fetch", SIDECAR_PGDATA, "LATEST"],
        &[],
    );
    assert!(fetch.ok(), "wal-e backup-fetch: {}", fetch.stderr);
    let marker = c.exec(
        "wale",
        "postgres",
        &["touch", "/var/lib/postgresql/data/restored"],
        &[],
    );
    assert!(marker.ok(), "{}", marker.stderr);
    c.wait_until(
        "the restored server to finish recovery",
        Duration::from_secs(120),
        |c| {
            c.psql_in_try("db2", "SELECT pg_is_in_recovery()")
                .as_deref()
                == Some("f")
        },
        |c| format!("{}{}", c.logs("db2"), c.logs("wale")),
    );
    assert_eq!(
        c.psql_in_try("db2", "SELECT count(*), sum(x) FROM t")
            .as_deref(),
        Some(rows.as_str())
    );
}
