//! Storage fault injection on loopback: an HTTP proxy in front of a real S3 server (s3s-fs)
//! that can answer 503, reset the connection, cut the response or hold a request, and a
//! listener that accepts connections and never answers. Both stop their threads on drop.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Which requests a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    /// Every request.
    Any,
    /// `PUT` of an object or a part.
    Put,
    /// `POST ...?uploadId=...`: CompleteMultipartUpload.
    Complete,
}

/// What the proxy does to a matching request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer `503 Service Unavailable` without forwarding.
    Unavailable,
    /// Read the request, then reset the connection (RST) without forwarding.
    Reset,
    /// Forward the request, then send only the first half of the response and close.
    Cut,
    /// Hold the request until [`Proxy::release`], then forward it.
    Hold,
}

#[derive(Debug, Clone)]
struct Rule {
    on: Match,
    fault: Fault,
    /// How many more requests it applies to.
    left: usize,
}

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    /// (method, path and query) of every request seen.
    seen: Vec<(String, String)>,
    /// (method, path and query, the request head in lower case) of every request seen.
    heads: Vec<(String, String, String)>,
    released: bool,
    held: usize,
}

/// A fault-injecting HTTP/1.1 proxy to `upstream` on a loopback port.
pub struct Proxy {
    pub port: u16,
    state: Arc<(Mutex<State>, Condvar)>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Proxy {
    pub fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let state: Arc<(Mutex<State>, Condvar)> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, upstream, &st);
                });
            }
        });
        Proxy {
            port,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// Applies `fault` to the next `times` requests matching `on`.
    pub fn fault(&self, on: Match, fault: Fault, times: usize) {
        let mut s = self.state.0.lock().unwrap();
        s.rules.push(Rule {
            on,
            fault,
            left: times,
        });
    }

    /// Removes every fault; held requests are released.
    pub fn clear(&self) {
        let mut s = self.state.0.lock().unwrap();
        s.rules.clear();
        s.released = true;
        self.state.1.notify_all();
    }

    /// Lets held requests go on.
    pub fn release(&self) {
        let mut s = self.state.0.lock().unwrap();
        s.released = true;
        self.state.1.notify_all();
    }

    /// How many requests are being held now.
    pub fn held(&self) -> usize {
        self.state.0.lock().unwrap().held
    }

    /// Every request seen so far: method, path and query, and its head in lower case.
    pub fn requests(&self) -> Vec<(String, String, String)> {
        self.state.0.lock().unwrap().heads.clone()
    }

    /// Requests seen so far matching `on`.
    pub fn count(&self, on: Match) -> usize {
        let s = self.state.0.lock().unwrap();
        s.seen.iter().filter(|(m, p)| matches(on, m, p)).count()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.clear();
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn matches(on: Match, method: &str, path: &str) -> bool {
    match on {
        Match::Any => true,
        Match::Put => method == "PUT",
        Match::Complete => {
            method == "POST"
                && path
                    .split_once('?')
                    .is_some_and(|(_, q)| q.split('&').any(|p| p.starts_with("uploadId=")))
        }
    }
}

/// Reads one request head (through the blank line) and its body (Content-Length).
fn read_request(conn: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.read(&mut byte)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&byte[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = conn.read(&mut byte)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&byte[..n]);
    }
    Ok(Some(buf))
}

/// Serves one request on a client connection, over its own upstream connection
/// (`Connection: close` towards the server, so its answer ends at its EOF), then closes.
fn serve(
    mut conn: TcpStream,
    upstream: u16,
    state: &(Mutex<State>, Condvar),
) -> std::io::Result<()> {
    {
        let Some(req) = read_request(&mut conn)? else {
            return Ok(());
        };
        let head_end = req.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
        let line = String::from_utf8_lossy(&req[..head_end]).into_owned();
        let mut first = line.lines().next().unwrap_or("").split(' ');
        let method = first.next().unwrap_or("").to_string();
        let path = first.next().unwrap_or("").to_string();
        let fault = {
            let mut s = state.0.lock().unwrap();
            s.seen.push((method.clone(), path.clone()));
            s.heads
                .push((method.clone(), path.clone(), line.to_ascii_lowercase()));
            let mut fault = None;
            for r in s.rules.iter_mut() {
                if r.left > 0 && matches(r.on, &method, &path) {
                    r.left -= 1;
                    fault = Some(r.fault);
                    break;
                }
            }
            fault
        };
        match fault {
            Some(Fault::Unavailable) => {
                conn.write_all(
                    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )?;
                return Ok(());
            }
            Some(Fault::Reset) => {
                reset(&conn);
                return Ok(());
            }
            Some(Fault::Hold) => {
                let mut s = state.0.lock().unwrap();
                s.held += 1;
                while !s.released {
                    s = state.1.wait(s).unwrap();
                }
                s.held -= 1;
            }
            _ => {}
        }
        // Forward with `Connection: close` added to the head.
        let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
        up.write_all(&req[..head_end - 2])?;
        up.write_all(b"connection: close\r\n\r\n")?;
        up.write_all(&req[head_end..])?;
        let mut resp = Vec::new();
        up.read_to_end(&mut resp)?;
        if fault == Some(Fault::Cut) {
            conn.write_all(&resp[..resp.len() / 2])?;
            let _ = conn.shutdown(Shutdown::Both);
            return Ok(());
        }
        // The server closes after its answer: so does the proxy, towards the client too.
        conn.write_all(&resp)?;
        let _ = conn.shutdown(Shutdown::Both);
        Ok(())
    }
}

/// Closes a connection with a TCP reset (SO_LINGER 0).
fn reset(conn: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket descriptor and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// A loopback listener that accepts connections and never answers.
pub struct Blackhole {
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Blackhole {
    pub fn start() -> Blackhole {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the listener");
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let sp = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut open = Vec::new();
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(c) = conn {
                    open.push(c);
                }
            }
        });
        Blackhole {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_secs(1),
        );
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A small tmpfs mounted on a fresh directory, unmounted on drop.
pub struct Tmpfs {
    pub path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fs");
        std::fs::create_dir(&path).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("run mount");
        assert!(st.success(), "mount a tmpfs (tests run as root)");
        Tmpfs { path, _dir: dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(&self.path)
            .status();
    }
}
