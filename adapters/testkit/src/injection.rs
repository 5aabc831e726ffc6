//! Hostile input through a store: config identifiers that must be refused
//! before any SQL runs, and values (topics, keys, idempotency keys, header
//! names and values, payloads, reasons, consumer groups, inbox keys) that
//! must be bind parameters and come back byte for byte.
//!
//! Each store's injection tests run these cases against its real database,
//! around a canary table of their own that must keep its rows.
//!
//! # Panics
//!
//! Every function panics when the store breaks the rule it checks.

use chrono::{DateTime, Utc};
use txmsg_core::consumer::{ConsumerDeadLetter, InboxStore};
use txmsg_core::{
    ClaimRequest, DeadFilter, Envelope, Error, Failure, Inserted, Lease, MAX_IDENT_LEN, Message,
    Outbox, SqlStore, Tables, validate_topic,
};
use uuid::Uuid;

/// Config identifiers that must be refused, each with why.
pub const BAD_IDENTIFIERS: &[&str] = &[
    "x; DROP TABLE canary",
    "x\"; DROP TABLE canary; --",
    "a\"b",
    "a`b",
    "a'b",
    "a]b",
    "",
    " ",
    "a b",
    "a-b",
    "a.b",
    "1abc",
    "a\0b",
    "a\nb",
    "$1",
    "--",
    "/*",
    "é",
    "tábla",
    "🚀",
    "ｘ",
    "x\u{200b}",
];

/// Values that reach SQL as bind parameters and must come back unchanged.
pub fn hostile_values() -> Vec<String> {
    let mut values: Vec<String> = [
        "x'; DROP TABLE canary; --",
        "x\"; DROP TABLE canary; --",
        "x`; DROP TABLE canary; --",
        "'); DELETE FROM canary; --",
        "' OR '1'='1",
        "\" OR \"\"=\"",
        "\\'; DROP TABLE canary; --",
        "\\",
        "\\\\'",
        "%",
        "_",
        "%' OR 'x' LIKE '%",
        "$1",
        "?",
        ":name",
        "@var",
        "/* comment */ SELECT 1",
        "-- comment",
        "'||(SELECT 1)||'",
        "a\nb\r\nc\td",
        "a\0b",
        "",
        " trailing space ",
        "žluťoučký kůň 🚀",
        "\u{202e}evil\u{202c}",
        "ʼ OR 1=1 --",
        "＇; DROP TABLE canary; --",
        "{\"a\":1}",
        "\"}, \"x\": \"",
        "\\u0000",
        "\u{ffff}\u{fffd}",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    values.push("'".repeat(300));
    values
}

/// Payload bytes that are not text, next to `s`.
fn payload_of(s: &str) -> Vec<u8> {
    let mut bytes = s.as_bytes().to_vec();
    bytes.extend_from_slice(&[0x00, 0xff, 0xfe, b'\'', b'"', b'\\', b';']);
    bytes
}

fn at(n: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000 + n, 0).expect("a valid time")
}

/// Every bad name is refused for every identifier of `Tables`, naming the
/// field, before a store (and so any SQL) exists.
pub fn assert_identifiers_refused() {
    type Setter = fn(Tables, &str) -> txmsg_core::Result<Tables>;
    let setters: [(&str, Setter); 4] = [
        ("schema", Tables::with_schema),
        ("outbox_table", Tables::with_outbox),
        ("inbox_table", Tables::with_inbox),
        ("migrations_table", Tables::with_migrations),
    ];
    let too_long = "t".repeat(MAX_IDENT_LEN + 1);
    let names = BAD_IDENTIFIERS.iter().copied().chain([too_long.as_str()]);
    for bad in names {
        for (field, set) in setters {
            match set(Tables::default(), bad) {
                Err(Error::Config {
                    field: named,
                    ref reason,
                }) => {
                    assert_eq!(named, field, "{bad:?}");
                    assert!(!reason.trim().is_empty(), "the error says why for {bad:?}");
                }
                other => panic!("{field} = {bad:?} must be refused, got {other:?}"),
            }
        }
    }
    // The inbox name leaves room for `<inbox>_dead`.
    let err = Tables::default()
        .with_inbox(&"i".repeat(MAX_IDENT_LEN - 4))
        .expect_err("no room for the dead-letter table");
    assert!(matches!(
        err,
        Error::Config {
            field: "inbox_table",
            ..
        }
    ));
}

