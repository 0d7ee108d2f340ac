//! OpenStack Swift authentication settings and the three ways to get a token: v1 (tempauth,
//! swauth, Rackspace's legacy API), Keystone v2.0 (Rackspace identity) and Keystone v3.
//!
//! Settings come under WAL-E's names (`SWIFT_*`) or WAL-G's (`OS_*`). The request bodies and
//! the parsing of the answers are pure functions here; [`super::swift`] sends them.

use std::fmt;
use std::time::Duration;

use serde_json::{json, Value};

use crate::config::Vars;
use crate::error::{Error, Result};

/// Which identity API issues tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthVersion {
    /// `GET <auth url>` with `X-Auth-User` / `X-Auth-Key` (tempauth, swauth).
    V1,
    /// Keystone v2.0: `POST <auth url>/tokens`.
    V2,
    /// Keystone v3: `POST <auth url>/auth/tokens`.
    V3,
}

/// Which of a catalog entry's endpoints to use (`SWIFT_ENDPOINT_TYPE`, `OS_INTERFACE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interface {
    Public,
    Internal,
    Admin,
}

impl Interface {
    fn v2_key(self) -> &'static str {
        match self {
            Interface::Public => "publicURL",
            Interface::Internal => "internalURL",
            Interface::Admin => "adminURL",
        }
    }
    fn v3_name(self) -> &'static str {
        match self {
            Interface::Public => "public",
            Interface::Internal => "internal",
            Interface::Admin => "admin",
        }
    }
}

/// Everything needed to authenticate. The password never appears in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct SwiftAuth {
    pub url: String,
    pub version: AuthVersion,
    pub user: String,
    password: String,
    /// Tenant (v2) or project (v3) name.
    pub tenant: Option<String>,
    pub region: Option<String>,
    pub interface: Interface,
    /// v3: the user's and the project's domain names.
    pub user_domain: String,
    pub project_domain: String,
}

impl fmt::Debug for SwiftAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SwiftAuth")
            .field("url", &self.url)
            .field("version", &self.version)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("tenant", &self.tenant)
            .field("region", &self.region)
            .field("interface", &self.interface)
            .field("user_domain", &self.user_domain)
            .field("project_domain", &self.project_domain)
            .finish()
    }
}

/// The first of `names` that is set (and not empty).
fn first<'a>(vars: &'a Vars, names: &[&str]) -> Option<&'a str> {
    names.iter().find_map(|n| vars.get(n)).map(str::trim)
}

const URL: &[&str] = &["SWIFT_AUTHURL", "OS_AUTH_URL"];
const USER: &[&str] = &["SWIFT_USER", "OS_USERNAME"];
const PASSWORD: &[&str] = &["SWIFT_PASSWORD", "OS_PASSWORD"];
const TENANT: &[&str] = &[
    "SWIFT_TENANT",
    "SWIFT_PROJECT_NAME",
    "OS_TENANT_NAME",
    "OS_PROJECT_NAME",
];
const REGION: &[&str] = &["SWIFT_REGION", "OS_REGION_NAME"];
const VERSION: &[&str] = &[
    "SWIFT_AUTH_VERSION",
    "OS_AUTH_VERSION",
    "OS_IDENTITY_API_VERSION",
];
const ENDPOINT_TYPE: &[&str] = &["SWIFT_ENDPOINT_TYPE", "OS_ENDPOINT_TYPE", "OS_INTERFACE"];

