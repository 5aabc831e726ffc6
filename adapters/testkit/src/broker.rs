//! The conformance suite of [`Broker`] adapters.
//!
//! Every case takes a connected broker and a prefix, derives its topic and
//! group names from the prefix (so cases and test runs never see each
//! other's messages), runs one part of the contract documented on
//! [`Broker`], and panics with a description of the first broken rule.
//! Messages are published with [`Broker::publish`] and received through
//! [`Broker::subscribe`], as the relay and the consumer runtime do; nothing
//! else of the adapter is used.
//!
//! What the suite holds every broker to:
//!
//! - A publish resolves once confirmed, and the message reaches every group
//!   subscribed to its topic, with every envelope field as published: id,
//!   topic, ordering key, idempotency key, headers (including
//!   `traceparent`; a broker may add headers of its own) and the payload
//!   bytes, creation time to the millisecond.
//! - Each group gets every message once; the subscriptions of one group
//!   share its messages (each to exactly one), and a subscription never has
//!   more than its `prefetch` deliveries unsettled.
//! - A nacked delivery, a delivery dropped unsettled and the unsettled
//!   deliveries of a dropped subscription are delivered again, marked
//!   redelivered once they were handed out.
//! - With one subscription, the messages of a key arrive in publish order;
//!   a delivery handed back while its subscription holds nothing else comes
//!   back before later messages of its key.
//! - A consumer that stops gracefully (it closes its subscription and hands
//!   back what it holds and what the adapter had received, in delivery
//!   order) and is the only one of its group: the group's next
//!   subscription gets every message of a key in publish order.
//! - Messages confirmed while the group's only subscription holds its
//!   first delivery ([`SLOW_CONSUMER_BACKLOG`] of them) all reach the
//!   group.
//! - A group's queue is created by its first subscribe and outlives its
//!   subscriptions: messages published while the group has no subscriber
//!   wait for its next one. Messages published before the group's first
//!   subscribe are not required to reach it (brokers create queues at
//!   subscribe time), so no case publishes any.
//! - Bad topic or group names and a zero prefetch are refused.
//! - After its connection drops and the service is reachable again, the
//!   broker reconnects by itself: publishing succeeds again within
//!   [`WAIT`] (publishes during the outage fail with a retryable error
//!   rather than hang), messages published after the outage reach the
//!   group, and nothing confirmed before the drop is lost. This case,
//!   [`reconnects_after_connection_drop`], is not part of [`run_all`]: it
//!   needs the broker connected through a [`TcpProxy`], so an adapter's
//!   tests call it on its own.
//!
//! - Not part of [`run_all`], because the caller supplies what they need:
//!   [`held_delivery_is_not_redelivered`] (a hold longer than the adapter's
//!   redelivery timeout, as the caller configured it) and
//!   [`no_password_in_logs`] (URLs with a password; it installs a global
//!   log subscriber).
//!
//! A case proves that nothing more arrives by waiting [`QUIET`] for it; all
//! other waits end as soon as what they wait for arrives, and fail after
//! [`WAIT`].
//!
//! # Examples
//!
//! In an adapter's integration tests:
//!
//! ```no_run
//! use txmsg_core::Broker;
//!
//! async fn broker_conformance<B: Broker>(connect: impl Fn() -> B) {
//!     let prefix = format!("conf-{}", uuid::Uuid::now_v7().simple());
//!     txmsg_testkit::broker::run_all(|| std::future::ready(connect()), &prefix).await;
//! }
//! ```
//!
//! Or one case at a time, e.g.
//! `broker::nack_redelivers(&broker, "conf-1234").await`.
//!
//! The reconnect case connects its broker through a proxy that it cuts:
//!
//! ```no_run
//! use txmsg_core::Broker;
//! use txmsg_testkit::proxy::TcpProxy;
//!
//! async fn reconnect_conformance<B, Fut>(url: &str, connect: impl FnOnce(String) -> Fut)
//! where
//!     B: Broker,
//!     Fut: std::future::Future<Output = B>,
//! {
//!     let (proxy, via_proxy) = TcpProxy::for_url(url, 5672).await;
//!     let prefix = format!("conf-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
//!     txmsg_testkit::broker::reconnects_after_connection_drop(
//!         || connect(via_proxy),
//!         &proxy,
//!         &prefix,
//!     )
//!     .await;
//! }
//! ```
//!
//! # Panics
//!
//! Every function panics when the broker breaks the contract or fails.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::{Duration, Instant};

use chrono::Utc;
use txmsg_core::consumer::{Delivery, SubscribeSpec, Subscription};
use txmsg_core::{Broker, Envelope, Error, TRACEPARENT};
use uuid::Uuid;

use crate::proxy::TcpProxy;

/// Longest wait for a delivery that must arrive.
pub const WAIT: Duration = Duration::from_secs(15);

/// How long a case waits to see that nothing more arrives.
pub const QUIET: Duration = Duration::from_millis(300);

/// How long [`reconnects_after_connection_drop`] keeps the connection cut.
pub const OUTAGE: Duration = Duration::from_millis(500);

/// What an adapter's tests supply to run this suite one case per test
/// (see [`broker_conformance!`](crate::broker_conformance)): a fresh,
/// isolated setup per case (its own stream, exchange or key prefix), a
/// broker on it, and the cleanup.
pub trait BrokerFixture: Sized + Send {
    /// The broker under test.
    type Broker: Broker;

    /// Sets up what one case needs.
    fn start() -> impl Future<Output = Self> + Send;

