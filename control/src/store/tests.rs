#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;

use super::*;

fn token(id: &str, expires_at: i64) -> RelayTokenRecord {
    RelayTokenRecord {
        id: id.to_owned(),
        secret_hash: format!("hash-of-{id}"),
        region: "eu".to_owned(),
        name: Some(format!("relay-{id}")),
        created_at: 1_000,
        expires_at,
        used_at: None,
        used_by: None,
    }
}

fn relay(name: &str) -> RelayRecord {
    RelayRecord {
        name: name.to_owned(),
        region: "eu".to_owned(),
        state: RelayAdminState::Active,
        version: "0.1.0".to_owned(),
        addresses: vec!["203.0.113.7:443".to_owned()],
        location: Some((52.0, 4.25)),
        enrolled_at: 1_000,
        last_seen_at: None,
        state_changed_at: 1_000,
    }
}

fn service(name: &str) -> ServiceRecord {
    ServiceRecord {
        name: name.to_owned(),
        kind: StreamKind::Http,
        backend: "127.0.0.1:8080".to_owned(),
        hostnames: vec![
            format!("{name}.example.com"),
            "alias.example.com".to_owned(),
        ],
        access: Access::Token,
        created_at: 1_000,
    }
}

fn access_token(id: &str, created_at: i64, expires_at: i64) -> AccessTokenRecord {
    AccessTokenRecord {
        id: id.to_owned(),
        services: vec!["web".to_owned(), "db".to_owned()],
        created_at,
        expires_at,
        revoked_at: None,
    }
}

fn audit(id: &str, at: i64) -> AuditRecord {
    AuditRecord {
        id: id.to_owned(),
        at,
        actor: "ops".to_owned(),
        action: "service.add".to_owned(),
        target: "web".to_owned(),
        detail: r#"{"backend":"127.0.0.1:8080"}"#.to_owned(),
    }
}

async fn applied_migrations(store: &Store) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
        .fetch_one(&store.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn migrations_apply_once_and_a_reopen_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    // The data directory does not exist yet: open creates it.
    let path = dir.path().join("data").join("sat.db");
    let latest = MIGRATOR.iter().map(|m| m.version).max().unwrap();

    let store = Store::open(&path).await.unwrap();
    assert_eq!(store.schema_version().await.unwrap(), latest);
    assert_eq!(
        applied_migrations(&store).await,
        MIGRATOR.iter().count() as i64
    );
    store.put_relay(&relay("ams-1")).await.unwrap();
    store.insert_relay_token(&token("t1", 9_000)).await.unwrap();
    assert!(store.insert_service(&service("web")).await.unwrap());
    store.set_meta("ca_fingerprint", "abcd").await.unwrap();
    for _ in 0..3 {
        store.bump_generation().await.unwrap();
    }
    store.pool.close().await;

    let store = Store::open(&path).await.unwrap();
    assert_eq!(store.schema_version().await.unwrap(), latest);
    assert_eq!(
        applied_migrations(&store).await,
        MIGRATOR.iter().count() as i64,
        "a reopen must not apply the migrations again"
    );
    assert_eq!(store.relay("ams-1").await.unwrap(), Some(relay("ams-1")));
    assert_eq!(store.services().await.unwrap(), vec![service("web")]);
    assert_eq!(
        store.meta("ca_fingerprint").await.unwrap().as_deref(),
        Some("abcd")
    );
    assert_eq!(store.generation().await.unwrap(), 3);
    assert_eq!(store.bump_generation().await.unwrap(), 4);
    let redeemed = store
        .redeem_relay_token("t1", "hash-of-t1", "ams-1", 2_000)
        .await
        .unwrap();
    assert!(redeemed.is_ok(), "{redeemed:?}");
}

#[tokio::test]
async fn the_database_file_is_private_and_in_wal_mode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sat.db");
    let store = Store::open(&path).await.unwrap();
    store.set_meta("k", "v").await.unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    let wal = dir.path().join("sat.db-wal");
    let mode = std::fs::metadata(&wal).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "wal mode {mode:o}");
    let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&store.pool)
        .await
        .unwrap();
    assert_eq!(journal, "wal");
    let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
        .fetch_one(&store.pool)
        .await
        .unwrap();
    assert_eq!(busy, 5_000);
    let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(&store.pool)
        .await
        .unwrap();
    assert_eq!(fk, 1);
    // What the status page shows of it.
    assert_eq!(store.kind(), "sqlite");
    assert_eq!(store.location(), path.display().to_string());
}

#[tokio::test]
async fn an_open_that_fails_names_the_path_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"").unwrap();
    let path = file.join("sat.db");
    let err = Store::open(&path).await.unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("check that"), "{message}");
}

