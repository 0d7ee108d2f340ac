//! Prefix URLs and the object_store builders behind them.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpRequest, HttpResponse, HttpService, ReqwestConnector,
};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::local::LocalFileSystem;
use object_store::{BackoffConfig, ClientOptions, HeaderValue, ObjectStore, RetryConfig};
use reqwest::header::IF_NONE_MATCH;

use crate::config::Settings;
use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    File(PathBuf),
    S3 { bucket: String, path: String },
    Gcs { bucket: String, path: String },
    Azure { container: String, path: String },
    Swift { container: String, path: String },
}

impl Location {
    pub fn describe(&self) -> String {
        match self {
            Location::File(p) => format!("file://{}", p.display()),
            Location::S3 { bucket, path } => format!("s3://{bucket}/{path}"),
            Location::Gcs { bucket, path } => format!("gs://{bucket}/{path}"),
            Location::Azure { container, path } => format!("az://{container}/{path}"),
            Location::Swift { container, path } => format!("swift://{container}/{path}"),
        }
    }
}

/// Parses a WAL-E or WAL-G style prefix: `/abs/dir`, `file:///abs/dir`, `file://localhost/dir`,
/// `s3://bucket/path`, `gs://bucket/path`, `az://container/path` or `wabs://container/path`.
pub fn parse_prefix(prefix: &str) -> Result<Location> {
    let prefix = prefix.trim();
    if prefix.starts_with('/') {
        return Ok(Location::File(PathBuf::from(prefix)));
    }
    let (scheme, rest) = prefix.split_once("://").ok_or_else(|| {
        Error::Config(format!(
            "archive prefix {prefix:?} is neither an absolute path nor a URL (file://, s3://, gs://, az://, wabs://, swift://)"
        ))
    })?;
    let split = |rest: &str| -> Result<(String, String)> {
        let (bucket, path) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::Config(format!(
                "archive prefix {prefix:?} has no bucket"
            )));
        }
        Ok((bucket.to_string(), path.trim_matches('/').to_string()))
    };
    match scheme.to_ascii_lowercase().as_str() {
        "file" => {
            let path = rest.strip_prefix("localhost").unwrap_or(rest);
            if !path.starts_with('/') {
                return Err(Error::Config(format!(
                    "archive prefix {prefix:?}: a file:// prefix needs an absolute path"
                )));
            }
            Ok(Location::File(PathBuf::from(path)))
        }
        "s3" => split(rest).map(|(bucket, path)| Location::S3 { bucket, path }),
        "gs" | "gcs" => split(rest).map(|(bucket, path)| Location::Gcs { bucket, path }),
        "az" | "azure" | "wabs" => {
            split(rest).map(|(container, path)| Location::Azure { container, path })
        }
        "swift" => split(rest).map(|(container, path)| Location::Swift { container, path }),
        other => Err(Error::Config(format!(
            "archive prefix {prefix:?}: unknown scheme {other:?} (use file://, s3://, gs://, az://, wabs:// or swift://)"
        ))),
    }
}

/// object_store's own retries are off: walkeeper's retry layer (`retry.rs`) is the only one.
fn retry_config(settings: &Settings) -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig::default(),
        max_retries: 0,
        retry_timeout: settings.retry_timeout,
    }
}

/// No total request timeout (a large download may take long; walkeeper bounds each request and
/// each chunk by the retry timeout instead); connecting must succeed within the retry timeout.
fn client_options(settings: &Settings, allow_http: bool) -> ClientOptions {
    let connect = settings
        .retry_timeout
        .clamp(Duration::from_secs(1), Duration::from_secs(10));
    ClientOptions::new()
        .with_allow_http(allow_http)
        .with_connect_timeout(connect)
        .with_timeout_disabled()
        .with_pool_idle_timeout(Duration::from_secs(30))
}

/// An HTTP client that makes every S3 CompleteMultipartUpload create-only
/// (`If-None-Match: *`), which object_store 0.12 does not offer for `put_multipart`. The header is
/// not part of the signature (SigV4 signs only the headers it lists), which S3 accepts.
#[derive(Debug)]
struct CreateOnlyComplete(HttpClient);

fn is_complete_multipart(req: &HttpRequest) -> bool {
    req.method() == reqwest::Method::POST
        && req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|p| p.starts_with("uploadId=")))
}

impl HttpService for CreateOnlyComplete {
    fn call<'life0, 'async_trait>(
        &'life0 self,
        mut req: HttpRequest,
    ) -> Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            if is_complete_multipart(&req) {
                req.headers_mut()
                    .insert(IF_NONE_MATCH, HeaderValue::from_static("*"));
            }
            self.0.execute(req).await
        })
    }
}