    /// A broker of this setup (a clone, or a new connection).
    fn broker(&self) -> impl Future<Output = Self::Broker> + Send;

    /// Deletes what the case left (not run when the case failed).
    fn finish(self) -> impl Future<Output = ()> + Send;
}

/// A prefix for one case's topic and group names: short, unique, valid.
pub fn unique_prefix() -> String {
    format!("c{}", &Uuid::now_v7().simple().to_string()[20..])
}

/// Invokes the macro at path `[$path]` with `[$pre]` followed by the cases
/// of [`run_all`], each taking `(&broker, prefix)`: the one list of the
/// suite's cases.
#[doc(hidden)]
#[macro_export]
macro_rules! __broker_cases {
    ([$($path:tt)*] [$($pre:tt)*]) => {
        $($path)*! {
            $($pre)*
            delivers_every_field,
            one_idempotency_key_on_two_topics_is_two_messages,
            every_group_gets_every_message,
            group_members_share_messages,
            nack_redelivers,
            dropped_delivery_is_redelivered,
            dropped_subscription_redelivers,
            per_key_order_is_kept,
            handed_back_message_holds_its_key,
            order_across_a_restart_of_the_only_consumer,
            large_and_empty_payloads,
            queue_outlives_its_subscribers,
            subscribe_refuses_bad_specs,
            slow_consumer_loses_nothing,
        }
    };
}

/// One `#[tokio::test]` per case of this suite, in a module `conformance`,
/// each on a fresh fixture, so that one case runs alone
/// (`cargo nextest run -p txmsg-nats -E 'test(conformance::nack_redelivers)'`)
/// and a failure hides no other case.
///
/// `broker_conformance!(Fixture)` runs every case; `broker_conformance!(
/// Fixture: case, case, ...)` runs the cases named (for a broker that
/// cannot keep some rule: its docs say which and why). Both take a module
/// name first, as in `broker_conformance!(mod quorum, QuorumFixture)`, to
/// run the suite on a second fixture (another configuration of the same
/// broker) in the same test crate. `Fixture`
/// implements [`BrokerFixture`]; the adapters' own tests
/// (`adapters/*/tests/*.rs`) show one fixture per broker. The calling test
/// crate needs `tokio` with the `macros` and `rt-multi-thread` features.
#[macro_export]
macro_rules! broker_conformance {
    (mod $module:ident, $fixture:ty) => {
        $crate::__broker_cases!([$crate::broker_conformance] [mod $module, $fixture:]);
    };
    (mod $module:ident, $fixture:ty : $($case:ident),* $(,)?) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    use $crate::broker::BrokerFixture as _;
                    let fixture = <$fixture>::start().await;
                    let broker = fixture.broker().await;
                    $crate::broker::$case(&broker, &$crate::broker::unique_prefix()).await;
                    drop(broker);
                    fixture.finish().await;
                }
            )*
        }
    };
    ($fixture:ty) => {
        $crate::broker_conformance!(mod conformance, $fixture);
    };
    ($fixture:ty : $($case:ident),* $(,)?) => {
        $crate::broker_conformance!(mod conformance, $fixture: $($case),*);
    };
}

/// Runs every case of this suite, each on a broker from `make`.
///
/// `prefix` starts every topic and group name the cases use; give each
/// test run its own (e.g. with a UUID in it) and keep it short: the names
/// must pass [`validate_topic`](txmsg_core::validate_topic), and some
/// brokers build queue names from them. Cases run one after another; each
/// prints its name to stderr first, so a failure's output says which case
/// broke. [`broker_conformance!`](crate::broker_conformance) runs each case
/// as a test of its own instead.
///
/// # Panics
///
/// When a case fails, or `prefix` is not a valid topic name.
pub async fn run_all<B, F, Fut>(mut make: F, prefix: &str)
where
    B: Broker,
    F: FnMut() -> Fut,
    Fut: Future<Output = B>,
{
    if let Err(e) = txmsg_core::validate_topic(prefix) {
        panic!("the prefix must be a valid topic name: {e}");
    }
    macro_rules! cases {
        ($($case:ident),* $(,)?) => {
            $(
                eprintln!("broker conformance: {}", stringify!($case));
                $case(&make().await, prefix).await;
            )*
        };
    }
    crate::__broker_cases!([cases] []);
}

/// How many messages [`run_all`] publishes past a slow consumer: twice
/// Mosquitto's default per-session queue (1 000 messages).
pub const SLOW_CONSUMER_BACKLOG: usize = 2_000;

/// [`nothing_confirmed_is_lost_to_a_slow_consumer`] with
/// [`SLOW_CONSUMER_BACKLOG`] messages.
pub async fn slow_consumer_loses_nothing<B: Broker>(broker: &B, prefix: &str) {
    nothing_confirmed_is_lost_to_a_slow_consumer(broker, prefix, SLOW_CONSUMER_BACKLOG).await;
}

// ---------------------------------------------------------------------------
// helpers

fn spec(group: String, topic: &str, prefetch: u16) -> SubscribeSpec {
    SubscribeSpec {
        group,
        topic: topic.to_owned(),
        prefetch,
    }
}

async fn subscribe<B: Broker>(broker: &B, spec: &SubscribeSpec) -> Subscription {
    match within(broker.subscribe(spec), "subscribe").await {
        Ok(sub) => sub,
        Err(e) => panic!(
            "subscribing group `{}` to `{}` failed: {e:?}",
            spec.group, spec.topic
        ),
    }
}