#[tokio::test]
async fn generation_counts_up_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("sat.db")).await.unwrap();
    assert_eq!(store.generation().await.unwrap(), 0);
    let bumps: Vec<_> = (0..16)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.bump_generation().await.unwrap() })
        })
        .collect();
    let mut seen = Vec::new();
    for bump in bumps {
        seen.push(bump.await.unwrap());
    }
    seen.sort_unstable();
    assert_eq!(seen, (1..=16).collect::<Vec<u64>>());
    assert_eq!(store.generation().await.unwrap(), 16);
}

#[tokio::test]
async fn a_relay_token_redeems_exactly_once() {
    let store = Store::open_memory().await.unwrap();
    store.insert_relay_token(&token("t1", 9_000)).await.unwrap();
    assert_eq!(
        store.relay_token("t1").await.unwrap(),
        Some(token("t1", 9_000))
    );
    assert_eq!(store.relay_token("nope").await.unwrap(), None);

    let first = store
        .redeem_relay_token("t1", "hash-of-t1", "ams-1", 2_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.used_at, Some(2_000));
    assert_eq!(first.used_by.as_deref(), Some("ams-1"));
    assert_eq!(first.region, "eu");
    assert_eq!(first.name.as_deref(), Some("relay-t1"));

    let again = store
        .redeem_relay_token("t1", "hash-of-t1", "fra-1", 3_000)
        .await
        .unwrap();
    assert_eq!(store.relay_token("t1").await.unwrap(), Some(first));
    assert_eq!(
        again,
        Err(RedeemRefusal::Used {
            at: 2_000,
            by: "ams-1".to_owned()
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_concurrent_redeemers_exactly_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("sat.db")).await.unwrap();
    for round in 0..10 {
        let id = format!("t{round}");
        store.insert_relay_token(&token(&id, 9_000)).await.unwrap();
        let tasks: Vec<_> = (0..4)
            .map(|i| {
                let (store, id) = (store.clone(), id.clone());
                tokio::spawn(async move {
                    store
                        .redeem_relay_token(&id, &format!("hash-of-{id}"), &format!("r{i}"), 2_000)
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut wins = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => wins += 1,
                Err(RedeemRefusal::Used { .. }) => {}
                Err(other) => panic!("round {round}: {other:?}"),
            }
        }
        assert_eq!(wins, 1, "round {round}");
    }
}

#[tokio::test]
async fn refusals_say_why() {
    let store = Store::open_memory().await.unwrap();
    store.insert_relay_token(&token("t1", 9_000)).await.unwrap();

    let refused = |r: Result<RelayTokenRecord, RedeemRefusal>| r.unwrap_err();
    assert_eq!(
        refused(
            store
                .redeem_relay_token("nope", "x", "r", 2_000)
                .await
                .unwrap()
        ),
        RedeemRefusal::Unknown
    );
    assert_eq!(
        refused(
            store
                .redeem_relay_token("t1", "wrong", "r", 2_000)
                .await
                .unwrap()
        ),
        RedeemRefusal::WrongSecret
    );
    assert_eq!(
        refused(
            store
                .redeem_relay_token("t1", "hash-of-t1", "r", 9_000)
                .await
                .unwrap()
        ),
        RedeemRefusal::Expired { at: 9_000 }
    );
    // None of the refusals used the token up.
    let won = store
        .redeem_relay_token("t1", "hash-of-t1", "r", 8_999)
        .await
        .unwrap();
    assert!(won.is_ok(), "{won:?}");
    // Without the secret, a caller does not learn that the token was used.
    assert_eq!(
        refused(
            store
                .redeem_relay_token("t1", "wrong", "r", 2_000)
                .await
                .unwrap()
        ),
        RedeemRefusal::WrongSecret
    );
}

#[tokio::test]
async fn services_insert_refuse_duplicates_and_remove() {
    let store = Store::open_memory().await.unwrap();
    assert!(store.insert_service(&service("web")).await.unwrap());
    let mut tcp = service("db");
    tcp.kind = StreamKind::Tcp;
    tcp.access = Access::Public;
    tcp.hostnames = Vec::new();
    assert!(store.insert_service(&tcp).await.unwrap());

    let mut other = service("web");
    other.backend = "10.0.0.1:80".to_owned();
    assert!(!store.insert_service(&other).await.unwrap());
    assert_eq!(
        store.services().await.unwrap(),
        vec![tcp.clone(), service("web")],
        "by name, and the duplicate changed nothing"
    );

    assert!(store.remove_service("web").await.unwrap());
    assert!(!store.remove_service("web").await.unwrap());
    assert_eq!(store.services().await.unwrap(), vec![tcp]);
}

#[tokio::test]
async fn access_tokens_revoke_and_list_only_unexpired_revocations() {
    let store = Store::open_memory().await.unwrap();
    store
        .insert_access_token(&access_token("a", 1_000, 5_000))
        .await
        .unwrap();
    store
        .insert_access_token(&access_token("b", 2_000, 50_000))
        .await
        .unwrap();
    store
        .insert_access_token(&access_token("c", 3_000, 50_000))
        .await
        .unwrap();

    let ids: Vec<_> = store
        .access_tokens()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(ids, ["c", "b", "a"], "newest first");

    assert_eq!(store.revoke_access_token("zz", 4_000).await.unwrap(), None);
    let revoked = store
        .revoke_access_token("a", 4_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(revoked.revoked_at, Some(4_000));
    assert_eq!(revoked.services, ["web", "db"]);
    store.revoke_access_token("b", 4_000).await.unwrap();
    let again = store
        .revoke_access_token("b", 4_500)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.revoked_at, Some(4_000), "the first revocation stands");

    assert_eq!(
        store.revoked_access_tokens(4_500).await.unwrap(),
        ["a", "b"]
    );
    // "a" expires at 5000: from then on it is refused anyway and need not be listed.
    assert_eq!(store.revoked_access_tokens(5_000).await.unwrap(), ["b"]);
}

#[tokio::test]
async fn audit_log_is_newest_first_and_limited() {
    let store = Store::open_memory().await.unwrap();
    for (id, at) in [("e1", 100), ("e3", 300), ("e2", 200), ("e4", 400)] {
        store.append_audit(&audit(id, at)).await.unwrap();
    }
    let log = store.audit_log(3).await.unwrap();
    let ids: Vec<_> = log.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["e4", "e3", "e2"]);
    assert_eq!(log[0], audit("e4", 400));
    assert_eq!(store.audit_log(100).await.unwrap().len(), 4);
    assert!(store.audit_log(0).await.unwrap().is_empty());
}

#[tokio::test]
async fn relay_state_changes_are_stored_with_their_time() {
    let store = Store::open_memory().await.unwrap();
    store.put_relay(&relay("fra-1")).await.unwrap();
    store.put_relay(&relay("ams-1")).await.unwrap();

    assert!(store
        .set_relay_state("ams-1", RelayAdminState::Drained, 2_000)
        .await
        .unwrap());
    let ams = store.relay("ams-1").await.unwrap().unwrap();
    assert_eq!(ams.state, RelayAdminState::Drained);
    assert_eq!(ams.state_changed_at, 2_000);
    // Setting the state it has already keeps the time of the real change.
    assert!(store
        .set_relay_state("ams-1", RelayAdminState::Drained, 3_000)
        .await
        .unwrap());
    assert_eq!(
        store
            .relay("ams-1")
            .await
            .unwrap()
            .unwrap()
            .state_changed_at,
        2_000
    );
    assert!(store
        .set_relay_state("ams-1", RelayAdminState::Revoked, 4_000)
        .await
        .unwrap());
    assert!(!store
        .set_relay_state("nope", RelayAdminState::Active, 4_000)
        .await
        .unwrap());

    let names: Vec<_> = store
        .relays()
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.name, r.state))
        .collect();
    assert_eq!(
        names,
        [
            ("ams-1".to_owned(), RelayAdminState::Revoked),
            ("fra-1".to_owned(), RelayAdminState::Active)
        ]
    );
    assert_eq!(store.relay("nope").await.unwrap(), None);
}

#[tokio::test]
async fn touch_and_put_relay_update_what_the_relay_reports() {
    let store = Store::open_memory().await.unwrap();
    store.put_relay(&relay("ams-1")).await.unwrap();
    store
        .touch_relay(
            "ams-1",
            "0.2.0",
            &["198.51.100.1:443".to_owned()],
            None,
            5_000,
        )
        .await
        .unwrap();
    let ams = store.relay("ams-1").await.unwrap().unwrap();
    assert_eq!(ams.version, "0.2.0");
    assert_eq!(ams.addresses, ["198.51.100.1:443"]);
    assert_eq!(ams.location, None);
    assert_eq!(ams.last_seen_at, Some(5_000));
    assert_eq!(ams.state, RelayAdminState::Active);
    // An unknown relay is ignored.
    store
        .touch_relay("nope", "0.2.0", &[], Some((1.0, 2.0)), 5_000)
        .await
        .unwrap();
    assert_eq!(store.relay("nope").await.unwrap(), None);

    let mut moved = relay("ams-1");
    moved.region = "us".to_owned();
    moved.location = Some((-33.5, 151.0));
    moved.state = RelayAdminState::Drained;
    store.put_relay(&moved).await.unwrap();
    assert_eq!(store.relay("ams-1").await.unwrap(), Some(moved));
}

#[tokio::test]
async fn relay_certs_map_to_their_relay_and_prune() {
    let store = Store::open_memory().await.unwrap();
    store.put_relay(&relay("ams-1")).await.unwrap();
    store
        .insert_relay_cert("0a1b", "ams-1", 1_000, 10_000)
        .await
        .unwrap();
    store
        .insert_relay_cert("0c2d", "ams-1", 1_000, 20_000)
        .await
        .unwrap();
    assert_eq!(
        store.cert_owner("0a1b").await.unwrap().as_deref(),
        Some("ams-1")
    );
    assert_eq!(store.cert_owner("ffff").await.unwrap(), None);
    let expiries = store.relay_cert_expiries().await.unwrap();
    assert_eq!(
        expiries.get("ams-1"),
        Some(&20_000),
        "the newest certificate's"
    );
    assert_eq!(expiries.len(), 1);
    // The foreign key holds: a certificate belongs to a stored relay.
    let orphan = store.insert_relay_cert("0e3f", "nope", 1_000, 20_000).await;
    assert!(matches!(orphan, Err(StoreError::Db(_))), "{orphan:?}");

    assert_eq!(store.prune_relay_certs(15_000).await.unwrap(), 1);
    assert_eq!(store.cert_owner("0a1b").await.unwrap(), None);
    assert_eq!(
        store.cert_owner("0c2d").await.unwrap().as_deref(),
        Some("ams-1")
    );
}

#[tokio::test]
async fn signing_and_admin_keys_round_trip() {
    let store = Store::open_memory().await.unwrap();
    let newer = SigningKeyRecord {
        id: "k2".to_owned(),
        pkcs8: vec![0, 1, 2, 255, 254],
        created_at: 2_000,
    };
    let older = SigningKeyRecord {
        id: "k1".to_owned(),
        pkcs8: vec![48, 83, 2, 1],
        created_at: 1_000,
    };
    store.insert_signing_key(&newer).await.unwrap();
    store.insert_signing_key(&older).await.unwrap();
    assert_eq!(store.signing_keys().await.unwrap(), vec![older, newer]);

    assert_eq!(store.admin_token_count().await.unwrap(), 0);
    let admin = AdminTokenRecord {
        id: "a1".to_owned(),
        hash: "f00d".to_owned(),
        name: "ops".to_owned(),
        created_at: 1_000,
    };
    store.insert_admin_token(&admin).await.unwrap();
    assert_eq!(store.admin_token_count().await.unwrap(), 1);
    assert_eq!(
        store.admin_token_by_hash("f00d").await.unwrap(),
        Some(admin)
    );
    assert_eq!(store.admin_token_by_hash("beef").await.unwrap(), None);
    sqlx::query("UPDATE admin_tokens SET revoked_at = 2000 WHERE id = 'a1'")
        .execute(&store.pool)
        .await
        .unwrap();
    assert_eq!(store.admin_token_by_hash("f00d").await.unwrap(), None);
    assert_eq!(store.admin_token_count().await.unwrap(), 1);
}

#[tokio::test]
async fn meta_values_overwrite() {
    let store = Store::open_memory().await.unwrap();
    assert_eq!(store.meta("k").await.unwrap(), None);
    store.set_meta("k", "one").await.unwrap();
    store.set_meta("k", "two").await.unwrap();
    assert_eq!(store.meta("k").await.unwrap().as_deref(), Some("two"));
}

#[tokio::test]
async fn a_row_that_cannot_be_decoded_is_reported_not_guessed() {
    let store = Store::open_memory().await.unwrap();
    store.put_relay(&relay("ams-1")).await.unwrap();
    sqlx::query("UPDATE relays SET state = 'paused' WHERE name = 'ams-1'")
        .execute(&store.pool)
        .await
        .unwrap();
    let err = store.relays().await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    assert!(err.to_string().contains("ams-1"), "{err}");
}

#[test]
fn secrets_do_not_show_in_debug() {
    let key = SigningKeyRecord {
        id: "k1".to_owned(),
        pkcs8: b"very secret key".to_vec(),
        created_at: 0,
    };
    let admin = AdminTokenRecord {
        id: "a1".to_owned(),
        hash: "deadbeefcafe".to_owned(),
        name: "ops".to_owned(),
        created_at: 0,
    };
    let relay_token = token("t1", 0);
    for (text, secret) in [
        (format!("{key:?}"), format!("{:?}", key.pkcs8)),
        (format!("{admin:?}"), "deadbeefcafe".to_owned()),
        (format!("{relay_token:?}"), "hash-of-t1".to_owned()),
    ] {
        assert!(text.contains("***"), "{text}");
        assert!(!text.contains(&secret), "{text}");
    }
}