impl SwiftAuth {
    /// Reads the settings for `swift://<container>`. Missing ones are named, all at once.
    pub fn from_vars(vars: &Vars, container: &str) -> Result<SwiftAuth> {
        let mut missing = Vec::new();
        let mut need = |names: &[&str]| -> String {
            match first(vars, names) {
                Some(v) => v.to_string(),
                None => {
                    missing.push(names.join(" or "));
                    String::new()
                }
            }
        };
        let url = need(URL);
        let user = need(USER);
        let password = need(PASSWORD);
        let version = match first(vars, VERSION) {
            Some(v) => parse_version(v)?,
            // WAL-E defaults to Keystone v2.0 (Rackspace); WAL-G guesses from the URL.
            None => version_from_url(&url).unwrap_or(if vars.get("SWIFT_AUTHURL").is_some() {
                AuthVersion::V2
            } else {
                AuthVersion::V1
            }),
        };
        let tenant = first(vars, TENANT).map(String::from);
        if tenant.is_none() && version != AuthVersion::V1 {
            missing.push(TENANT.join(" or "));
        }
        if !missing.is_empty() {
            return Err(Error::Config(format!(
                "swift://{container}: missing {} (see README, Configuration)",
                missing.join(", ")
            )));
        }
        let interface = match first(vars, ENDPOINT_TYPE) {
            None => Interface::Public,
            Some(v) => match v.to_ascii_lowercase().trim_end_matches("url") {
                "public" => Interface::Public,
                "internal" => Interface::Internal,
                "admin" => Interface::Admin,
                _ => {
                    return Err(Error::Config(format!(
                        "SWIFT_ENDPOINT_TYPE={v:?} is not publicURL, internalURL or adminURL"
                    )))
                }
            },
        };
        let domain = first(vars, &["SWIFT_DOMAIN_NAME", "OS_DOMAIN_NAME"]).unwrap_or("Default");
        Ok(SwiftAuth {
            url: url.trim_end_matches('/').to_string(),
            version,
            user,
            password,
            tenant,
            region: first(vars, REGION).map(String::from),
            interface,
            user_domain: first(vars, &["SWIFT_USER_DOMAIN_NAME", "OS_USER_DOMAIN_NAME"])
                .unwrap_or(domain)
                .to_string(),
            project_domain: first(
                vars,
                &["SWIFT_PROJECT_DOMAIN_NAME", "OS_PROJECT_DOMAIN_NAME"],
            )
            .unwrap_or(domain)
            .to_string(),
        })
    }

    pub(super) fn password(&self) -> &str {
        &self.password
    }

    /// Where the token request goes.
    pub fn token_url(&self) -> String {
        match self.version {
            AuthVersion::V1 => self.url.clone(),
            AuthVersion::V2 if self.url.ends_with("/tokens") => self.url.clone(),
            AuthVersion::V2 => format!("{}/tokens", self.url),
            AuthVersion::V3 if self.url.ends_with("/auth/tokens") => self.url.clone(),
            AuthVersion::V3 => format!("{}/auth/tokens", self.url),
        }
    }

    /// The JSON body of a Keystone token request (v2.0 or v3).
    pub fn request_body(&self) -> Value {
        let tenant = self.tenant.clone().unwrap_or_default();
        match self.version {
            AuthVersion::V1 => Value::Null,
            AuthVersion::V2 => json!({
                "auth": {
                    "passwordCredentials": {"username": self.user, "password": self.password},
                    "tenantName": tenant,
                }
            }),
            AuthVersion::V3 => json!({
                "auth": {
                    "identity": {
                        "methods": ["password"],
                        "password": {"user": {
                            "name": self.user,
                            "domain": {"name": self.user_domain},
                            "password": self.password,
                        }},
                    },
                    "scope": {"project": {
                        "name": tenant,
                        "domain": {"name": self.project_domain},
                    }},
                }
            }),
        }
    }

    pub fn describe(&self) -> String {
        let v = match self.version {
            AuthVersion::V1 => "v1",
            AuthVersion::V2 => "Keystone v2.0",
            AuthVersion::V3 => "Keystone v3",
        };
        format!("{v} auth at {} as {:?}", self.url, self.user)
    }
}

fn parse_version(v: &str) -> Result<AuthVersion> {
    match v.trim().trim_start_matches(['v', 'V']) {
        "1" | "1.0" => Ok(AuthVersion::V1),
        "2" | "2.0" => Ok(AuthVersion::V2),
        "3" | "3.0" => Ok(AuthVersion::V3),
        _ => Err(Error::Config(format!(
            "SWIFT_AUTH_VERSION={v:?} is not 1, 2 or 3"
        ))),
    }
}

/// The version an auth URL names (`.../v3`, `.../v2.0`, `.../v1.0`), if it names one.
pub fn version_from_url(url: &str) -> Option<AuthVersion> {
    let path = url.trim_end_matches('/');
    let names = |v: &str| path.ends_with(&format!("/{v}")) || path.contains(&format!("/{v}/"));
    if names("v3") {
        Some(AuthVersion::V3)
    } else if names("v2.0") || names("v2") {
        Some(AuthVersion::V2)
    } else if names("v1.0") || names("v1") {
        Some(AuthVersion::V1)
    } else {
        None
    }
}