async fn publish<B: Broker>(broker: &B, envelope: &Envelope) {
    if let Err(e) = within(broker.publish(envelope), "publish").await {
        panic!("publishing {} failed: {e:?}", envelope.id);
    }
}

/// A message of `topic` numbered `n` (in its payload and idempotency key).
fn envelope(topic: &str, n: usize) -> Envelope {
    let id = Uuid::now_v7();
    Envelope::new(
        id,
        topic,
        format!("n-{n}-{id}"),
        format!(r#"{{"n":{n}}}"#).into_bytes(),
        Utc::now(),
    )
}

/// `future`'s output; fails after [`WAIT`], naming `what`, so that a case
/// that hangs says where.
async fn within<T>(future: impl Future<Output = T>, what: &str) -> T {
    match tokio::time::timeout(WAIT, future).await {
        Ok(out) => out,
        Err(_) => panic!("{what} did not finish within {WAIT:?}"),
    }
}

/// The next delivery of `sub`; fails after [`WAIT`].
async fn next(sub: &mut Subscription, what: &str) -> Delivery {
    match tokio::time::timeout(WAIT, sub.next()).await {
        Ok(Some(d)) => d,
        Ok(None) => panic!("{what}: the subscription ended"),
        Err(_) => panic!("{what}: nothing was delivered within {WAIT:?}"),
    }
}

/// Fails if `sub` delivers anything within [`QUIET`].
async fn quiet(sub: &mut Subscription, what: &str) {
    if let Ok(Some(d)) = tokio::time::timeout(QUIET, sub.next()).await {
        panic!("{what}: unexpected delivery {:?}", d.message);
    }
}

/// The envelope of `d`, failing if the broker could not decode it.
fn envelope_of(d: &Delivery) -> &Envelope {
    match &d.message {
        Ok(e) => e,
        Err(bad) => panic!("a delivery could not be decoded: {}", bad.reason),
    }
}

async fn ack(d: Delivery) {
    if let Err(e) = within(d.ack(), "ack").await {
        panic!("ack failed: {e:?}");
    }
}

/// Receives `n` deliveries of `sub` and acknowledges each; returns their
/// envelopes in arrival order.
async fn take_and_ack(sub: &mut Subscription, n: usize, what: &str) -> Vec<Envelope> {
    let mut got = Vec::with_capacity(n);
    for i in 0..n {
        let d = next(sub, &format!("{what} (delivery {} of {n})", i + 1)).await;
        got.push(envelope_of(&d).clone());
        ack(d).await;
    }
    got
}

fn id_set(envelopes: &[Envelope]) -> BTreeSet<Uuid> {
    envelopes.iter().map(|e| e.id).collect()
}

/// Fails unless `got` holds each of `expected` exactly once.
fn assert_once(got: &[Envelope], expected: &[Envelope], what: &str) {
    assert_eq!(
        got.len(),
        id_set(got).len(),
        "{what}: a message was delivered twice"
    );
    assert_eq!(
        id_set(got),
        id_set(expected),
        "{what}: not every published message was delivered"
    );
}

// ---------------------------------------------------------------------------
// cases

/// A confirmed publish reaches a subscribed group with every envelope field
/// as published.
pub async fn delivers_every_field<B: Broker>(broker: &B, prefix: &str) {
    let topic = format!("{prefix}.fields");
    let mut sub = subscribe(broker, &spec(format!("{prefix}.g"), &topic, 8)).await;

    let mut full = Envelope::new(
        Uuid::now_v7(),
        topic.as_str(),
        "order-7-placed",
        r#"{"order":7,"note":"žluťoučký kůň ✓","total":1.5}"#
            .as_bytes()
            .to_vec(),
        Utc::now(),
    );
    full.key = Some("order-7".into());
    full.headers.insert(
        TRACEPARENT.into(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
    );
    full.headers.insert("x-tenant".into(), "acme".into());
    publish(broker, &full).await;

    let plain = envelope(&topic, 2);
    publish(broker, &plain).await;

    // The two have different keys: nothing orders them (the per-key cases
    // check order), so each is matched by its id.
    let mut received = Vec::with_capacity(2);
    for _ in 0..2 {
        let d = next(&mut sub, "round trip").await;
        assert!(!d.redelivered, "a first delivery is not redelivered");
        received.push(envelope_of(&d).clone());
        ack(d).await;
    }
    for sent in [&full, &plain] {
        let Some(got) = received.iter().find(|got| got.id == sent.id) else {
            panic!("message {} did not arrive: got {received:?}", sent.id);
        };
        assert_eq!(got.topic, sent.topic);
        assert_eq!(got.key, sent.key, "ordering key");
        assert_eq!(got.idempotency_key, sent.idempotency_key);
        assert_eq!(got.payload, sent.payload, "payload bytes must be unchanged");
        for (name, value) in &sent.headers {
            assert_eq!(
                got.headers.get(name),
                Some(value),
                "header `{name}` must arrive with its value"
            );
        }
        if !sent.headers.contains_key(TRACEPARENT) {
            assert!(
                !got.headers.contains_key(TRACEPARENT),
                "no traceparent was published"
            );
        }
        assert!(
            (got.created_at - sent.created_at).abs() <= chrono::Duration::milliseconds(1),
            "created_at {} must be the published {}",
            got.created_at,
            sent.created_at
        );
    }
    quiet(&mut sub, "round trip").await;
}

/// Idempotency keys are unique per topic: one key on two topics is two
/// messages, and a group subscribed to both gets each (no broker-side
/// deduplication may take one for a copy of the other).
pub async fn one_idempotency_key_on_two_topics_is_two_messages<B: Broker>(
    broker: &B,
    prefix: &str,
) {
    let group = format!("{prefix}.gk");
    let topics = [format!("{prefix}.placed"), format!("{prefix}.shipped")];
    let mut subs = Vec::new();
    for topic in &topics {
        subs.push(subscribe(broker, &spec(group.clone(), topic, 8)).await);
    }
    let sent: Vec<Envelope> = topics
        .iter()
        .map(|topic| {
            Envelope::new(
                Uuid::now_v7(),
                topic.as_str(),
                format!("order-42-{prefix}"),
                b"{}".to_vec(),
                Utc::now(),
            )
        })
        .collect();
    for e in &sent {
        publish(broker, e).await;
    }
    for (sub, e) in subs.iter_mut().zip(&sent) {
        let got = take_and_ack(
            sub,
            1,
            &format!("{} with a key also used on another topic", e.topic),
        )
        .await;
        assert_once(&got, std::slice::from_ref(e), &e.topic);
        quiet(sub, &e.topic).await;
    }
}

/// Two groups on one topic each get every message, once.
pub async fn every_group_gets_every_message<B: Broker>(broker: &B, prefix: &str) {
    const N: usize = 10;
    let topic = format!("{prefix}.fanout");
    let mut a = subscribe(broker, &spec(format!("{prefix}.ga"), &topic, 16)).await;
    let mut b = subscribe(broker, &spec(format!("{prefix}.gb"), &topic, 16)).await;

    let sent: Vec<Envelope> = (0..N).map(|n| envelope(&topic, n)).collect();
    for e in &sent {
        publish(broker, e).await;
    }
    let got_a = take_and_ack(&mut a, N, "group a").await;
    let got_b = take_and_ack(&mut b, N, "group b").await;
    assert_once(&got_a, &sent, "group a");
    assert_once(&got_b, &sent, "group b");
    quiet(&mut a, "group a after every message").await;
    quiet(&mut b, "group b after every message").await;
}

/// Two subscriptions of one group share its messages: each message goes to
/// exactly one of them, none is lost, and a subscription with `prefetch` 1
/// holding an unsettled delivery gets nothing more.
pub async fn group_members_share_messages<B: Broker>(broker: &B, prefix: &str) {
    const N: usize = 20;
    let topic = format!("{prefix}.share");
    let group = format!("{prefix}.g");
    let mut a = subscribe(broker, &spec(group.clone(), &topic, 1)).await;
    let mut b = subscribe(broker, &spec(group, &topic, 1)).await;

    let sent: Vec<Envelope> = (0..N).map(|n| envelope(&topic, n)).collect();
    for e in &sent {
        publish(broker, e).await;
    }
    // `a` keeps its first delivery unsettled: with prefetch 1, every other
    // message must go to `b`.
    let held = next(&mut a, "first delivery of member a").await;
    let mut got = vec![envelope_of(&held).clone()];
    got.extend(take_and_ack(&mut b, N - 1, "member b while a holds one").await);
    quiet(
        &mut a,
        "member a with one delivery unsettled and prefetch 1",
    )
    .await;
    ack(held).await;

    assert_once(&got, &sent, "the group");
    quiet(&mut a, "member a after every message").await;
    quiet(&mut b, "member b after every message").await;
}

/// A nacked delivery is delivered again, marked redelivered.
pub async fn nack_redelivers<B: Broker>(broker: &B, prefix: &str) {
    let topic = format!("{prefix}.nack");
    comes_back_redelivered(broker, prefix, &topic, "nack", |first| async move {
        assert!(!first.redelivered, "a first delivery is not redelivered");
        if let Err(e) = within(first.nack(), "nack").await {
            panic!("nack failed: {e:?}");
        }
    })
    .await;
}

/// A delivery dropped without ack or nack (its handler crashed) is
/// delivered again, marked redelivered.
pub async fn dropped_delivery_is_redelivered<B: Broker>(broker: &B, prefix: &str) {
    let topic = format!("{prefix}.drop-delivery");
    comes_back_redelivered(broker, prefix, &topic, "drop", |first| async move {
        drop(first);
    })
    .await;
}

/// Publishes one message to `topic`, has `settle` give up its first
/// delivery (`how`: nack or drop), and fails unless the same message comes
/// back, marked redelivered, and only once.
async fn comes_back_redelivered<B, F, Fut>(
    broker: &B,
    prefix: &str,
    topic: &str,
    how: &str,
    settle: F,
) where
    B: Broker,
    F: FnOnce(Delivery) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut sub = subscribe(broker, &spec(format!("{prefix}.g"), topic, 4)).await;
    let sent = envelope(topic, 1);
    publish(broker, &sent).await;

    let first = next(&mut sub, "first delivery").await;
    assert_eq!(envelope_of(&first).id, sent.id);
    settle(first).await;

    let again = next(&mut sub, &format!("delivery after the {how}")).await;
    assert_eq!(
        envelope_of(&again).id,
        sent.id,
        "the message given up by {how} comes back"
    );
    assert_eq!(envelope_of(&again).payload, sent.payload);
    assert!(
        again.redelivered,
        "a message given up by {how} comes back marked redelivered"
    );
    ack(again).await;
    quiet(&mut sub, "after the redelivery was acknowledged").await;
}

/// The unsettled deliveries of a dropped subscription (a consumer that
/// crashed between its commit and its acknowledgement) go to the group's
/// next subscription.
pub async fn dropped_subscription_redelivers<B: Broker>(broker: &B, prefix: &str) {
    const N: usize = 3;
    let topic = format!("{prefix}.drop-sub");
    let group_spec = spec(format!("{prefix}.g"), &topic, 10);
    let mut first = subscribe(broker, &group_spec).await;
    let sent: Vec<Envelope> = (0..N).map(|n| envelope(&topic, n)).collect();
    for e in &sent {
        publish(broker, e).await;
    }
    let held = next(&mut first, "first subscription").await;
    let held_id = envelope_of(&held).id;
    // The consumer dies: its subscription first, then what it was handling.
    drop(first);
    drop(held);

    let mut second = subscribe(broker, &group_spec).await;
    let mut got = Vec::with_capacity(N);
    for i in 0..N {
        let d = next(
            &mut second,
            &format!("second subscription (delivery {} of {N})", i + 1),
        )
        .await;
        let e = envelope_of(&d).clone();
        if e.id == held_id {
            assert!(
                d.redelivered,
                "a message handed out before comes back marked redelivered"
            );
        }
        got.push(e);
        ack(d).await;
    }
    assert_once(&got, &sent, "the second subscription");
    quiet(&mut second, "second subscription after every message").await;
}

/// With one subscription, the messages of each key arrive in publish order.
pub async fn per_key_order_is_kept<B: Broker>(broker: &B, prefix: &str) {
    const N: usize = 100;
    const KEYS: usize = 3;
    let topic = format!("{prefix}.order");
    let mut sub = subscribe(broker, &spec(format!("{prefix}.g"), &topic, 32)).await;

    let mut position: BTreeMap<Uuid, (String, usize)> = BTreeMap::new();
    let mut sent = Vec::with_capacity(N);
    for n in 0..N {
        let mut e = envelope(&topic, n);
        let key = format!("key-{}", n % KEYS);
        e.key = Some(key.clone());
        position.insert(e.id, (key, n));
        publish(broker, &e).await;
        sent.push(e);
    }
    let got = take_and_ack(&mut sub, N, "ordered messages").await;
    assert_once(&got, &sent, "ordered messages");

    let mut seen: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for e in &got {
        let Some((key, n)) = position.get(&e.id) else {
            panic!("unknown message {}", e.id);
        };
        assert_eq!(e.key.as_ref(), Some(key), "the ordering key travels");
        seen.entry(key.clone()).or_default().push(*n);
    }
    for (key, order) in &seen {
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(
            order, &sorted,
            "messages of `{key}` arrived out of publish order"
        );
    }
    quiet(&mut sub, "after every ordered message").await;
}

/// The number in the payload of a message built by [`envelope`].
fn number_of(e: &Envelope) -> usize {
    let value: serde_json::Value = match serde_json::from_slice(&e.payload) {
        Ok(v) => v,
        Err(err) => panic!("message {} has an unreadable payload: {err}", e.id),
    };
    match value.get("n").and_then(serde_json::Value::as_u64) {
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        None => panic!("message {} has no number", e.id),
    }
}

/// `n` messages of `topic`, all of ordering key `key`, numbered from 0.
fn keyed(topic: &str, key: &str, n: usize) -> Vec<Envelope> {
    (0..n)
        .map(|i| {
            let mut e = envelope(topic, i);
            e.key = Some(key.to_owned());
            e
        })
        .collect()
}

/// A delivery handed back while its subscription holds nothing else (a
/// prefetch of one) is the next delivery: it comes back before later
/// messages of its key, marked redelivered.
pub async fn handed_back_message_holds_its_key<B: Broker>(broker: &B, prefix: &str) {
    const N: usize = 4;
    let topic = format!("{prefix}.holds-key");
    let mut sub = subscribe(broker, &spec(format!("{prefix}.g"), &topic, 1)).await;
    let sent = keyed(&topic, "k", N);
    for e in &sent {
        publish(broker, e).await;
    }
    let mut got = Vec::with_capacity(N + 2);
    // Each of the first two messages is handed back once before it is
    // acknowledged.
    for expected in 0..N {
        let d = next(&mut sub, &format!("message {expected} of the key")).await;
        let n = number_of(envelope_of(&d));
        assert_eq!(
            n, expected,
            "after its predecessor was handed back and then acknowledged, message {expected} of the key is next"
        );
        if expected < 2 {
            if let Err(e) = within(d.nack(), "nack").await {
                panic!("nack failed: {e:?}");
            }
            let again = next(&mut sub, &format!("message {expected} handed back")).await;
            assert_eq!(
                number_of(envelope_of(&again)),
                expected,
                "a handed-back message comes back before later messages of its key"
            );
            assert!(again.redelivered, "it comes back marked redelivered");
            got.push(envelope_of(&again).clone());
            ack(again).await;
        } else {
            got.push(envelope_of(&d).clone());
            ack(d).await;
        }
    }
    assert_once(&got, &sent, "the key's messages");
    quiet(&mut sub, "after every message of the key").await;
}

/// A consumer that stops gracefully, the only one of its group: it closes
/// its subscription, hands back what it holds and what the adapter had
/// received, in delivery order, and drops the subscription. The group's
/// next subscription gets every message of the key in publish order, each
/// once, the handed-back ones first. Done three times, with the first
/// subscription holding 1, 3 and 6 messages.
pub async fn order_across_a_restart_of_the_only_consumer<B: Broker>(broker: &B, prefix: &str) {
    const N: usize = 12;
    for (round, held) in [1usize, 3, 6].into_iter().enumerate() {
        let topic = format!("{prefix}.restart{round}");
        let group_spec = spec(format!("{prefix}.g"), &topic, 6);
        let mut first = subscribe(broker, &group_spec).await;
        let sent = keyed(&topic, "k", N);
        for e in &sent {
            publish(broker, e).await;
        }
        let mut holding = Vec::with_capacity(held);
        for i in 0..held {
            let d = next(
                &mut first,
                &format!("round {round}: first subscription, delivery {i}"),
            )
            .await;
            assert_eq!(
                number_of(envelope_of(&d)),
                i,
                "round {round}: the first subscription gets the key in publish order"
            );
            holding.push(d);
        }
        let late = within(first.close(), "close").await;
        for d in holding.into_iter().chain(late) {
            if let Err(e) = within(d.nack(), "nack").await {
                panic!("round {round}: hand-back failed: {e:?}");
            }
        }
        drop(first);

        let mut second = subscribe(broker, &group_spec).await;
        let got = take_and_ack(
            &mut second,
            N,
            &format!("round {round}: second subscription"),
        )
        .await;
        let order: Vec<usize> = got.iter().map(number_of).collect();
        assert_eq!(
            order,
            (0..N).collect::<Vec<_>>(),
            "round {round}: after a restart of the only consumer holding {held}, the key's messages arrive in publish order"
        );
        assert_once(&got, &sent, "the second subscription");
        quiet(&mut second, "second subscription after every message").await;
    }
}

/// A delivery held unsettled for `hold` (longer than the adapter's
/// redelivery timeout, as configured by the caller) by a live subscription
/// is not delivered again, to it or to another member of its group, and
/// its acknowledgement after that succeeds.
///
/// Not part of [`run_all`]: the caller knows its adapter's timeout.
pub async fn held_delivery_is_not_redelivered<B: Broker>(broker: &B, prefix: &str, hold: Duration) {
    let topic = format!("{prefix}.held");
    let group_spec = spec(format!("{prefix}.g"), &topic, 4);
    let mut a = subscribe(broker, &group_spec).await;
    let mut b = subscribe(broker, &group_spec).await;
    let sent = envelope(&topic, 1);
    publish(broker, &sent).await;
    let held = tokio::select! {
        d = a.next() => d,
        d = b.next() => d,
        () = tokio::time::sleep(WAIT) => None,
    };
    let Some(held) = held else {
        panic!("nothing was delivered within {WAIT:?}");
    };
    assert_eq!(envelope_of(&held).id, sent.id);
    tokio::select! {
        () = tokio::time::sleep(hold) => {}
        Some(d) = a.next() => panic!("a held delivery was delivered again while held: {:?}", d.message.map(|e| e.id)),
        Some(d) = b.next() => panic!("a held delivery was delivered again while held: {:?}", d.message.map(|e| e.id)),
    }
    ack(held).await;
    quiet(&mut a, "member a after the ack").await;
    quiet(&mut b, "member b after the ack").await;
}

/// `n` messages confirmed while the group's only subscription (prefetch 1)
/// holds its first delivery all reach the group once it goes on: a
/// confirmed publish is never lost because a consumer is slow.
pub async fn nothing_confirmed_is_lost_to_a_slow_consumer<B: Broker>(
    broker: &B,
    prefix: &str,
    n: usize,
) {
    let topic = format!("{prefix}.slow");
    let mut sub = subscribe(broker, &spec(format!("{prefix}.g"), &topic, 1)).await;
    let sent: Vec<Envelope> = (0..n).map(|i| envelope(&topic, i)).collect();
    publish(broker, &sent[0]).await;
    let first = next(&mut sub, "first delivery").await;
    for e in &sent[1..] {
        publish(broker, e).await;
    }
    let mut got = vec![envelope_of(&first).clone()];
    ack(first).await;
    got.extend(take_and_ack(&mut sub, n - 1, "after the slow consumer went on").await);
    assert_once(&got, &sent, "a slow consumer's group");
    quiet(&mut sub, "after every message").await;
}

/// Nothing a broker adapter and its driver log, at any level, shows the
/// password of its URL: connecting to a server that refuses connections
/// (`refused_url`, whose connect must fail) and to the service (`url`),
/// then, if the service took the connection, publishing, subscribing and
/// receiving a message. A failed connect's error must not show it either.
///
/// `connect` connects the adapter under test to a URL; both URLs carry
/// `password`. Not part of [`run_all`]: it needs URLs with a password, and
/// it installs a global log subscriber ([`logs::capture`](crate::logs::capture)).
pub async fn no_password_in_logs<B, F, Fut>(
    connect: F,
    url: &str,
    refused_url: &str,
    password: &str,
    prefix: &str,
) where
    B: Broker,
    F: Fn(String) -> Fut,
    Fut: Future<Output = txmsg_core::Result<B>>,
{
    assert!(
        url.contains(password) && refused_url.contains(password),
        "both URLs must carry the password"
    );
    let logs = crate::logs::capture();
    tracing::debug!("no_password_in_logs: capture check");
    match connect(refused_url.to_owned()).await {
        Ok(_) => panic!("connecting to a server that refuses connections succeeded"),
        Err(e) => crate::redaction::assert_hidden(&e, password),
    }
    match connect(url.to_owned()).await {
        Ok(broker) => {
            let shown = format!("{broker:?}");
            assert!(
                !shown.contains(password),
                "Debug shows the password: {shown}"
            );
            let topic = format!("{prefix}.secret");
            let mut sub = subscribe(&broker, &spec(format!("{prefix}.g"), &topic, 4)).await;
            let sent = envelope(&topic, 1);
            publish(&broker, &sent).await;
            let d = next(&mut sub, "the message").await;
            assert_eq!(envelope_of(&d).id, sent.id);
            ack(d).await;
        }
        Err(e) => crate::redaction::assert_hidden(&e, password),
    }
    let text = logs.text();
    assert!(
        text.contains("no_password_in_logs: capture check"),
        "the log capture does not work"
    );
    if let Some(at) = text.find(password) {
        let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i);
        panic!(
            "the logs show the password: {}",
            &text[line_start..line_end]
        );
    }
}