/// What `store` must do with `value`: keep it, or refuse it with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Stored and read back byte for byte.
    Kept,
    /// Refused with an error (e.g. a NUL in PostgreSQL text).
    Refused,
}

/// A claim by `owner` at `now` of every row written, whatever its key.
fn claim_every_row(owner: Uuid, now: DateTime<Utc>) -> ClaimRequest {
    ClaimRequest {
        per_key_limit: 10_000,
        ..crate::support::claim_req(owner, now, 10_000)
    }
}

/// Writes one outbox row per hostile value (as topic, key, idempotency key,
/// header name and value, inside the payload), through the writer and
/// through `Tx::enqueue`; reads them back by claiming; then marks them dead
/// with the value as reason and finds each by topic and by key.
pub async fn assert_outbox_keeps_hostile_values<S: SqlStore>(
    store: &S,
    expect: fn(&str) -> Expect,
) {
    let values = hostile_values();
    let mut written: Vec<Envelope> = Vec::new();
    for (i, s) in values.iter().enumerate() {
        let mut env = Envelope::new(Uuid::now_v7(), s.clone(), s.clone(), payload_of(s), at(0));
        env.key = Some(s.clone());
        env.headers.insert(s.clone(), s.clone());
        env.headers.insert(format!("x-h{i}"), s.clone());
        let mut tx = store.begin().await.expect("begin");
        let outcome = store.writer().insert(&mut *tx, &env, None).await;
        match expect(s) {
            Expect::Kept => {
                assert_eq!(
                    outcome.expect("a hostile value is only data"),
                    Inserted::Unleased,
                    "{s:?}"
                );
                tx.commit().await.expect("commit");
                // The same idempotency key on the same topic is a duplicate:
                // matched exactly, never as a pattern.
                let mut again = env.clone();
                again.id = Uuid::now_v7();
                let mut tx = store.begin().await.expect("begin");
                let dup = store.writer().insert(&mut *tx, &again, None).await;
                assert_eq!(dup.expect("insert"), Inserted::Duplicate, "{s:?}");
                drop(tx);
                written.push(env);
            }
            Expect::Refused => {
                let err = outcome.expect_err("a value the database cannot hold is refused");
                assert!(!err.to_string().trim().is_empty());
            }
        }
    }
    // The same values through the producer's API, under a valid topic: the
    // topic check refuses them as topics first.
    let mut tx = Outbox::new(store).begin().await.expect("begin");
    let mut enqueued = Vec::new();
    for s in &values {
        if validate_topic(s).is_err() {
            let err = Message::new(s, &1).expect_err("a hostile topic is refused");
            assert!(matches!(err, Error::InvalidTopic { .. }), "{err:?}");
        }
        if expect(s) == Expect::Refused {
            continue;
        }
        let message = Message::new("inj.enqueued", &serde_json::json!({ "v": s }))
            .expect("valid message")
            .key(s)
            .idempotency_key(s)
            .header(s.clone(), s.clone());
        enqueued.push((tx.enqueue(message).await.expect("enqueue"), s.clone()));
    }
    tx.commit().await.expect("commit");

    let owner = Uuid::now_v7();
    let now = Utc::now() + chrono::Duration::seconds(2);
    let claimed = store
        .claim(&claim_every_row(owner, now))
        .await
        .expect("claim");
    assert_eq!(
        claimed.len(),
        written.len() + enqueued.len(),
        "every row, no more"
    );
    assert_each_claimed(&claimed, &written);
    for (id, s) in &enqueued {
        let got = claimed.iter().find(|e| e.id == *id).expect("enqueued row");
        assert_eq!(got.key.as_deref(), Some(s.as_str()));
        assert_eq!(&got.idempotency_key, s);
        assert_eq!(got.headers.get(s), Some(s));
        let v: serde_json::Value = serde_json::from_slice(&got.payload).expect("json");
        assert_eq!(v["v"].as_str(), Some(s.as_str()));
    }

    // Failure texts and dead-letter reasons are hostile too.
    for want in &written {
        store
            .mark_failed(&Failure {
                id: want.id,
                owner,
                next_attempt_at: now,
                error: want.topic.clone(),
            })
            .await
            .expect("mark_failed");
    }
    let reclaimed = store
        .claim(&claim_every_row(owner, now + chrono::Duration::seconds(1)))
        .await
        .expect("claim after failures");
    for want in &written {
        assert!(reclaimed.iter().any(|e| e.id == want.id));
        store
            .mark_dead(want.id, owner, &want.topic, now)
            .await
            .expect("mark_dead");
    }
    let dead = store
        .dead_letters(&DeadFilter::default().limit(10_000))
        .await
        .expect("dead_letters");
    assert_eq!(dead.len(), written.len());
    for want in &written {
        let letter = dead
            .iter()
            .find(|d| d.envelope.id == want.id)
            .expect("dead letter");
        assert_eq!(letter.reason, want.topic, "the reason comes back unchanged");
        assert_eq!(letter.envelope.payload, want.payload);
        let by_topic = store
            .dead_letters(&DeadFilter::default().topic(want.topic.clone()))
            .await
            .expect("dead_letters by topic");
        assert_eq!(
            ids(&by_topic),
            vec![want.id],
            "topic {:?} matches itself only",
            want.topic
        );
        let key = want.key.clone().expect("a key");
        let by_key = store
            .dead_letters(&DeadFilter::default().key(key.clone()))
            .await
            .expect("dead_letters by key");
        assert_eq!(
            ids(&by_key),
            vec![want.id],
            "key {key:?} matches itself only"
        );
    }
}