/// A token and where to use it.
#[derive(Clone, PartialEq, Eq)]
pub struct Issued {
    pub token: String,
    pub storage_url: String,
    /// How long the token is valid from now, when the server says.
    pub lifetime: Option<Duration>,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("token", &"<redacted>")
            .field("storage_url", &self.storage_url)
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

/// Time left until an RFC 3339 expiry, measured against `now`.
fn lifetime_until(expires: Option<&str>, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let t = chrono::DateTime::parse_from_rfc3339(expires?).ok()?;
    (t.with_timezone(&chrono::Utc) - now).to_std().ok()
}

/// A v1 answer: `X-Storage-Url`, `X-Auth-Token`, optionally `X-Auth-Token-Expires` (seconds).
pub fn parse_v1(
    storage_url: Option<&str>,
    token: Option<&str>,
    expires: Option<&str>,
) -> std::result::Result<Issued, String> {
    match (storage_url, token) {
        (Some(u), Some(t)) if !u.is_empty() && !t.is_empty() => Ok(Issued {
            token: t.to_string(),
            storage_url: u.to_string(),
            lifetime: expires
                .and_then(|e| e.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64),
        }),
        _ => Err("the answer has no X-Storage-Url or no X-Auth-Token".into()),
    }
}

/// The object-store endpoints of a catalog, for messages.
fn regions_seen(endpoints: &[&Value], region_key: &str) -> String {
    let mut r: Vec<&str> = endpoints
        .iter()
        .filter_map(|e| e.get(region_key).and_then(Value::as_str))
        .collect();
    r.sort();
    r.dedup();
    if r.is_empty() {
        "none".into()
    } else {
        r.join(", ")
    }
}

/// A Keystone v2.0 answer: `access.token.{id,expires}` and the `object-store` entry of
/// `access.serviceCatalog`.
pub fn parse_v2(
    body: &[u8],
    region: Option<&str>,
    interface: Interface,
    now: chrono::DateTime<chrono::Utc>,
) -> std::result::Result<Issued, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("the answer is not JSON: {e}"))?;
    let access = v.get("access").ok_or("the answer has no \"access\"")?;
    let token = access
        .pointer("/token/id")
        .and_then(Value::as_str)
        .ok_or("the answer has no access.token.id")?;
    let expires = access.pointer("/token/expires").and_then(Value::as_str);
    let endpoints = catalog_endpoints(access.get("serviceCatalog"));
    let chosen = endpoints
        .iter()
        .filter(|e| region.is_none_or(|r| e.get("region").and_then(Value::as_str) == Some(r)))
        .find_map(|e| e.get(interface.v2_key()).and_then(Value::as_str))
        .ok_or_else(|| no_endpoint(&endpoints, "region", region, interface.v2_key()))?;
    Ok(Issued {
        token: token.to_string(),
        storage_url: chosen.to_string(),
        lifetime: lifetime_until(expires, now),
    })
}

/// A Keystone v3 answer: the token in the `X-Subject-Token` header, `token.expires_at` and the
/// `object-store` entry of `token.catalog`.
pub fn parse_v3(
    subject_token: Option<&str>,
    body: &[u8],
    region: Option<&str>,
    interface: Interface,
    now: chrono::DateTime<chrono::Utc>,
) -> std::result::Result<Issued, String> {
    let token = subject_token
        .filter(|t| !t.is_empty())
        .ok_or("the answer has no X-Subject-Token header")?;
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("the answer is not JSON: {e}"))?;
    let t = v.get("token").ok_or("the answer has no \"token\"")?;
    let expires = t.get("expires_at").and_then(Value::as_str);
    let endpoints = catalog_endpoints(t.get("catalog"));
    let region_of = |e: &Value| {
        e.get("region_id")
            .or(e.get("region"))
            .and_then(Value::as_str)
            .map(String::from)
    };
    let chosen = endpoints
        .iter()
        .filter(|e| e.get("interface").and_then(Value::as_str) == Some(interface.v3_name()))
        .filter(|e| region.is_none_or(|r| region_of(e).as_deref() == Some(r)))
        .find_map(|e| e.get("url").and_then(Value::as_str))
        .ok_or_else(|| no_endpoint(&endpoints, "region_id", region, interface.v3_name()))?;
    Ok(Issued {
        token: token.to_string(),
        storage_url: chosen.to_string(),
        lifetime: lifetime_until(expires, now),
    })
}

fn catalog_endpoints(catalog: Option<&Value>) -> Vec<&Value> {
    catalog
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|s| s.get("type").and_then(Value::as_str) == Some("object-store"))
        .filter_map(|s| s.get("endpoints").and_then(Value::as_array))
        .flatten()
        .collect()
}