/// A 512 KiB payload and an empty one arrive byte for byte.
pub async fn large_and_empty_payloads<B: Broker>(broker: &B, prefix: &str) {
    let topic = format!("{prefix}.sizes");
    let mut sub = subscribe(broker, &spec(format!("{prefix}.g"), &topic, 4)).await;

    let mut large = envelope(&topic, 1);
    let mut body = Vec::with_capacity(512 * 1024);
    body.push(b'"');
    body.extend((0..512 * 1024 - 2).map(|i| b'a' + (i % 26) as u8));
    body.push(b'"');
    large.payload = body;
    let mut empty = envelope(&topic, 2);
    empty.payload = Vec::new();
    publish(broker, &large).await;
    publish(broker, &empty).await;

    let got = take_and_ack(&mut sub, 2, "large and empty payloads").await;
    assert_once(
        &got,
        &[large.clone(), empty.clone()],
        "large and empty payloads",
    );
    for sent in [&large, &empty] {
        let Some(e) = got.iter().find(|e| e.id == sent.id) else {
            panic!("message {} is missing", sent.id);
        };
        assert_eq!(
            e.payload.len(),
            sent.payload.len(),
            "payload length must be unchanged"
        );
        assert!(e.payload == sent.payload, "payload bytes must be unchanged");
    }
    quiet(&mut sub, "after both payloads").await;
}