/// Writes one outbox row per hostile value (as topic, key, idempotency
/// key, header name and value, inside the payload) with
/// `OutboxWriter::insert_and_commit`, as a producer's commit does: every
/// other row leased (the per-key check), the others not. Each row comes back
/// unchanged; the same (topic, idempotency key) again is `Error::Duplicate`
/// naming it and writes nothing; a value the database cannot hold fails the
/// commit and writes nothing.
pub async fn assert_commit_keeps_hostile_values<S: SqlStore>(
    store: &S,
    expect: fn(&str) -> Expect,
) {
    let owner = Uuid::now_v7();
    let mut written: Vec<Envelope> = Vec::new();
    for (i, s) in hostile_values().iter().enumerate() {
        let mut env = Envelope::new(Uuid::now_v7(), s.clone(), s.clone(), payload_of(s), at(0));
        env.key = Some(s.clone());
        env.headers.insert(s.clone(), s.clone());
        env.headers.insert(format!("x-h{i}"), s.clone());
        // A lease that has run out, so that the claim below takes the row.
        let lease = (i % 2 == 0).then_some(Lease {
            owner,
            until: at(1),
        });
        let txn = store.begin().await.expect("begin");
        let outcome = store
            .writer()
            .insert_and_commit(txn, &[(&env, lease)])
            .await;
        match expect(s) {
            Expect::Kept => {
                let want = if lease.is_some() {
                    Inserted::Leased
                } else {
                    Inserted::Unleased
                };
                assert_eq!(
                    outcome.expect("a hostile value is only data"),
                    vec![want],
                    "{s:?}"
                );
                let mut again = env.clone();
                again.id = Uuid::now_v7();
                let txn = store.begin().await.expect("begin");
                match store
                    .writer()
                    .insert_and_commit(txn, &[(&again, lease)])
                    .await
                {
                    Err(Error::Duplicate {
                        topic,
                        idempotency_key,
                    }) => assert_eq!((&topic, &idempotency_key), (s, s), "the duplicate named"),
                    other => panic!("{s:?} again must be a duplicate, got {other:?}"),
                }
                written.push(env);
            }
            Expect::Refused => {
                let err = outcome.expect_err("a value the database cannot hold is refused");
                assert!(!err.to_string().trim().is_empty());
            }
        }
    }
    let claimed = store
        .claim(&claim_every_row(Uuid::now_v7(), Utc::now()))
        .await
        .expect("claim");
    assert_eq!(claimed.len(), written.len(), "every row once, no more");
    assert_each_claimed(&claimed, &written);
}