#[derive(Debug, Default)]
struct CreateOnlyConnector;

impl HttpConnector for CreateOnlyConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        Ok(HttpClient::new(CreateOnlyComplete(
            ReqwestConnector::default().connect(options)?,
        )))
    }
}

/// A built store and what it can do.
pub(super) struct Built {
    pub store: Arc<dyn ObjectStore>,
    /// The key prefix inside the bucket.
    pub root: String,
    /// The archive directory, for file://.
    pub local_root: Option<PathBuf>,
    pub create_only_put: bool,
    pub create_only_multipart: bool,
    /// Attributes every upload carries (the S3 storage class).
    pub put_attributes: object_store::Attributes,
}

/// S3 server-side encryption and storage class, under WAL-G's names (the YAML's `s3:` section
/// fills them when unset): `WALG_S3_SSE` (`AES256`, `aws:kms`, `aws:kms:dsse`; object_store's
/// `AWS_SERVER_SIDE_ENCRYPTION` still works), `WALG_S3_SSE_KMS_ID` (implies `aws:kms`) and
/// `WALG_S3_STORAGE_CLASS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Upload {
    pub sse: Option<String>,
    pub kms_key_id: Option<String>,
    pub storage_class: Option<String>,
}

pub fn s3_upload(vars: &crate::config::Vars) -> Result<S3Upload> {
    let kms_key_id = vars
        .get("WALG_S3_SSE_KMS_ID")
        .or(vars.get("AWS_SSE_KMS_KEY_ID"))
        .map(|v| v.trim().to_string());
    let sse = vars
        .get("WALG_S3_SSE")
        .or(vars.get("AWS_SERVER_SIDE_ENCRYPTION"))
        .map(|v| v.trim().to_string());
    let sse = match (sse.as_deref(), &kms_key_id) {
        (None, Some(_)) => Some("aws:kms".to_string()),
        (Some("AES256"), Some(_)) => {
            return Err(Error::Config(
                "WALG_S3_SSE_KMS_ID is set but WALG_S3_SSE=AES256: a KMS key needs aws:kms".into(),
            ))
        }
        (Some(v @ ("AES256" | "aws:kms" | "aws:kms:dsse")), _) => Some(v.to_string()),
        (Some(other), _) => {
            return Err(Error::Config(format!(
                "WALG_S3_SSE={other:?} is not one of AES256, aws:kms, aws:kms:dsse"
            )))
        }
        (None, None) => None,
    };
    let storage_class = match vars.get("WALG_S3_STORAGE_CLASS").map(str::trim) {
        Some(c) if !c.is_empty() && c.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') => {
            Some(c.to_string())
        }
        Some(c) => {
            return Err(Error::Config(format!(
                "WALG_S3_STORAGE_CLASS={c:?} is not an S3 storage class (e.g. STANDARD, \
                 STANDARD_IA, INTELLIGENT_TIERING)"
            )))
        }
        None => None,
    };
    Ok(S3Upload {
        sse,
        kms_key_id,
        storage_class,
    })
}

/// The endpoint and the token provider for gs://: object_store's GCP credential chain (a service
/// account file or key, application default credentials, the instance metadata server), from
/// the `GOOGLE_*` settings. A service account's `gcs_base_url` names another endpoint, as in
/// object_store.
fn gcs_credentials(
    vars: &crate::config::Vars,
    bucket: &str,
    settings: &Settings,
) -> Result<(String, Option<object_store::gcp::GcpCredentialProvider>)> {
    let mut b = GoogleCloudStorageBuilder::new();
    for (k, v) in vars.iter() {
        if k.starts_with("GOOGLE_") && !v.is_empty() {
            if let Ok(key) = GoogleConfigKey::from_str(&k.to_ascii_lowercase()) {
                b = b.with_config(key, v);
            }
        }
    }
    let account = b
        .get_config_value(&GoogleConfigKey::ServiceAccountKey)
        .map(|key| ("GOOGLE_SERVICE_ACCOUNT_KEY".to_string(), key))
        .or_else(|| {
            let path = b.get_config_value(&GoogleConfigKey::ServiceAccount)?;
            std::fs::read_to_string(&path).ok().map(|text| (path, text))
        });
    let base = match account {
        Some((what, text)) => {
            #[derive(serde::Deserialize)]
            struct Account {
                gcs_base_url: Option<String>,
            }
            serde_json::from_str::<Account>(&text)
                .map_err(|e| Error::Config(format!("gs://{bucket}: service account {what}: {e}")))?
                .gcs_base_url
        }
        None => None,
    }
    .unwrap_or_else(|| super::gcs::DEFAULT_BASE_URL.to_string());
    let gcs = b
        .with_bucket_name(bucket)
        .with_retry(retry_config(settings))
        .with_client_options(client_options(settings, false))
        .build()
        .map_err(|e| Error::Config(format!("gs://{bucket}: {e}")))?;
    Ok((base, Some(gcs.credentials().clone())))
}