/// A group's queue outlives its subscriptions: messages published while
/// the group has no subscriber arrive at its next one.
pub async fn queue_outlives_its_subscribers<B: Broker>(broker: &B, prefix: &str) {
    const N: usize = 5;
    let topic = format!("{prefix}.durable");
    let group_spec = spec(format!("{prefix}.g"), &topic, 8);
    let first = subscribe(broker, &group_spec).await;
    drop(first);

    let sent: Vec<Envelope> = (0..N).map(|n| envelope(&topic, n)).collect();
    for e in &sent {
        publish(broker, e).await;
    }
    let mut again = subscribe(broker, &group_spec).await;
    let got = take_and_ack(&mut again, N, "messages published while the group was away").await;
    assert_once(&got, &sent, "messages published while the group was away");
    quiet(&mut again, "after every waiting message").await;
}

/// Bad topic and group names and a zero prefetch are refused.
pub async fn subscribe_refuses_bad_specs<B: Broker>(broker: &B, prefix: &str) {
    let topic = format!("{prefix}.bad");
    let group = format!("{prefix}.g");
    let cases = [
        (
            spec(group.clone(), "no spaces allowed", 4),
            "a topic with spaces",
        ),
        (
            spec(group.clone(), &format!("{topic}.*"), 4),
            "a wildcard topic",
        ),
        (spec(String::new(), &topic, 4), "an empty group"),
        (spec("bad group".into(), &topic, 4), "a group with spaces"),
    ];
    for (bad, what) in cases {
        match broker.subscribe(&bad).await {
            Err(Error::InvalidTopic { .. } | Error::Config { .. }) => {}
            Err(other) => panic!("{what}: expected InvalidTopic or Config, got {other:?}"),
            Ok(_) => panic!("{what}: the subscription was accepted"),
        }
    }
    match broker.subscribe(&spec(group, &topic, 0)).await {
        Err(Error::Config { .. }) => {}
        Err(other) => panic!("prefetch 0: expected Config, got {other:?}"),
        Ok(_) => panic!("prefetch 0: the subscription was accepted"),
    }
}