fn no_endpoint(endpoints: &[&Value], region_key: &str, region: Option<&str>, kind: &str) -> String {
    if endpoints.is_empty() {
        return "the catalog has no object-store service".into();
    }
    format!(
        "the catalog has no {kind} object-store endpoint{} (regions: {})",
        region
            .map(|r| format!(" in region {r:?}"))
            .unwrap_or_default(),
        regions_seen(endpoints, region_key)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        let mut v = Vars::default();
        for (k, val) in pairs {
            v.set(*k, *val);
        }
        v
    }

    fn now() -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::parse_from_rfc3339("2026-12-03T12:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc)
    }

    #[test]
    fn missing_settings_are_named_all_at_once() {
        let e = SwiftAuth::from_vars(&vars(&[]), "c")
            .unwrap_err()
            .to_string();
        for name in [
            "SWIFT_AUTHURL or OS_AUTH_URL",
            "SWIFT_USER or OS_USERNAME",
            "SWIFT_PASSWORD or OS_PASSWORD",
        ] {
            assert!(e.contains(name), "{e}");
        }
        let e = SwiftAuth::from_vars(
            &vars(&[
                ("SWIFT_AUTHURL", "https://id.example/v2.0"),
                ("SWIFT_USER", "u"),
                ("SWIFT_PASSWORD", "p"),
            ]),
            "c",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("SWIFT_TENANT or SWIFT_PROJECT_NAME or OS_TENANT_NAME"),
            "{e}"
        );
        assert!(!e.contains("SWIFT_USER"), "{e}");
    }

    #[test]
    fn wal_e_and_wal_g_names_both_work_and_the_password_is_never_shown() {
        let a = SwiftAuth::from_vars(
            &vars(&[
                ("SWIFT_AUTHURL", "https://id.example/v2.0/"),
                ("SWIFT_USER", "u"),
                ("SWIFT_PASSWORD", "hunter2-secret"),
                ("SWIFT_TENANT", "t"),
                ("SWIFT_REGION", "DFW"),
                ("SWIFT_ENDPOINT_TYPE", "internalURL"),
            ]),
            "c",
        )
        .unwrap();
        assert_eq!(a.version, AuthVersion::V2);
        assert_eq!(a.token_url(), "https://id.example/v2.0/tokens");
        assert_eq!(a.interface, Interface::Internal);
        assert!(!format!("{a:?}").contains("hunter2"));
        let g = SwiftAuth::from_vars(
            &vars(&[
                ("OS_AUTH_URL", "https://id.example/v3"),
                ("OS_USERNAME", "u"),
                ("OS_PASSWORD", "p"),
                ("OS_PROJECT_NAME", "proj"),
                ("OS_USER_DOMAIN_NAME", "ud"),
                ("OS_REGION_NAME", "RegionOne"),
            ]),
            "c",
        )
        .unwrap();
        assert_eq!(g.version, AuthVersion::V3);
        assert_eq!(g.token_url(), "https://id.example/v3/auth/tokens");
        assert_eq!(g.user_domain, "ud");
        assert_eq!(g.project_domain, "Default");
        let body = g.request_body();
        assert_eq!(
            body.pointer("/auth/scope/project/name"),
            Some(&json!("proj"))
        );
        assert_eq!(
            body.pointer("/auth/identity/password/user/domain/name"),
            Some(&json!("ud"))
        );
        let v1 = SwiftAuth::from_vars(
            &vars(&[
                ("SWIFT_AUTHURL", "http://127.0.0.1:8080/auth/v1.0"),
                ("SWIFT_USER", "test:tester"),
                ("SWIFT_PASSWORD", "p"),
            ]),
            "c",
        )
        .unwrap();
        assert_eq!(v1.version, AuthVersion::V1);
        let forced = SwiftAuth::from_vars(
            &vars(&[
                (
                    "SWIFT_AUTHURL",
                    "https://identity.api.rackspacecloud.com/v2.0",
                ),
                ("SWIFT_USER", "u"),
                ("SWIFT_PASSWORD", "p"),
                ("SWIFT_TENANT", "t"),
                ("SWIFT_AUTH_VERSION", "2"),
            ]),
            "c",
        )
        .unwrap();
        assert_eq!(forced.version, AuthVersion::V2);
        // WAL-E's default is Keystone v2.0; WAL-G's (an unversioned URL) v1.
        let base = [
            ("SWIFT_USER", "u"),
            ("SWIFT_PASSWORD", "p"),
            ("SWIFT_TENANT", "t"),
        ];
        let mut wale = base.to_vec();
        wale.push(("SWIFT_AUTHURL", "https://auth.example"));
        assert_eq!(
            SwiftAuth::from_vars(&vars(&wale), "c").unwrap().version,
            AuthVersion::V2
        );
        let walg = vars(&[
            ("OS_AUTH_URL", "https://auth.example"),
            ("OS_USERNAME", "u"),
            ("OS_PASSWORD", "p"),
        ]);
        assert_eq!(
            SwiftAuth::from_vars(&walg, "c").unwrap().version,
            AuthVersion::V1
        );
        assert!(SwiftAuth::from_vars(
            &vars(&[
                ("SWIFT_AUTHURL", "x"),
                ("SWIFT_USER", "u"),
                ("SWIFT_PASSWORD", "p"),
                ("SWIFT_AUTH_VERSION", "4"),
            ]),
            "c"
        )
        .is_err());
    }

    #[test]
    fn v1_answers_give_the_storage_url_and_the_lifetime() {
        let i = parse_v1(Some("http://h/v1/AUTH_t"), Some("AUTH_tk1"), Some("86399")).unwrap();
        assert_eq!(i.storage_url, "http://h/v1/AUTH_t");
        assert_eq!(i.lifetime, Some(Duration::from_secs(86399)));
        assert!(!format!("{i:?}").contains("AUTH_tk1"));
        assert!(parse_v1(None, Some("t"), None).is_err());
    }

    #[test]
    fn v2_catalogs_choose_region_and_endpoint_type() {
        let body = br#"{"access": {"token": {"id": "tok", "expires": "2026-12-03T13:00:00Z"},
          "serviceCatalog": [
            {"type": "compute", "endpoints": [{"region": "DFW", "publicURL": "http://nova"}]},
            {"type": "object-store", "name": "cloudFiles", "endpoints": [
              {"region": "ORD", "publicURL": "https://ord/v1/A", "internalURL": "https://snet-ord/v1/A"},
              {"region": "DFW", "publicURL": "https://dfw/v1/A", "internalURL": "https://snet-dfw/v1/A"}]}]}}"#;
        let i = parse_v2(body, Some("DFW"), Interface::Internal, now()).unwrap();
        assert_eq!(i.storage_url, "https://snet-dfw/v1/A");
        assert_eq!(i.token, "tok");
        assert_eq!(i.lifetime, Some(Duration::from_secs(3600)));
        let first = parse_v2(body, None, Interface::Public, now()).unwrap();
        assert_eq!(first.storage_url, "https://ord/v1/A");
        let e = parse_v2(body, Some("SYD"), Interface::Public, now()).unwrap_err();
        assert!(e.contains("ORD, DFW") || e.contains("DFW, ORD"), "{e}");
        assert!(parse_v2(b"{}", None, Interface::Public, now()).is_err());
        assert!(parse_v2(b"not json", None, Interface::Public, now()).is_err());
    }

    #[test]
    fn v3_catalogs_choose_region_and_interface() {
        let body = br#"{"token": {"expires_at": "2026-12-03T12:30:00.000000Z", "catalog": [
            {"type": "object-store", "endpoints": [
              {"interface": "admin", "region_id": "RegionOne", "url": "http://admin/v1/AUTH_p"},
              {"interface": "public", "region_id": "RegionOne", "region": "RegionOne", "url": "http://pub/v1/AUTH_p"}]}]}}"#;
        let i = parse_v3(
            Some("subj"),
            body,
            Some("RegionOne"),
            Interface::Public,
            now(),
        )
        .unwrap();
        assert_eq!(i.storage_url, "http://pub/v1/AUTH_p");
        assert_eq!(i.token, "subj");
        assert_eq!(i.lifetime, Some(Duration::from_secs(1800)));
        assert!(parse_v3(None, body, None, Interface::Public, now()).is_err());
        assert!(parse_v3(Some("s"), body, None, Interface::Internal, now()).is_err());
    }

    proptest::proptest! {
        #[test]
        fn auth_answers_never_panic(body in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = parse_v2(&body, Some("r"), Interface::Public, now());
            let _ = parse_v3(Some("t"), &body, None, Interface::Admin, now());
        }
    }
}