/// Builds the store for a location.
pub(super) fn build(location: &Location, settings: &Settings) -> Result<Built> {
    let vars = &settings.vars;
    match location {
        Location::Swift { container, path } => {
            let auth = super::swift_auth::SwiftAuth::from_vars(vars, container)?;
            let connect = settings
                .retry_timeout
                .clamp(Duration::from_secs(1), Duration::from_secs(10));
            let swift = super::swift::Swift::new(auth, container, connect)
                .map_err(|e| Error::Config(format!("swift://{container}: {e}")))?;
            Ok(Built {
                store: Arc::new(swift),
                root: path.clone(),
                local_root: None,
                // `If-None-Match: *` on objects and on SLO manifests.
                create_only_put: true,
                create_only_multipart: true,
                put_attributes: Default::default(),
            })
        }
        Location::File(dir) => {
            crate::storage::local::ensure_dir(dir)
                .map_err(|e| Error::Config(format!("archive directory {}: {e}", dir.display())))?;
            let fs = LocalFileSystem::new_with_prefix(dir)
                .map_err(|e| Error::Config(format!("archive directory {}: {e}", dir.display())))?;
            Ok(Built {
                store: Arc::new(fs),
                root: String::new(),
                local_root: Some(dir.clone()),
                create_only_put: true,
                create_only_multipart: true,
                put_attributes: Default::default(),
            })
        }
        Location::S3 { bucket, path } => {
            let mut b = AmazonS3Builder::new();
            for (k, v) in vars.iter() {
                if k.starts_with("AWS_") && !v.is_empty() {
                    if let Ok(key) = AmazonS3ConfigKey::from_str(&k.to_ascii_lowercase()) {
                        b = b.with_config(key, v);
                    }
                }
            }
            let upload = s3_upload(vars)?;
            // object_store's encryption keys, by their configuration names (the key enum is
            // not exported).
            for (name, value) in [
                ("aws_server_side_encryption", &upload.sse),
                ("aws_sse_kms_key_id", &upload.kms_key_id),
            ] {
                if let Some(v) = value {
                    let key = AmazonS3ConfigKey::from_str(name)
                        .map_err(|e| Error::Config(format!("s3://{bucket}: {name}: {e}")))?;
                    b = b.with_config(key, v);
                }
            }
            let mut put_attributes = object_store::Attributes::new();
            if let Some(c) = &upload.storage_class {
                put_attributes.insert(object_store::Attribute::StorageClass, c.clone().into());
            }
            let mut endpoint = vars.get("AWS_ENDPOINT").map(String::from);
            let mut path_style = None;
            if let Some(wale) = vars.get("WALE_S3_ENDPOINT") {
                let (url, style) = parse_wale_endpoint(wale)?;
                endpoint.get_or_insert(url);
                path_style = style;
            }
            if let Some(v) = vars.get("AWS_S3_FORCE_PATH_STYLE") {
                path_style = Some(parse_bool("AWS_S3_FORCE_PATH_STYLE", v)?);
            }
            let region = vars
                .get("AWS_REGION")
                .or(vars.get("AWS_DEFAULT_REGION"))
                .unwrap_or("us-east-1");
            let allow_http = endpoint
                .as_deref()
                .is_some_and(|e| e.starts_with("http://"));
            if let Some(ep) = &endpoint {
                b = b.with_endpoint(ep);
            }
            // `AWS_CONDITIONAL_PUT=disabled` for a store that refuses `If-None-Match`: writes
            // then look before they put (see DESIGN.md).
            let conditional = vars
                .get("AWS_CONDITIONAL_PUT")
                .is_none_or(|v| v.trim() != "disabled");
            if conditional {
                b = b.with_http_connector(CreateOnlyConnector);
            }
            b = b
                .with_bucket_name(bucket)
                .with_region(region)
                .with_virtual_hosted_style_request(!path_style.unwrap_or(true))
                .with_retry(retry_config(settings))
                .with_client_options(client_options(settings, allow_http));
            let s3 = b
                .build()
                .map_err(|e| Error::Config(format!("s3://{bucket}: {e}")))?;
            Ok(Built {
                store: Arc::new(s3),
                root: path.clone(),
                local_root: None,
                create_only_put: conditional,
                create_only_multipart: conditional,
                put_attributes,
            })
        }
        Location::Gcs { bucket, path } => {
            let connect = settings
                .retry_timeout
                .clamp(Duration::from_secs(1), Duration::from_secs(10));
            let (base, credentials) = match vars.get("STORAGE_EMULATOR_HOST") {
                // Google's client libraries (and so WAL-G) send everything to the emulator,
                // without a token.
                Some(host) => (super::gcs::emulator_base(host), None),
                None => gcs_credentials(vars, bucket, settings)?,
            };
            let csek = vars
                .get("GCS_ENCRYPTION_KEY")
                .map(super::gcs::Csek::parse)
                .transpose()
                .map_err(|e| Error::Config(format!("gs://{bucket}: {e}")))?;
            if vars
                .get("GCS_NORMALIZE_PREFIX")
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("false"))
            {
                return Err(Error::Config(format!(
                    "gs://{bucket}: GCS_NORMALIZE_PREFIX=false (keys with double slashes) is not \
                     supported: walkeeper always normalizes the prefix"
                )));
            }
            let gcs = super::gcs::Gcs::new(&base, bucket, credentials, csek, connect)
                .map_err(|e| Error::Config(format!("gs://{bucket}: {e}")))?;
            Ok(Built {
                store: Arc::new(gcs),
                root: path.clone(),
                local_root: None,
                // Single uploads and resumable sessions both carry `ifGenerationMatch=0`; the
                // store still looks before finalizing a session (see DESIGN.md).
                create_only_put: true,
                create_only_multipart: false,
                put_attributes: Default::default(),
            })
        }
        Location::Azure { container, path } => {
            let mut b = MicrosoftAzureBuilder::new();
            for (k, v) in vars.iter() {
                if k.starts_with("AZURE_") && !v.is_empty() {
                    if let Ok(key) = AzureConfigKey::from_str(&k.to_ascii_lowercase()) {
                        b = b.with_config(key, v);
                    }
                }
            }
            // WAL-E and WAL-G names.
            if let Some(a) = vars
                .get("WABS_ACCOUNT_NAME")
                .or(vars.get("AZURE_STORAGE_ACCOUNT"))
            {
                b = b.with_account(a);
            }
            if let Some(k) = vars
                .get("WABS_ACCESS_KEY")
                .or(vars.get("AZURE_STORAGE_ACCESS_KEY"))
            {
                b = b.with_access_key(k);
            }
            if let Some(t) = vars
                .get("WABS_SAS_TOKEN")
                .or(vars.get("AZURE_STORAGE_SAS_TOKEN"))
            {
                b = b.with_config(AzureConfigKey::SasKey, t);
            }
            let az = b
                .with_container_name(container)
                .with_retry(retry_config(settings))
                .with_client_options(client_options(settings, false))
                .build()
                .map_err(|e| Error::Config(format!("az://{container}: {e}")))?;
            Ok(Built {
                store: Arc::new(az),
                root: path.clone(),
                local_root: None,
                create_only_put: true,
                create_only_multipart: false,
                put_attributes: Default::default(),
            })
        }
    }
}