/// Asserts that each of `written` is among `claimed`, every field unchanged.
fn assert_each_claimed(claimed: &[Envelope], written: &[Envelope]) {
    for want in written {
        let got = claimed
            .iter()
            .find(|e| e.id == want.id)
            .unwrap_or_else(|| panic!("row for {:?} is claimed", want.topic));
        crate::support::assert_same_fields(got, want, &format!("{:?}", want.topic));
    }
}

fn ids(dead: &[txmsg_core::DeadLetter]) -> Vec<Uuid> {
    dead.iter().map(|d| d.envelope.id).collect()
}

/// Records inbox keys and keeps consumer dead letters with hostile groups,
/// keys, topics, headers, reasons and payloads; reads each back exactly and
/// purges one group's keys only.
pub async fn assert_inbox_keeps_hostile_values<S: InboxStore>(
    store: &S,
    expect: fn(&str) -> Expect,
) {
    let values: Vec<String> = hostile_values()
        .into_iter()
        .filter(|s| expect(s) == Expect::Kept)
        .collect();
    for s in &values {
        let mut tx = store.begin().await.expect("begin");
        let fresh = store.inbox().record(&mut *tx, s, s, s, at(0)).await;
        assert!(fresh.expect("record"), "first record of {s:?}");
        assert!(
            store
                .inbox()
                .record(&mut *tx, "inj-plain", "inj.topic", s, at(0))
                .await
                .expect("record"),
            "another group's key is another key"
        );
        tx.commit().await.expect("commit");
        let mut tx = store.begin().await.expect("begin");
        let again = store.inbox().record(&mut *tx, s, s, s, at(1)).await;
        assert!(
            !again.expect("record"),
            "{s:?} is a duplicate, matched exactly"
        );
        drop(tx);
    }
    for s in hostile_values()
        .iter()
        .filter(|s| expect(s) == Expect::Refused)
    {
        let mut tx = store.begin().await.expect("begin");
        let err = store
            .inbox()
            .record(&mut *tx, "inj-plain", "inj.topic", s, at(0))
            .await
            .expect_err("a key the database cannot hold is refused");
        assert!(!err.to_string().trim().is_empty());
    }

    let mut kept = Vec::new();
    for (i, s) in values.iter().enumerate() {
        let mut env = Envelope::new(Uuid::now_v7(), s.clone(), s.clone(), payload_of(s), at(2));
        env.key = Some(s.clone());
        env.headers.insert(s.clone(), s.clone());
        let dead =
            ConsumerDeadLetter::new(Uuid::now_v7(), s.clone(), env, s.clone(), 3, at(i as i64));
        store
            .add_consumer_dead(&dead)
            .await
            .expect("add_consumer_dead");
        kept.push(dead);
    }
    for want in &kept {
        let got = store
            .consumer_dead_letter(&want.group, want.id)
            .await
            .expect("consumer_dead_letter")
            .unwrap_or_else(|| panic!("dead letter of group {:?}", want.group));
        assert_eq!(got.group, want.group);
        assert_eq!(got.reason, want.reason);
        assert_eq!(got.attempts, want.attempts);
        assert_eq!(got.dead_at, want.dead_at);
        let (e, w) = (&got.envelope, &want.envelope);
        assert_eq!((e.id, &e.topic, &e.key), (w.id, &w.topic, &w.key));
        assert_eq!(e.idempotency_key, w.idempotency_key);
        assert_eq!(e.headers, w.headers);
        assert_eq!(e.payload, w.payload, "payload bytes of {:?}", want.group);
        let listed = store
            .consumer_dead_letters(
                &want.group,
                &DeadFilter::default()
                    .topic(w.topic.clone())
                    .key(want.group.clone()),
            )
            .await
            .expect("consumer_dead_letters");
        let listed: Vec<Uuid> = listed.iter().map(|d| d.id).collect();
        assert_eq!(
            listed,
            vec![want.id],
            "group {:?} matches itself only",
            want.group
        );
    }

    for s in &values {
        let purged = store
            .purge_inbox(s, at(100), 10_000)
            .await
            .expect("purge_inbox");
        assert_eq!(purged, 1, "group {s:?} had one key");
    }
    let purged = store
        .purge_inbox("inj-plain", at(100), 10_000)
        .await
        .expect("purge_inbox");
    assert_eq!(
        purged,
        values.len() as u64,
        "the plain group's keys were untouched"
    );
}
