//! Store-level checks shared by the tests of the hand-written HTTP stores (Swift, GCS): a
//! `Store` from variables, a runtime to drive it, incompressible bytes, the create-only
//! refusal, and the paged-listing check.

use std::collections::BTreeMap;

use walkeeper::config::Settings;
use walkeeper::storage::Store;

pub fn store(vars: &[(String, String)]) -> Store {
    let map: BTreeMap<String, String> = vars.iter().cloned().collect();
    let settings = Settings::from_sources(map, None, None).unwrap();
    Store::from_settings(&settings).unwrap()
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Pseudo-random bytes (incompressible, so sizes are what they say).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Is this the store's refusal to overwrite an object?
pub fn already_exists(e: &walkeeper::Error) -> bool {
    matches!(
        e,
        walkeeper::Error::Storage {
            source: object_store::Error::AlreadyExists { .. },
            ..
        }
    )
}

/// 1010 objects (more than one page of 1000) list in order, a listing after a key reads only
/// what follows it, and a folder's top level lists them all.
pub fn check_paged_listings(s: &Store) {
    use futures::StreamExt;
    runtime().block_on(async {
        let names: Vec<String> = (0..1010).map(|i| format!("wal_005/{i:024X}")).collect();
        futures::stream::iter(names.clone())
            .for_each_concurrent(8, |n| async move {
                s.put_bytes(&n, bytes::Bytes::from(n.clone()))
                    .await
                    .unwrap();
            })
            .await;
        let listed: Vec<String> = s
            .list("wal_005/")
            .await
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(listed, names);
        let after = s
            .list_after("wal_005", &names[1000], |_| true)
            .await
            .unwrap();
        let after: Vec<&str> = after.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            after,
            names[1001..].iter().map(String::as_str).collect::<Vec<_>>()
        );
        let top = s.list_top("wal_005").await.unwrap();
        assert_eq!(top.len(), 1010);
    });
}