/// WAL-E's `WALE_S3_ENDPOINT`: `<http|https>+<path|virtualhost|subdomain>://host[:port]`.
fn parse_wale_endpoint(v: &str) -> Result<(String, Option<bool>)> {
    let (scheme, hostport) = v
        .split_once("://")
        .ok_or_else(|| Error::Config(format!("WALE_S3_ENDPOINT={v:?} is not a URL")))?;
    let (proto, style) = scheme.split_once('+').unwrap_or((scheme, ""));
    if proto != "http" && proto != "https" {
        return Err(Error::Config(format!(
            "WALE_S3_ENDPOINT={v:?}: scheme must be http or https"
        )));
    }
    let path_style = match style {
        "" => None,
        "path" => Some(true),
        "virtualhost" | "subdomain" => Some(false),
        other => {
            return Err(Error::Config(format!(
                "WALE_S3_ENDPOINT={v:?}: unknown calling format {other:?}"
            )))
        }
    };
    Ok((
        format!("{proto}://{}", hostport.trim_end_matches('/')),
        path_style,
    ))
}

fn parse_bool(name: &str, v: &str) -> Result<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(Error::Config(format!("{name}={v:?} is not a boolean"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_encryption_and_storage_class_follow_wal_g_names() {
        let vars = |pairs: &[(&str, &str)]| {
            let mut v = crate::config::Vars::default();
            for (k, val) in pairs {
                v.set(*k, *val);
            }
            v
        };
        assert_eq!(s3_upload(&vars(&[])).unwrap(), S3Upload::default());
        let u = s3_upload(&vars(&[("WALG_S3_SSE_KMS_ID", "k1")])).unwrap();
        assert_eq!(u.sse.as_deref(), Some("aws:kms"));
        assert_eq!(u.kms_key_id.as_deref(), Some("k1"));
        let u = s3_upload(&vars(&[
            ("WALG_S3_SSE", "AES256"),
            ("WALG_S3_STORAGE_CLASS", "INTELLIGENT_TIERING"),
        ]))
        .unwrap();
        assert_eq!(u.sse.as_deref(), Some("AES256"));
        assert_eq!(u.storage_class.as_deref(), Some("INTELLIGENT_TIERING"));
        assert!(s3_upload(&vars(&[
            ("WALG_S3_SSE", "AES256"),
            ("WALG_S3_SSE_KMS_ID", "k")
        ]))
        .is_err());
        assert!(s3_upload(&vars(&[("WALG_S3_SSE", "rot13")])).is_err());
        assert!(s3_upload(&vars(&[("WALG_S3_STORAGE_CLASS", "glacier; x")])).is_err());
    }

    #[test]
    fn prefixes_of_every_scheme_parse() {
        assert_eq!(
            parse_prefix("/srv/a").unwrap(),
            Location::File("/srv/a".into())
        );
        assert_eq!(
            parse_prefix("file:///srv/a").unwrap(),
            Location::File("/srv/a".into())
        );
        assert_eq!(
            parse_prefix("file://localhost/srv/a").unwrap(),
            Location::File("/srv/a".into())
        );
        assert_eq!(
            parse_prefix("s3://bkt/some/path/").unwrap(),
            Location::S3 {
                bucket: "bkt".into(),
                path: "some/path".into()
            }
        );
        assert_eq!(
            parse_prefix("wabs://c/p").unwrap(),
            Location::Azure {
                container: "c".into(),
                path: "p".into()
            }
        );
        assert!(matches!(
            parse_prefix("gs://b").unwrap(),
            Location::Gcs { .. }
        ));
    }

    #[test]
    fn unknown_schemes_and_relative_paths_are_refused() {
        let e = parse_prefix("ftp://host/x").unwrap_err().to_string();
        assert!(e.contains("unknown scheme \"ftp\""), "{e}");
        assert!(parse_prefix("relative/dir").is_err());
        assert!(parse_prefix("file://relative").is_err());
        assert!(parse_prefix("s3:///nobucket").is_err());
    }

    #[test]
    fn wale_endpoint_sets_scheme_and_calling_format() {
        assert_eq!(
            parse_wale_endpoint("http+path://127.0.0.1:9000").unwrap(),
            ("http://127.0.0.1:9000".to_string(), Some(true))
        );
        assert_eq!(
            parse_wale_endpoint("https://s3.example.com").unwrap(),
            ("https://s3.example.com".to_string(), None)
        );
        assert!(parse_wale_endpoint("ftp+path://x").is_err());
    }

    #[test]
    fn only_multipart_completions_are_made_create_only() {
        let req = |method: &str, uri: &str| {
            let mut r = HttpRequest::new(object_store::client::HttpRequestBody::empty());
            *r.method_mut() = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            *r.uri_mut() = uri.parse().unwrap();
            r
        };
        assert!(is_complete_multipart(&req(
            "POST",
            "http://h/b/k?uploadId=abc"
        )));
        assert!(!is_complete_multipart(&req("POST", "http://h/b/k?uploads")));
        assert!(!is_complete_multipart(&req(
            "DELETE",
            "http://h/b/k?uploadId=abc"
        )));
        assert!(!is_complete_multipart(&req(
            "PUT",
            "http://h/b/k?partNumber=1&uploadId=abc"
        )));
    }

    #[test]
    fn cloud_stores_build_without_network() {
        let mut s = Settings::from_sources(Default::default(), None, None).unwrap();
        s.vars.set("AWS_ACCESS_KEY_ID", "AK");
        s.vars.set("AWS_SECRET_ACCESS_KEY", "SK");
        s.vars.set("AWS_ENDPOINT", "http://127.0.0.1:9");
        assert!(build(&parse_prefix("s3://b/p").unwrap(), &s).is_ok());
        s.vars.set("WABS_ACCOUNT_NAME", "acct");
        s.vars.set("WABS_ACCESS_KEY", "a2V5");
        assert!(build(&parse_prefix("wabs://c/p").unwrap(), &s).is_ok());
    }
}