/// After the broker's connection drops and the service is reachable again,
/// the broker reconnects by itself: publishing succeeds again, messages
/// published after the outage reach the group, and nothing confirmed
/// before the drop is lost.
///
/// `make_via_proxy` connects the broker under test to the service through
/// `proxy` (at [`TcpProxy::addr`]), which must be up. The case subscribes a
/// group, publishes two messages and receives both, acknowledging the first
/// and holding the second unsettled; then it cuts every connection
/// ([`TcpProxy::set_down`]), keeps the service unreachable for [`OUTAGE`],
/// and lets connections through again ([`TcpProxy::set_up`]).
///
/// Then, as the relay does, it publishes three messages, each again while
/// the publish fails: every error must be retryable, and each message must
/// be confirmed within [`WAIT`] of the outage's end; a publish that neither
/// confirms nor fails by then is a hang. It settles the held delivery: if
/// that fails (its connection is gone), the message must be delivered
/// again. Every message published after the outage must reach the group
/// within [`WAIT`]: through the subscription opened before the outage or,
/// as the consumer runtime does when the broker ends a subscription
/// (`next` returns `None`), through a new subscribe after a short backoff
/// (a failing subscribe is tried again). Delivery is at least once: a
/// message of this case may arrive twice, but a message delivered before
/// the outage that arrives again must be marked redelivered.
///
/// # Panics
///
/// When the broker breaks one of these rules or fails otherwise, or
/// `prefix` is not a valid topic name.
pub async fn reconnects_after_connection_drop<B, F, Fut>(
    make_via_proxy: F,
    proxy: &TcpProxy,
    prefix: &str,
) where
    B: Broker,
    F: FnOnce() -> Fut,
    Fut: Future<Output = B>,
{
    const AFTER: usize = 3;
    if let Err(e) = txmsg_core::validate_topic(prefix) {
        panic!("the prefix must be a valid topic name: {e}");
    }
    let broker = make_via_proxy().await;
    let topic = format!("{prefix}.reconnect");
    let group_spec = spec(format!("{prefix}.g"), &topic, 8);
    let mut sub = subscribe(&broker, &group_spec).await;

    let settled = envelope(&topic, 0);
    publish(&broker, &settled).await;
    let d = next(&mut sub, "first delivery before the outage").await;
    assert_eq!(envelope_of(&d).id, settled.id, "the first message arrives");
    ack(d).await;
    let unsettled = envelope(&topic, 1);
    publish(&broker, &unsettled).await;
    let held = next(&mut sub, "second delivery before the outage").await;
    assert_eq!(
        envelope_of(&held).id,
        unsettled.id,
        "the second message arrives"
    );

    proxy.set_down();
    tokio::time::sleep(OUTAGE).await;
    proxy.set_up();

    let deadline = Instant::now() + WAIT;
    let after: Vec<Envelope> = (0..AFTER).map(|n| envelope(&topic, 2 + n)).collect();
    let mut failed_publishes = 0;
    for e in &after {
        failed_publishes += publish_until(&broker, e, deadline).await;
    }

    let held_was_settled = match tokio::time::timeout(WAIT, held.ack()).await {
        Ok(result) => result.is_ok(),
        Err(_) => {
            panic!("acknowledging a delivery from before the outage did not end within {WAIT:?}")
        }
    };
    let mut expected = id_set(&after);
    if !held_was_settled {
        // Its acknowledgement was lost with the connection: the broker
        // still has it, so it must come again.
        expected.insert(unsettled.id);
    }

    let deadline = Instant::now() + WAIT;
    let mut got = BTreeSet::new();
    let mut resubscribes = 0u32;
    while !expected.is_subset(&got) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, sub.next()).await {
            Ok(Some(d)) => {
                let e = envelope_of(&d);
                if e.id == settled.id || e.id == unsettled.id {
                    assert!(
                        d.redelivered,
                        "a message delivered before the outage comes again marked redelivered"
                    );
                } else {
                    assert!(
                        expected.contains(&e.id),
                        "after the outage: unexpected message {e:?}"
                    );
                }
                got.insert(e.id);
                ack(d).await;
            }
            Ok(None) => {
                // The broker ended the subscription with its connection:
                // subscribe again, as the consumer runtime does.
                resubscribes = resubscribes.saturating_add(1);
                if let Some(again) = resubscribe(&broker, &group_spec, resubscribes, deadline).await
                {
                    sub = again;
                }
            }
            Err(_) => {
                let missing: Vec<&Uuid> = expected.difference(&got).collect();
                panic!(
                    "after the outage: {} of {} messages did not arrive within {WAIT:?} \
                     ({resubscribes} subscribes again): {missing:?}",
                    missing.len(),
                    expected.len()
                );
            }
        }
    }
    eprintln!(
        "reconnect: {failed_publishes} publishes failed after the outage, \
         {resubscribes} subscribes again, held delivery settled: {held_was_settled}"
    );
}

