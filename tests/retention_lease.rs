//! The upload cutoff: a wal-push on the leader whose upload cannot finish before the leader
//! key's lease could end is abandoned (exit 4) and no object appears. The upload is made slow
//! by a throttling TCP proxy between walkeeper and a real S3 server (s3s-fs); etcd is real.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::cluster::Etcd;
use support::*;

const SCOPE: &str = "lease";

/// Forwards loopback connections to `target`, sending the client's bytes on at about
/// `bytes_per_s`; stopped (threads end within 100 ms) on drop.
struct SlowProxy {
    port: u16,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl SlowProxy {
    fn start(target: u16, bytes_per_s: usize) -> SlowProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let accept = std::thread::spawn(move || {
            let mut pumps = Vec::new();
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                            continue;
                        };
                        for (from, to, rate) in [
                            (
                                client.try_clone().unwrap(),
                                server.try_clone().unwrap(),
                                bytes_per_s,
                            ),
                            (server, client, usize::MAX),
                        ] {
                            let s = s.clone();
                            pumps.push(std::thread::spawn(move || pump(from, to, rate, &s)));
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            for p in pumps {
                let _ = p.join();
            }
        });
        SlowProxy {
            port,
            stop,
            threads: vec![accept],
        }
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, rate: usize, stop: &AtomicBool) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(100)));
    let chunk = rate.clamp(1, 64 << 10) / 10 + 1;
    let mut buf = vec![0u8; chunk.min(64 << 10)];
    while !stop.load(Ordering::SeqCst) {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
                if rate != usize::MAX {
                    // About `rate` bytes a second: `chunk` bytes every 100 ms.
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[test]
fn an_upload_that_cannot_finish_before_the_lease_ends_is_abandoned_with_no_object() {
    let scratch = Scratch::new();
    let etcd = Etcd::start(scratch.path());
    let s3 = Backend::s3();
    let Backend::S3(server) = &s3 else {
        unreachable!()
    };
    // 16 MiB at 40 KiB/s would take minutes; the lease lasts 5 s.
    let proxy = SlowProxy::start(server.port, 40 << 10);
    let pgdata = fake_pgdata(&scratch, "data");
    let mut vars: Vec<(String, String)> = s3
        .vars()
        .into_iter()
        .filter(|(k, _)| k != "AWS_ENDPOINT")
        .collect();
    let kv = |k: &str, v: String| (k.to_string(), v);
    vars.extend([
        kv("AWS_ENDPOINT", format!("http://127.0.0.1:{}", proxy.port)),
        kv("WALKEEPER_SCOPE", SCOPE.into()),
        kv("WALKEEPER_NAME", "pg1".into()),
        kv("WALKEEPER_ETCD_HOSTS", etcd.url()),
        kv(
            "WALKEEPER_AGENT_URL",
            format!("http://127.0.0.1:{}", free_port()),
        ),
    ]);
    let etcdctl = |args: &[&str]| -> String {
        let out = std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &etcd.url()])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "etcdctl {args:?}: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    // pg1 leads on a lease of 5 s that nobody keeps alive.
    let granted = etcdctl(&["lease", "grant", "5"]);
    let id = granted.split_whitespace().nth(1).expect("a lease id");
    etcdctl(&[
        "put",
        &format!("--lease={id}"),
        &format!("/service/{SCOPE}/leader"),
        "pg1",
    ]);
    let name = "000000010000000000000001";
    std::fs::write(pgdata.join("pg_wal").join(name), synthetic_segment(name, 7)).unwrap();
    let started = Instant::now();
    let out = run(&["wal-push", &format!("pg_wal/{name}")], &vars, &pgdata);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        took < Duration::from_secs(30),
        "abandoned at the cutoff, not after the upload: {took:?}"
    );
    assert!(
        stderr(&out).contains(&format!("wal_005/{name}.lz4: abandoned")),
        "the deadline path, not a refusal to start: {}",
        stderr(&out)
    );
    drop(proxy);
    let objects = s3.objects();
    assert!(
        !objects.iter().any(|o| o.contains(name)),
        "no object may appear: {objects:?}"
    );
}