/// Publishes `envelope` again while the publish fails, as the relay does;
/// fails on an error that is not retryable, or if no publish was confirmed
/// by `deadline`. Returns how many publishes failed.
async fn publish_until<B: Broker>(broker: &B, envelope: &Envelope, deadline: Instant) -> u32 {
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, broker.publish(envelope)).await {
            Ok(Ok(())) => return attempts - 1,
            Ok(Err(e)) => {
                assert!(
                    e.is_retryable(),
                    "a publish after a connection drop must fail retryable, got {e:?}"
                );
                if Instant::now() >= deadline {
                    panic!(
                        "publishing {} after the outage still failed after {attempts} attempts \
                         within {WAIT:?}: {e:?}",
                        envelope.id
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(_) => panic!(
                "publishing {} after the outage: no confirm and no error within {WAIT:?} \
                 ({attempts} attempts)",
                envelope.id
            ),
        }
    }
}

/// Subscribes `spec` again after the backoff of attempt `attempt` (100 ms
/// doubling up to 1 s); `None` if the subscribe failed, so the caller
/// tries again. Fails if it does not end by `deadline`.
async fn resubscribe<B: Broker>(
    broker: &B,
    spec: &SubscribeSpec,
    attempt: u32,
    deadline: Instant,
) -> Option<Subscription> {
    let delay = Duration::from_millis(100)
        .saturating_mul(1 << attempt.saturating_sub(1).min(4))
        .min(Duration::from_secs(1));
    tokio::time::sleep(delay).await;
    let left = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left, broker.subscribe(spec)).await {
        Ok(Ok(sub)) => Some(sub),
        Ok(Err(_)) => None,
        Err(_) => panic!(
            "subscribing group `{}` again after the outage did not end within {WAIT:?}",
            spec.group
        ),
    }
}
