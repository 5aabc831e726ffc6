//! Attribute macros of [txmsg](https://docs.rs/txmsg).
//!
//! Use them through the `txmsg` crate (`txmsg::transactional_message`,
//! `txmsg::check_back`, `txmsg::message_handler`); the code they generate
//! refers to `txmsg` and nothing else.

mod check_back;
mod common;
mod diag;
mod handler;
mod producer;

use proc_macro::TokenStream;

/// Makes an `async fn` that changes the database also write a message to the
/// outbox, in the same transaction.
///
/// The function runs as written. When it returns `Ok(payload)`, the payload
/// is serialized to JSON and written to the outbox in the caller's
/// transaction; the relay publishes it once that transaction commits, and
/// never if it rolls back. Several annotated calls can share one transaction.
///
/// ```no_run
/// use txmsg::{Outbox, Tx, transactional_message};
///
/// #[derive(serde::Serialize)]
/// struct OrderPlaced {
///     id: i64,
///     total_cents: i64,
/// }
///
/// #[transactional_message(topic = "orders.placed", key = id, idempotency_key = format!("order-{id}"))]
/// async fn place_order(
///     tx: &mut Tx<'_, sqlx::Sqlite>,
///     id: i64,
///     total_cents: i64,
/// ) -> Result<OrderPlaced, txmsg::Error> {
///     sqlx::query("INSERT INTO orders (id, total_cents) VALUES (?, ?)")
///         .bind(id)
///         .bind(total_cents)
///         .execute(&mut **tx)
///         .await?;
///     Ok(OrderPlaced { id, total_cents })
/// }
///
/// # async fn run(outbox: Outbox<sqlx::Sqlite>) -> txmsg::Result<()> {
/// // One call: begin, run, write the message, commit, hand it to the relay.
/// place_order_and_commit(&outbox, 1, 4200).await?;
///
/// // Or several calls in the caller's transaction.
/// let mut tx = outbox.begin().await?;
/// place_order(&mut tx, 2, 100).await?;
/// place_order(&mut tx, 3, 250).await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
///
/// # Arguments
///
/// | argument                 | required | value                                                  |
/// |--------------------------|----------|--------------------------------------------------------|
/// | `topic = "..."`          | yes      | the topic, a string literal checked at compile time: 1 to 200 bytes of ASCII letters, digits, `.`, `-`, `_`, no empty segment |
/// | `key = <expr>`           | no       | the ordering key: messages with the same topic and key are published in order |
/// | `idempotency_key = <expr>` | no     | what consumers deduplicate on; a fresh UUIDv7 when absent |
/// | `ttl = "..."`            | no       | how long the message may wait for delivery before it is dead-lettered as expired: a whole number and a unit, `ms`, `s`, `m`, `h` or `d` (`"500ms"`, `"30m"`, `"1d"`), checked at compile time |
/// | `ttl = <expr>`           | no       | the same, chosen per call: an expression of type `std::time::Duration`, or `Option<Duration>` where `None` means no expiry (`ttl = ttl` with a parameter `ttl: Option<Duration>`) |
/// | `half`                   | no       | makes the function a half-message producer, see [Half messages](#half-messages) |
/// | `check_back = path`      | no, only with `half` | the [`#[check_back]`](macro@check_back) function of the topic, checked at compile time to take this producer's payload |
/// | `check_after = "..."`    | no, only with `half` | time from storing the message prepared to its first check-back, in the syntax of `ttl`; default `"6s"` |
/// | `crate = "path"`         | no       | path of the `txmsg` crate if the dependency is renamed; default `::txmsg` |
///
/// `key` and `idempotency_key` are Rust expressions that may use the
/// function's parameters. They are evaluated before the body runs, so the
/// body may move those parameters, and turned into `String`s with
/// [`Display`](std::fmt::Display). The topic is checked at compile time, and
/// so is `ttl` written as a string literal. Any other `ttl` is an expression
/// evaluated with the keys, before the body runs, to a `Duration` (the
/// message expires that long after it is written; a zero `Duration` makes
/// it expire at once) or an `Option<Duration>` (`None`: it never expires).
/// It lets each caller choose:
///
/// ```no_run
/// use std::time::Duration;
/// use txmsg::{Tx, transactional_message};
///
/// # #[derive(serde::Serialize)]
/// # struct QuoteIssued { id: i64 }
/// #[transactional_message(topic = "quotes.issued", ttl = valid_for)]
/// async fn issue_quote(
///     tx: &mut Tx<'_, sqlx::Sqlite>,
///     id: i64,
///     valid_for: Option<Duration>,
/// ) -> Result<QuoteIssued, txmsg::Error> {
/// #   let _ = tx;
///     Ok(QuoteIssued { id })
/// }
///
/// # async fn run(mut tx: Tx<'_, sqlx::Sqlite>) -> txmsg::Result<()> {
/// issue_quote(&mut tx, 1, Some(Duration::from_secs(15 * 60))).await?;
/// issue_quote(&mut tx, 2, None).await?; // never expires
/// # Ok(()) }
/// ```
///
/// # Signature
///
/// ```text
/// [pub(..)] async fn name['a, ..](tx: &mut Tx<'_, DB>, params..) -> Result<M, E>
/// ```
///
/// - `async fn`, any visibility, attributes allowed, lifetime parameters
///   allowed but no type or const parameters, no `self`: a free function;
/// - the first parameter is the transaction, bound to a name, with the type
///   `&mut Tx<'_, DB>` where `Tx` is [`txmsg::Tx`] (under any path or
///   alias ending in `Tx`) and `DB` a sqlx database such as `sqlx::Sqlite`;
/// - the return type is `Result<M, E>` (any path ending in `Result`, with
///   both arguments written out), where `M: serde::Serialize` is the
///   message payload and `E: From<txmsg::Error>` the error type.
///
/// Any other shape is a compile error at the offending token, as are unknown
/// or repeated arguments, a missing or invalid topic and an invalid `ttl`:
/// see [Compile-time checks](#compile-time-checks).
///
/// # Generated code
///
/// Two functions:
///
/// - `name`, with the attributes, visibility and signature as written (but
///   for a `mut` on `tx`, see below): runs the body, and if it returns
///   `Ok(payload)`, writes the message to the outbox in `tx` and returns
///   `Ok(payload)`. If the body returns `Err`, nothing is written and the
///   error is returned as is. If writing fails, the `txmsg::Error` is
///   converted with `From` and returned: for instance
///   `txmsg::Error::Duplicate` when the topic already has a message with
///   this idempotency key. The caller must then roll its transaction back
///   (dropping it does), so that the business writes are undone too. On a
///   store that writes messages with `COMMIT` (PostgreSQL, in a transaction
///   begun with `Outbox::begin`), the message is held until `Tx::commit`,
///   which reports the duplicate and rolls everything back itself.
///
///   The body is unchanged: `?` converts errors into `E`, `return` returns
///   from it, and it may move the parameters, `tx` included: it runs as an
///   `async move` block that sees a reborrow of the transaction under the
///   parameter's name (which carries the parameter's `mut`, if any). The
///   function's future is `Send` whenever the parameters are.
/// - `name_and_commit(outbox: &Outbox<DB>, params..)`, with the same
///   visibility, lifetimes and parameters after the transaction (those that
///   are patterns rather than names are renamed): begins a transaction with
///   `Outbox::begin`, calls `name`, commits if it returned `Ok` (which hands
///   the message to the outbox's relay, if it has one, to be published at
///   once) and rolls back if it returned `Err`. A panic drops the
///   transaction, which rolls it back too. It carries the `cfg`, `allow` and
///   `deprecated` attributes of `name`, a doc line, and `allow(dead_code)`.
///
/// Written by hand, the example above is:
///
/// ```no_run
/// use txmsg::{Message, Outbox, Tx};
///
/// # #[derive(serde::Serialize)]
/// # struct OrderPlaced { id: i64, total_cents: i64 }
/// async fn place_order(
///     tx: &mut Tx<'_, sqlx::Sqlite>,
///     id: i64,
///     total_cents: i64,
/// ) -> Result<OrderPlaced, txmsg::Error> {
///     // The keys, before the body runs.
///     let key = id.to_string();
///     let idempotency_key = format!("order-{id}");
///     // The body, as an `async move` block, with a reborrow of the
///     // transaction under the same name.
///     let outer_tx = tx;
///     let tx = &mut *outer_tx;
///     let payload: Result<OrderPlaced, txmsg::Error> = async move {
///         sqlx::query("INSERT INTO orders (id, total_cents) VALUES (?, ?)")
///             .bind(id)
///             .bind(total_cents)
///             .execute(&mut **tx)
///             .await?;
///         Ok(OrderPlaced { id, total_cents })
///     }
///     .await;
///     // Then the message, in the same transaction.
///     let payload = payload?;
///     let message = Message::new("orders.placed", &payload)?
///         .key(key)
///         .idempotency_key(idempotency_key);
///     outer_tx.enqueue(message).await?;
///     Ok(payload)
/// }
///
/// /// Runs `place_order` in a transaction of its own.
/// async fn place_order_and_commit(
///     outbox: &Outbox<sqlx::Sqlite>,
///     id: i64,
///     total_cents: i64,
/// ) -> Result<OrderPlaced, txmsg::Error> {
///     let mut tx = outbox.begin().await?;
///     match place_order(&mut tx, id, total_cents).await {
///         Ok(payload) => {
///             tx.commit().await?;
///             Ok(payload)
///         }
///         Err(error) => {
///             let _ = tx.rollback().await;
///             Err(error)
///         }
///     }
/// }
/// ```
///
/// With `ttl = "30m"`, the message would also get
/// `.ttl(Duration::from_secs(30 * 60))`; with `ttl = <expr>`, the expression
/// is evaluated next to the keys, and the message gets `.ttl(d)` when it
/// gives `d` or `Some(d)`, nothing when it gives `None`.
///
/// # Half messages
///
/// When the local work is not in the store's database (another database,
/// a payment API), the message cannot share its transaction. With `half`,
/// the message is stored *prepared* (stored, not deliverable) before the
/// function runs, then committed (deliverable) if it returns `Ok` or rolled
/// back (deleted) if it returns `Err`, as RocketMQ's transactional messages
/// and DTM's two-phase messages do. If the process dies in between, the
/// message stays prepared, and after `check_after` the
/// [`CheckBackWorker`] asks the topic's [`#[check_back]`](macro@check_back)
/// function whether the local work happened: Commit, Rollback or Unknown.
///
/// ```no_run
/// use txmsg::half::{CheckStatus, HalfOutbox};
/// use txmsg::{check_back, transactional_message};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct PaymentRequested {
///     order: i64,
///     cents: i64,
/// }
/// # mod payments {
/// #     pub async fn charge(_: i64, _: i64, _: &str) -> Result<String, txmsg::Error> { Ok(String::new()) }
/// #     pub async fn status(_: i64) -> Result<Option<bool>, std::io::Error> { Ok(None) }
/// # }
///
/// #[transactional_message(
///     topic = "payments.requested",
///     half,
///     check_back = payment_state,
///     key = payment.order,
///     idempotency_key = format!("pay-{}", payment.order),
/// )]
/// async fn charge(payment: &PaymentRequested, card: &str) -> Result<String, txmsg::Error> {
///     // Local work outside the store's database.
///     payments::charge(payment.order, payment.cents, card).await
/// }
///
/// /// Whether the payment went through, for messages whose producer died.
/// #[check_back(topic = "payments.requested")]
/// async fn payment_state(payment: &PaymentRequested) -> Result<CheckStatus, std::io::Error> {
///     Ok(match payments::status(payment.order).await? {
///         Some(true) => CheckStatus::Commit,
///         Some(false) => CheckStatus::Rollback,
///         None => CheckStatus::Unknown,
///     })
/// }
///
/// # async fn run(outbox: HalfOutbox<sqlx::Sqlite>) -> txmsg::Result<()> {
/// let payment = PaymentRequested { order: 1, cents: 4200 };
/// let receipt = charge_and_commit(&outbox, &payment, "4242").await?;
/// # let _ = receipt;
/// # Ok(()) }
/// ```
///
/// The signature of a half producer:
///
/// ```text
/// [pub(..)] async fn name['a, ..](msg: &M, params..) -> Result<T, E>
/// ```
///
/// - no transaction parameter: the local work is not in the store's
///   database;
/// - the first parameter is the payload by shared reference, `&M` with
///   `M: serde::Serialize`: the message is stored before the body runs, so
///   the payload exists before it. Other parameters follow;
/// - the return type is `Result<T, E>` with `E: From<txmsg::Error>`; `T` is
///   whatever the function returns (a receipt, `()`).
///
/// `key`, `idempotency_key` and `ttl` work as above; the keys and a `ttl`
/// expression are evaluated before the message is stored, and may use the
/// parameters that are plain names (the payload among them). Since the
/// function is emitted unchanged, a parameter that only the attribute reads
/// (`ttl = _ttl`) is unused in it: an `_` prefix keeps the lint quiet. A `Tx` parameter, a payload taken by
/// value or by `&mut`, and a function without parameters are compile errors,
/// as are `check_back` or `check_after` without `half`.
///
/// The function itself is emitted unchanged. Next to it comes
/// `name_and_commit(outbox: &P, params..) -> Result<T, E>`, generic over
/// `P: txmsg::half::HalfProducer`, the keeper of the half message, with the
/// same visibility, lifetimes and parameters (all of them, the payload
/// first). The keeper is a [`HalfOutbox`] (the store keeps the message
/// prepared, the relay publishes it once committed), built only from a
/// store that keeps half messages, so a half producer on a store without
/// them does not compile; or a broker's own half messages, such as
/// RocketMQ's (`txmsg::rocketmq::RocketHalfProducer`), where the broker
/// keeps the message and asks the check-back itself. It:
///
/// 1. builds the message from the payload and the keys, and stores it
///    prepared with [`HalfOutbox::prepare`], its first check due after
///    `check_after`; if that fails (for instance `Error::Duplicate`, when the
///    topic already has a message with this idempotency key), it returns
///    `Err(E::from(error))` and the function does not run;
/// 2. calls the function;
/// 3. on `Ok(value)`, commits the message and returns `Ok(value)`. The
///    commit is fenced: if a check-back rolled the message back meanwhile,
///    it fails with `Error::RolledBack`, returned as `Err(E::from(error))`:
///    the local work happened but its message will not be sent, so the
///    caller should compensate;
/// 4. on `Err(error)`, rolls the message back and returns `Err(error)`. A
///    failed rollback is ignored (the message stays prepared and its
///    check-back decides). If the check-back committed the message first
///    (the work outlived `check_after`), the message goes out although the
///    work failed: the caller gets `Err(E::from(Error::CommittedByCheckBack
///    { id, topic }))` instead of `error`, and should compensate.
///
/// If the function panics, or the future is dropped before it finishes, the
/// message stays prepared and the topic's check-back decides. So does a
/// process that dies at any step.
///
/// With `check_back = path`, `path` must name a `#[check_back]` function
/// that takes `&M`, this producer's payload type, or `&txmsg::Envelope`;
/// anything else is a compile error at `path`. `#[check_back]` declares a
/// hidden type of the function's name for this check (a function and a type
/// may share a name), so a plain function there is an error too. Without
/// `check_back`, a check-back for the topic must be registered somewhere
/// in the program; a prepared message whose topic has none is dead when it
/// comes up for a check.
///
/// Checks follow RocketMQ's defaults: the first after `check_after` (6 s),
/// then 30 s apart while the answer is Unknown, up to 15 checks, after which
/// the message is dead; the interval and the number of checks are settings of
/// the [`CheckBackWorker`]. Only a check that really ran counts. The
/// check-back's verdict is fenced like the producer's: whichever of the two
/// settles the message second finds it settled and loses.
///
/// Written by hand, `charge_and_commit` above is:
///
/// ```no_run
/// # use std::time::Duration;
/// # use txmsg::Message;
/// # use txmsg::half::HalfOutbox;
/// # #[derive(serde::Serialize)]
/// # struct PaymentRequested { order: i64, cents: i64 }
/// # async fn charge(payment: &PaymentRequested, card: &str) -> Result<String, txmsg::Error> {
/// #     let _ = (payment.cents, card);
/// #     Ok(String::new())
/// # }
/// async fn charge_and_commit<DB: sqlx::Database>(
///     outbox: &HalfOutbox<DB>,
///     payment: &PaymentRequested,
///     card: &str,
/// ) -> Result<String, txmsg::Error> {
///     // (A hidden check that `payment_state` takes `&PaymentRequested`.)
///     // The keys, then the message, stored prepared.
///     let key = payment.order.to_string();
///     let idempotency_key = format!("pay-{}", payment.order);
///     let message = Message::new("payments.requested", payment)?
///         .key(key)
///         .idempotency_key(idempotency_key);
///     let prepared = outbox.prepare(message, Duration::from_millis(6000)).await?;
///     // The local work, then the message's fate.
///     match charge(payment, card).await {
///         Ok(value) => {
///             prepared.commit().await?;
///             Ok(value)
///         }
///         Err(error) => {
///             // Committed by its check-back meanwhile: it will be delivered.
///             let (id, topic) = (prepared.id(), prepared.topic().to_owned());
///             match prepared.rollback().await {
///                 Ok(txmsg::half::ResolveOutcome::AlreadyCommitted) => {
///                     Err(txmsg::Error::CommittedByCheckBack { id, topic }.into())
///                 }
///                 _ => Err(error),
///             }
///         }
///     }
/// }
/// ```
///
/// # Compile-time checks
///
/// Every mistake below is a compile error, reported at the token named, and
/// all of them are reported at once; the function is still emitted, so that
/// its callers keep compiling. `A → B` reads: writing `A` gives the error
/// `B`.
///
/// The item:
///
/// - an `async fn` with a body: `struct Order;` or `async fn f(&self);` (no
///   body) → `` `#[transactional_message]` can only be used on an `async fn`
///   with a body ``, at the attribute;
/// - `async`: `fn place_order(..)` → `` `#[transactional_message]` functions
///   must be `async fn` ``, at the `fn` token;
/// - safe and Rust ABI: `async unsafe fn` → ``… cannot be `unsafe` ``, at
///   `unsafe`; `async extern "C" fn` → ``… cannot be `extern` ``, at the ABI;
/// - no generics but lifetimes: `async fn f<T>(..)` or `<const N: usize>` →
///   `` `#[transactional_message]` functions cannot have type or const
///   parameters, expected lifetime parameters only ``, at each parameter;
/// - a free function: `async fn f(&self, tx: ..)` → `` `#[transactional_message]`
///   functions cannot take `self`, expected a free function whose first
///   parameter is `&mut txmsg::Tx<'_, DB>` `` (for `half`: ``… is the payload
///   `&M` ``), at `self`.
///
/// The arguments:
///
/// - `name = value` syntax: `topic("a")` → ``expected `=` after `topic` in
///   `#[transactional_message]`, as in `topic = ...` ``; `topic = "a" key = id`
///   → ``expected `,` ``;
/// - known names: `exchange = "x"` → ``unknown argument `exchange` to
///   `#[transactional_message]`, expected one of: topic, key,
///   idempotency_key, ttl, half, check_back, check_after, crate``, at the
///   name; a near miss or a synonym adds a suggestion: `kye = id`,
///   `ordering_key = id` or `routing_key = id` → ``…; did you mean `key`?``
///   (and a misspelt `topic` is not also reported missing);
/// - each name once: `key = a, key = b` → ``duplicate argument `key` to
///   `#[transactional_message]`, expected each argument at most once``, at
///   the second `key`;
/// - a value where one is expected, none for `half`: `key` alone →
///   ``expected `key = <expression>` in `#[transactional_message]` ``;
///   `half = true` → `` `half` takes no value in `#[transactional_message]`,
///   expected `half` alone ``;
/// - a topic: none → ``missing `topic = "..."` in `#[transactional_message]`,
///   as in `#[transactional_message(topic = "orders.placed")]` ``, at the
///   attribute; `topic = ORDERS` → ``expected a string literal for `topic`
///   …, as in `topic = "orders.placed"` ``;
/// - a valid topic, at the literal: `topic = ""` → ``invalid topic … in
///   `#[transactional_message]`: must not be empty``; 201 bytes → ``…: must
///   be at most 200 bytes``; `topic = "orders.*"` or `"a b"` → ``…: may
///   contain only ASCII letters, digits, `.`, `-` and `_` ``; `".a"`, `"a."`
///   or `"a..b"` → ``…: must not start or end with `.` or contain an empty
///   segment``;
/// - a `ttl` literal that parses, at the literal: `ttl = "30 minutes"`,
///   `"30"`, `"1h30m"` or `"1.5h"` → ``invalid ttl `30 minutes` in
///   `#[transactional_message]`: expected a whole number and a unit, one of
///   `ms`, `s`, `m`, `h`, `d`, as in "30m"``; `ttl = "0s"` → ``…: expected
///   a duration greater than zero``; more than 2⁶⁴ − 1 ms → ``…: expected at
///   most 2^64 - 1 milliseconds``;
/// - a `ttl` expression of the right type: `ttl = 5` or `ttl = secs` with
///   `secs: u64` → `` `{integer}` cannot be a ttl: expected a
///   `std::time::Duration` or `Option<Duration>` ``, at the expression;
/// - keys that are `Display`: `key = customer` with `customer: CustomerId`
///   and no `Display` impl → `` `CustomerId` cannot be a message key: it does
///   not implement `std::fmt::Display` ``, at the expression (same for
///   `idempotency_key`);
/// - `crate` a path: `crate = "not a path"` → ``expected a path such as
///   "my_txmsg" or "::my_txmsg" for `crate` in `#[transactional_message]`,
///   found "not a path"``; `crate = my_txmsg` → ``expected a string literal
///   for `crate` …``.
///
/// The signature, without `half`:
///
/// - a transaction first: `async fn f(id: i64)`, `async fn f()` or
///   `tx: &Tx<'_, Sqlite>` (not `&mut`) → ``expected `&mut txmsg::Tx<'_, DB>`
///   as the first parameter of a `#[transactional_message]` function``, at
///   the parameter (or the parentheses);
/// - first, not later: `async fn f(id: i64, tx: &mut Tx<'_, Sqlite>)` →
///   ``the `&mut txmsg::Tx<'_, DB>` parameter of a `#[transactional_message]`
///   function must come first``, at the transaction;
/// - bound to a name: `_: &mut Tx<'_, Sqlite>` → ``expected a name for the
///   transaction parameter of a `#[transactional_message]` function, as in
///   `tx: &mut txmsg::Tx<'_, DB>` ``;
/// - `Result<M, E>` with both arguments: no return type, `-> Order` or
///   `-> Option<Order>` → ``expected the return type `Result<M, E>` of a
///   `#[transactional_message]` function, where `M: Serialize` is the
///   message payload and `E: From<txmsg::Error>` ``, at the type; an alias
///   `-> txmsg::Result<Order>` adds ``; this `Result` alias hides `E`, write
///   it out, as in `Result<Order, txmsg::Error>` ``;
/// - a payload that is `Serialize`: `Result<OrderPlaced, _>` without
///   `#[derive(Serialize)]` → `` `OrderPlaced` cannot be the payload of a
///   transactional message: it does not implement `serde::Serialize` ``, at
///   `OrderPlaced`;
/// - an error that takes `txmsg::Error`: `Result<_, OrderError>` without
///   `From<txmsg::Error>` → ``the trait bound `OrderError: From<txmsg::Error>`
///   is not satisfied``, at `OrderError`.
///
/// The signature and arguments, with `half`:
///
/// - `check_back` and `check_after` only with `half`: `check_back =
///   payment_state` alone → `` `check_back` requires `half` in
///   `#[transactional_message]`: only half producers are checked back, as
///   in `#[transactional_message(topic = "...", half, check_back =
///   payment_state)]` ``, at the name (same for `check_after`);
/// - a payload first: `async fn f()` → ``expected the payload `msg: &M` as
///   the first parameter of a `#[transactional_message(half)]` function``;
/// - no transaction: `async fn f(tx: &mut Tx<'_, Sqlite>, p: &P)` (anywhere)
///   → `` `#[transactional_message(half)]` functions do their local work
///   outside the store's transaction: take the payload `&M` as the first
///   parameter, not a `Tx` ``, at the parameter;
/// - the payload by shared reference: `p: Payment` or `p: &mut Payment` →
///   ``the payload of a `#[transactional_message(half)]` function is stored
///   before its body runs, take it by shared reference: expected `&Payment`
///   rather than `Payment` ``; `p: &impl Serialize` → ``… cannot be
///   `impl Trait`, expected a concrete type``;
/// - `Result<T, E>`: `-> Option<()>` → ``expected the return type
///   `Result<T, E>` of a `#[transactional_message(half)]` function, where
///   `E: From<txmsg::Error>` ``; the payload must be `Serialize` and `E`
///   `From<txmsg::Error>`, as above;
/// - `check_after` as `ttl`: `check_after = "6 seconds"` → ``invalid
///   check_after `6 seconds` in `#[transactional_message]`: expected a whole
///   number and a unit, …``; `"0s"` → ``…: expected a duration greater than
///   zero``;
/// - `check_back` a plain path: `check_back = "payment_state"` or
///   `check_back = f::<u8>` → ``expected the path of a `#[check_back]`
///   function for `check_back` in `#[transactional_message]`, as in
///   `check_back = payment_state` ``;
/// - `check_back` naming a `#[check_back]` function: a plain `async fn` →
///   rustc's ``constant provided when a type was expected`` (with ``help:
///   `payment_state` is a function item, not a type``), at the path;
/// - `check_back` of this payload: `check_back = refund_state` where
///   `refund_state` takes `&RefundRequested` → `` `refund_state` is not a
///   check-back for `PaymentRequested` ``, at the path (a check-back of
///   `&txmsg::Envelope` fits any payload).
///
/// What one macro call cannot see is checked when the program runs: a half
/// producer without `check_back` relies on a `#[check_back]` for its topic
/// being registered somewhere, and a prepared message whose topic has none
/// is dead when it comes up for a check.
///
/// [`txmsg::Tx`]: https://docs.rs/txmsg/latest/txmsg/struct.Tx.html
/// [`CheckBackWorker`]: https://docs.rs/txmsg/latest/txmsg/half/struct.CheckBackWorker.html
/// [`HalfOutbox`]: https://docs.rs/txmsg/latest/txmsg/half/struct.HalfOutbox.html
/// [`HalfOutbox::prepare`]: https://docs.rs/txmsg/latest/txmsg/half/struct.HalfOutbox.html#method.prepare
#[proc_macro_attribute]
pub fn transactional_message(args: TokenStream, item: TokenStream) -> TokenStream {
    producer::transactional_message(args.into(), item.into()).into()
}

/// Makes an `async fn` the idempotent consumer of a topic for a consumer
/// group: each message is applied once, in a transaction that also records
/// it in the group's inbox.
///
/// The function is registered when the program starts; a
/// [`Consumer`] started for the group finds it without a hand-written list,
/// subscribes to its topic and calls it for every message.
///
/// ```no_run
/// use txmsg::consumer::{Consumer, ConsumerConfig};
/// use txmsg::memory::MemoryBroker;
/// use txmsg::prelude::*;
/// use txmsg::sqlite::SqliteStore;
/// use txmsg::{Envelope, Tx, message_handler};
///
/// #[derive(serde::Deserialize)]
/// struct OrderPlaced {
///     id: i64,
///     total_cents: i64,
/// }
///
/// #[message_handler(topic = "orders.placed", group = "billing", max_attempts = 5)]
/// async fn bill_order(
///     tx: &mut Tx<'_, sqlx::Sqlite>,
///     order: OrderPlaced,
///     envelope: &Envelope,
/// ) -> Result<(), txmsg::Error> {
///     sqlx::query("INSERT INTO invoices (order_id, cents, message_key) VALUES (?, ?, ?)")
///         .bind(order.id)
///         .bind(order.total_cents)
///         .bind(&envelope.idempotency_key)
///         .execute(&mut **tx)
///         .await?;
///     Ok(())
/// }
///
/// # async fn run() -> txmsg::Result<()> {
/// let store = SqliteStore::connect("sqlite://billing.db").await?;
/// store.migrate().await?;
/// // Runs `bill_order`, and every other handler of the group.
/// let consumer = Consumer::new(store, MemoryBroker::new(), ConsumerConfig::new("billing"))?
///     .start()
///     .await?;
/// // ...
/// consumer.shutdown().await;
/// # Ok(()) }
/// ```
///
/// # Arguments
///
/// | argument             | required | value                                                  |
/// |----------------------|----------|--------------------------------------------------------|
/// | `topic = "..."`      | yes      | the topic consumed, a string literal checked at compile time: 1 to 200 bytes of ASCII letters, digits, `.`, `-`, `_`, no empty segment |
/// | `group = "..."`      | yes      | the consumer group, a string literal with the same rule; each group gets every message of the topic and keeps its own inbox |
/// | `max_attempts = <n>` | no       | how many times the handler is called for one message before the message is dead-lettered, an integer literal of at least 1; default 5 |
/// | `crate = "path"`     | no       | path of the `txmsg` crate if the dependency is renamed; default `::txmsg` |
///
/// # Signature
///
/// ```text
/// [pub(..)] async fn name['a, ..](tx: &mut Tx<'_, DB>, message: M) -> Result<(), E>
/// [pub(..)] async fn name['a, ..](tx: &mut Tx<'_, DB>, message: M, envelope: &Envelope) -> Result<(), E>
/// [pub(..)] async fn name['a, ..](tx: &mut Tx<'_, DB>, message: M, [envelope: &Envelope,] app: State<AppState>, ..) -> Result<(), E>
/// ```
///
/// - `async fn`, any visibility, attributes allowed, lifetime parameters
///   allowed but no type or const parameters and no `impl Trait`;
/// - a free function: the generated code calls it by its name in the
///   enclosing module, so functions in an `impl` block are not supported,
///   with or without `self`;
/// - the first parameter is the transaction, `&mut Tx<'_, DB>` where `Tx`
///   is [`txmsg::Tx`] (under any path or alias ending in `Tx`) and `DB` a
///   sqlx database such as `sqlx::Sqlite`, which must be the database of the
///   consumer's store;
/// - the second is the message, taken by value: an owned type (no borrowed
///   lifetimes) with `M: serde::de::DeserializeOwned`, decoded from the
///   message's JSON payload;
/// - then, optional and in any order: the message's [`txmsg::Envelope`], by
///   shared reference (its idempotency key, ordering key, headers and
///   times), and any number of `State<T>` parameters ([`txmsg::State`]),
///   each a clone of the value of type `T` given to the consumer with
///   [`Consumer::with_state`]; `T`
///   must be `Clone + Send + Sync + 'static`, and a consumer lacking a
///   handler's state refuses to start, naming the handler and `T`;
/// - the return type is `Result<(), E>` (any path ending in `Result`, with
///   both arguments written out) with `E: std::fmt::Display`.
///
/// Any other shape is a compile error at the offending token, as are unknown
/// or repeated arguments, a missing or invalid topic or group, and a
/// `max_attempts` of 0. A message type that is not `DeserializeOwned` and an
/// error type that is not `Display` are reported at their types. See
/// [Compile-time checks](#compile-time-checks).
///
/// # Exactly once
///
/// Brokers deliver at least once; the consumer turns that into exactly once
/// per group. For each delivery it:
///
/// 1. decodes the payload into `M` (a payload that does not decode is dead
///    at once, with the reason, and never retried);
/// 2. begins a transaction, and inserts the message's idempotency key into
///    the group's inbox in it; if the key is there already, the message was
///    applied before: the handler does not run, and the delivery is
///    acknowledged;
/// 3. calls the handler with the transaction;
/// 4. commits, and only then acknowledges the delivery.
///
/// The handler's writes and the inbox key commit together or not at all. A
/// crash before the commit leaves nothing behind, and the broker delivers
/// the message again; a crash between the commit and the acknowledgement
/// ends in a redelivery that the inbox recognises. Messages the handler
/// writes with `#[transactional_message]` functions in the same transaction
/// are sent if and only if it commits.
///
/// If the handler returns `Err` (or the commit fails), the transaction rolls
/// back, effects and inbox key with it, and the handler is called again
/// after an exponential backoff with jitter (see
/// [`ConsumerConfig`]), up to `max_attempts` calls in all.
/// Then the message is dead for the group: it is kept as a consumer dead
/// letter whose reason holds the last error's `Display` text, and
/// acknowledged. Dead letters can be listed and replayed through the
/// [`ConsumerHandle`]. Messages with the same ordering key are handled one
/// at a time, in order.
///
/// # Registration and duplicates
///
/// Each handler submits a [`HandlerRecord`] (topic, group, `max_attempts`,
/// path, file and line, database) to [`inventory`]; a consumer started for a
/// group takes the records of that group, and
/// [`registered_handlers`] lists them all. Two handlers for the same
/// (topic, group), possibly in different crates, cannot be seen at compile
/// time, since each macro call sees one function and the records are
/// collected when the program is linked: [`Consumer::start`] refuses them,
/// naming both functions and where they are, and so it does a handler
/// whose database differs from the store's.
///
/// # Generated code
///
/// The function as written, unchanged: it can still be called directly, for
/// instance from a test with a transaction of its own (there is no inbox or
/// acknowledgement then). Next to it, inside `const _: () = { ... };`, an
/// adapter with the signature the runtime calls, an entry point that runs
/// the steps above through `run_handler`, and the registration. Written by
/// hand, the example above is:
///
/// ```
/// use txmsg::consumer::{AnyCtx, HandlerOutcome, HandlerRecord, run_handler};
/// use txmsg::adapter::BoxFuture;
/// use txmsg::{Envelope, Tx};
///
/// # #[derive(serde::Deserialize)]
/// # struct OrderPlaced { id: i64, total_cents: i64 }
/// async fn bill_order(
///     tx: &mut Tx<'_, sqlx::Sqlite>,
///     order: OrderPlaced,
///     envelope: &Envelope,
/// ) -> Result<(), txmsg::Error> {
///     // The body, unchanged.
/// #   let _ = (tx, order.id, order.total_cents, envelope);
/// #   Ok(())
/// }
///
/// // The signature the runtime calls (without the envelope parameter, the
/// // adapter drops it). For each `State<T>` parameter it takes the value
/// // from `states`, and returns `None` if there is none (which the consumer
/// // rules out at start).
/// fn adapter<'t>(
///     tx: &'t mut Tx<'static, sqlx::Sqlite>,
///     order: OrderPlaced,
///     envelope: &'t Envelope,
///     _states: &'t txmsg::adapter::States,
/// ) -> Option<BoxFuture<'t, Result<(), txmsg::Error>>> {
///     Some(Box::pin(bill_order(tx, order, envelope)))
/// }
///
/// // The entry point: decodes the payload, begins the transaction, records
/// // the inbox key, calls the adapter, commits. `replay` is the dead letter
/// // being replayed, if any, removed in the same transaction.
/// fn call<'a>(
///     ctx: &'a AnyCtx,
///     envelope: &'a Envelope,
///     replay: Option<uuid::Uuid>,
/// ) -> BoxFuture<'a, HandlerOutcome> {
///     Box::pin(run_handler::<sqlx::Sqlite, OrderPlaced, txmsg::Error, _>(
///         ctx, envelope, replay, adapter,
///     ))
/// }
///
/// inventory::submit! {
///     HandlerRecord {
///         topic: "orders.placed",
///         group: "billing",
///         max_attempts: 5,
///         name: concat!(module_path!(), "::", "bill_order"),
///         file: file!(),
///         line: line!(),
///         database: std::any::type_name::<sqlx::Sqlite>,
///         // The `State<T>` types it takes: none here.
///         states: &[],
///         call,
///     }
/// }
///
/// # fn main() {
/// let handlers = txmsg::consumer::registered_handlers();
/// assert_eq!((handlers[0].topic, handlers[0].group), ("orders.placed", "billing"));
/// # }
/// ```
///
/// The generated entry point calls `run_handler` through a function generic
/// over the message and error types, bounded so that a message that is not
/// `DeserializeOwned`, or an error that is not `Display`, is reported once,
/// at its type.
///
/// # Compile-time checks
///
/// Every mistake below is a compile error, reported at the token named, and
/// all of them are reported at once; the function is still emitted. `A → B`
/// reads: writing `A` gives the error `B`.
///
/// The item:
///
/// - an `async fn` with a body: `struct Bill;` → `` `#[message_handler]` can
///   only be used on an `async fn` with a body ``;
/// - `async`: `fn bill(..)` → `` `#[message_handler]` functions must be
///   `async fn` ``, at the `fn` token;
/// - safe and Rust ABI: `async unsafe fn` → ``… cannot be `unsafe` ``;
///   `async extern "C" fn` → ``… cannot be `extern` ``;
/// - no generics but lifetimes: `async fn bill<T>(..)` → `` `#[message_handler]`
///   functions cannot have type or const parameters, expected lifetime
///   parameters only ``, at `T`;
/// - a free function: `async fn bill(&self, tx: ..)` → `` `#[message_handler]`
///   functions cannot take `self`, expected a free function whose first
///   parameter is `&mut txmsg::Tx<'_, DB>` ``, at `self`;
/// - no `impl Trait`: `message: impl DeserializeOwned` → `` `#[message_handler]`
///   functions cannot use `impl Trait` in their signature, expected concrete
///   types ``, at the `impl Trait`.
///
/// The arguments:
///
/// - `name = value` syntax and commas: `group("billing")` → ``expected `=`
///   after `group` in `#[message_handler]`, as in `group = ...` ``;
/// - known names: `ttl = "30m"` → ``unknown argument `ttl` to
///   `#[message_handler]`, expected one of: topic, group, max_attempts,
///   crate``, at the name; a near miss or a synonym adds a suggestion:
///   `grup`, `consumer_group` or `group_id` → ``…; did you mean `group`?``,
///   `max_retries`, `retries` or `attempts` → ``…; did you mean
///   `max_attempts`?``;
/// - each name once: `group = "a", group = "b"` → ``duplicate argument
///   `group` to `#[message_handler]`, expected each argument at most once``,
///   at the second;
/// - a value: `group` alone → ``expected `group = "..."` in
///   `#[message_handler]` ``;
/// - a topic and a group: either missing → ``missing `group = "..."` in
///   `#[message_handler]`, as in `#[message_handler(topic = "orders.placed",
///   group = "billing")]` `` (each missing one is reported);
/// - string literals that follow the topic rule, at the literal: `topic =
///   ORDERS` → ``expected a string literal for `topic` in
///   `#[message_handler]`, as in `topic = "orders.placed"` ``; `topic =
///   "orders.*"` or `group = "billing service"` → ``invalid group `billing
///   service` in `#[message_handler]`: may contain only ASCII letters,
///   digits, `.`, `-` and `_` ``; `group = ""` → ``…: must not be empty``;
///   more than 200 bytes, a leading or trailing `.` or an empty segment as
///   for `#[transactional_message]`;
/// - `max_attempts` an integer literal of at least 1 that fits a `u32`:
///   `max_attempts = 0` or `-1` → ``invalid max_attempts `0` in
///   `#[message_handler]`: expected at least 1 attempt``; `max_attempts =
///   "5"` or `= MAX` → ``expected an integer literal for `max_attempts` in
///   `#[message_handler]`, as in `max_attempts = 5` ``; `5u8` → ``…: expected
///   a `u32` ``; `4294967296` → ``…: expected at most 4294967295 attempts``;
/// - `crate` a path in a string literal: `crate = "not a path"` →
///   ``expected a path such as "my_txmsg" or "::my_txmsg" for `crate` …``.
///
/// The signature:
///
/// - a transaction first: `async fn bill(order: OrderPlaced)` or `tx: &Tx<'_,
///   Sqlite>` → ``expected `&mut txmsg::Tx<'_, DB>` as the first parameter
///   of a `#[message_handler]` function``; `(order: OrderPlaced, tx: &mut
///   Tx<'_, Sqlite>)` → ``the `&mut txmsg::Tx<'_, DB>` parameter of a
///   `#[message_handler]` function must come first``;
/// - a message: `(tx)` → ``expected the parameters of a `#[message_handler]`
///   function: `tx: &mut txmsg::Tx<'_, DB>, message: M`, then optionally
///   `envelope: &txmsg::Envelope` and `State<T>` parameters``, at the
///   parentheses;
/// - the message second: `(tx, envelope: &Envelope)` → ``expected `message:
///   M` as the second parameter of a `#[message_handler]` function, before
///   the `&txmsg::Envelope` ``; `(tx, envelope: &Envelope, order:
///   OrderPlaced)` → ``the `&txmsg::Envelope` parameter of a
///   `#[message_handler]` function must come after the message`` (and the
///   same for a `State<T>`);
/// - after the message, only the envelope and states: `(tx, order, attempt:
///   u32)` → ``expected `&txmsg::Envelope` or `State<T>` parameters after the
///   message of a `#[message_handler]` function``, at the extra parameters;
///   a second `&Envelope` → ``a `#[message_handler]` function takes the
///   `&txmsg::Envelope` once``;
/// - a state type that can be state: `State<Rc<Pool>>` → `` `Rc<Pool>` cannot
///   be the state of a handler or check-back: it must be `Clone + Send +
///   Sync + 'static` ``, at the type;
/// - the message by value: `order: &OrderPlaced` → `` `#[message_handler]`
///   functions take the message by value, expected `OrderPlaced` rather than
///   `&OrderPlaced` ``;
/// - an owned message: `note: Note<'a>` → ``the message type of a
///   `#[message_handler]` function cannot borrow, expected an owned type
///   (`M: DeserializeOwned`)``, at the lifetime;
/// - a message that is `DeserializeOwned`: `OrderPlaced` without
///   `#[derive(Deserialize)]` → `` `OrderPlaced` cannot be the message of a
///   `#[message_handler]`: it does not implement `serde::Deserialize` ``, at
///   the type;
/// - the envelope by shared reference: `&mut Envelope` → ``expected
///   `&txmsg::Envelope` as the envelope parameter of a `#[message_handler]`
///   function; the envelope is shared, take it by `&` ``, `Envelope` →
///   ``…; take it by reference``;
/// - `Result<(), E>`: no return type or `-> Option<()>` → ``expected the
///   return type `Result<(), E>` of a `#[message_handler]` function, where
///   `E: Display` ``; `-> Result<u64, E>` adds ``; a handler returns `()`
///   when it succeeds``; an alias `-> txmsg::Result<()>` adds ``; this
///   `Result` alias hides `E`, write it out, as in `Result<(),
///   txmsg::Error>` ``;
/// - an owned error: `Result<(), &'a str>` → ``the error type of a
///   `#[message_handler]` function cannot borrow, expected an owned type or
///   `'static` references``;
/// - an error that is `Display`: `Result<(), BillingError>` without `Display`
///   → `` `BillingError` cannot be the error of a `#[message_handler]`: it
///   does not implement `std::fmt::Display` ``, at the type;
/// - a `Send` future: an `Rc` held across an `.await` → rustc's ``future
///   cannot be sent between threads safely``, at the function's name.
///
/// Two handlers for one (topic, group), possibly in different crates,
/// cannot be seen by a single macro call: each call sees one function.
/// [`Consumer::start`] refuses them when the consumer starts, with an error
/// naming both functions and where they are; it refuses a handler whose
/// database is not the store's too. See [Registration and
/// duplicates](#registration-and-duplicates).
///
/// [`Consumer`]: https://docs.rs/txmsg/latest/txmsg/consumer/struct.Consumer.html
/// [`Consumer::start`]: https://docs.rs/txmsg/latest/txmsg/consumer/struct.Consumer.html#method.start
/// [`ConsumerConfig`]: https://docs.rs/txmsg/latest/txmsg/consumer/struct.ConsumerConfig.html
/// [`ConsumerHandle`]: https://docs.rs/txmsg/latest/txmsg/consumer/struct.ConsumerHandle.html
/// [`HandlerRecord`]: https://docs.rs/txmsg/latest/txmsg/consumer/struct.HandlerRecord.html
/// [`registered_handlers`]: https://docs.rs/txmsg/latest/txmsg/consumer/fn.registered_handlers.html
/// [`inventory`]: https://docs.rs/inventory
/// [`txmsg::Tx`]: https://docs.rs/txmsg/latest/txmsg/struct.Tx.html
/// [`txmsg::Envelope`]: https://docs.rs/txmsg/latest/txmsg/struct.Envelope.html
/// [`txmsg::State`]: https://docs.rs/txmsg/latest/txmsg/struct.State.html
/// [`Consumer::with_state`]: https://docs.rs/txmsg/latest/txmsg/consumer/struct.Consumer.html#method.with_state
#[proc_macro_attribute]
pub fn message_handler(args: TokenStream, item: TokenStream) -> TokenStream {
    handler::message_handler(args.into(), item.into()).into()
}

/// Makes an `async fn` the check-back of a topic: the function the
/// [`CheckBackWorker`] asks about a half message whose producer never said
/// whether its local work happened (RocketMQ's `checkLocalTransaction`,
/// DTM's QueryPrepared).
///
/// It looks at the business data and answers with a [`CheckStatus`]:
/// `Commit` (the work happened: deliver the message), `Rollback` (it did not,
/// and will not: delete the message) or `Unknown` (ask again later). An error
/// counts as Unknown, and its text is logged. See
/// [`#[transactional_message(half)]`](macro@transactional_message#half-messages)
/// for the producer's side.
///
/// ```
/// use txmsg::half::CheckStatus;
/// use txmsg::{Envelope, check_back};
///
/// #[derive(serde::Deserialize)]
/// struct PaymentRequested {
///     order: i64,
/// }
/// # mod payments {
/// #     pub async fn status(_: i64) -> Result<Option<bool>, std::io::Error> { Ok(None) }
/// # }
///
/// #[check_back(topic = "payments.requested")]
/// async fn payment_state(payment: &PaymentRequested) -> Result<CheckStatus, std::io::Error> {
///     Ok(match payments::status(payment.order).await? {
///         Some(true) => CheckStatus::Commit,
///         Some(false) => CheckStatus::Rollback,
///         None => CheckStatus::Unknown,
///     })
/// }
///
/// // Or, for any payload, from the envelope.
/// #[check_back(topic = "audit.logged")]
/// async fn audit_state(envelope: &Envelope) -> Result<CheckStatus, String> {
///     Ok(if envelope.idempotency_key.is_empty() {
///         CheckStatus::Rollback
///     } else {
///         CheckStatus::Commit
///     })
/// }
/// # fn main() {}
/// ```
///
/// # Arguments
///
/// | argument         | required | value                                                  |
/// |------------------|----------|--------------------------------------------------------|
/// | `topic = "..."`  | yes      | the topic whose prepared messages it resolves, a string literal checked at compile time: 1 to 200 bytes of ASCII letters, digits, `.`, `-`, `_`, no empty segment |
/// | `crate = "path"` | no       | path of the `txmsg` crate if the dependency is renamed; default `::txmsg` |
///
/// # Signature
///
/// ```text
/// [pub(..)] async fn name['a, ..](message: &M) -> Result<CheckStatus, E>
/// [pub(..)] async fn name['a, ..](envelope: &Envelope) -> Result<CheckStatus, E>
/// [pub(..)] async fn name['a, ..](message: &M, app: State<AppState>, ..) -> Result<CheckStatus, E>
/// ```
///
/// - `async fn`, any visibility, attributes allowed, lifetime parameters
///   allowed but no type or const parameters and no `impl Trait`; a free
///   function (not in an `impl` block, no `self`);
/// - first, by shared reference: the message `&M`, an owned type (no
///   borrowed lifetimes) with `M: serde::de::DeserializeOwned`, decoded from
///   the message's JSON payload; or the whole [`txmsg::Envelope`], whose
///   payload is not decoded;
/// - then any number of `State<T>` parameters ([`txmsg::State`]), each a
///   clone of the value of type `T` given to the worker with
///   [`CheckBackWorker::with_state`]; a worker lacking one refuses to start,
///   naming the check-back and `T`;
/// - no transaction: the function looks at the business data on its own;
/// - the return type is `Result<CheckStatus, E>` (any paths ending in
///   `Result` and `CheckStatus`, with both arguments written out) with
///   `E: std::fmt::Display`.
///
/// Any other shape is a compile error at the offending token, as are unknown
/// or repeated arguments and a missing or invalid topic. A message type that
/// is not `DeserializeOwned` and an error type that is not `Display` are
/// reported at their types. See [Compile-time checks](#compile-time-checks).
///
/// # Registration and duplicates
///
/// Each check-back submits a [`CheckBackRecord`] (topic, path, file and
/// line, entry point) to [`inventory`]; [`registered_check_backs`] lists
/// them all, and a [`CheckBackWorker`] resolves each prepared message with
/// the check-back of its topic. One check-back per topic: two, possibly in
/// different crates, cannot be seen at compile time, so
/// [`CheckBackWorker::start`] refuses them, naming both functions and where
/// they are. A payload that does not decode as `M` is an error, so it counts
/// as Unknown and the message is checked again, until it is dead.
///
/// # Generated code
///
/// The function as written, unchanged: it can still be called directly, for
/// instance from tests. Next to it:
///
/// - a hidden, uninhabited type of the same name and visibility (a function
///   and a type may share a name), which implements a hidden trait for the
///   payload type the function takes (for every type, for `&Envelope`):
///   half producers that name the function in `check_back = path` require
///   it for their payload, so a check-back of another payload is a compile
///   error at their `path`;
/// - inside `const _: () = { ... };`, an entry point that decodes the payload
///   and calls the function, and its registration. For `payment_state`
///   above, that is:
///
/// ```
/// use txmsg::Envelope;
/// use txmsg::adapter::BoxFuture;
/// use txmsg::half::{CheckBackRecord, CheckStatus, run_check_back};
///
/// # #[derive(serde::Deserialize)]
/// # struct PaymentRequested { order: i64 }
/// async fn payment_state(payment: &PaymentRequested) -> Result<CheckStatus, std::io::Error> {
///     // The body, unchanged.
/// #   let _ = payment.order;
/// #   Ok(CheckStatus::Unknown)
/// }
///
/// // The signature the entry point calls; `None` if a `State<T>` it takes
/// // is missing from `states` (which the worker rules out at start).
/// fn adapter<'t>(
///     payment: &'t PaymentRequested,
///     _states: &'t txmsg::adapter::States,
/// ) -> Option<BoxFuture<'t, Result<CheckStatus, std::io::Error>>> {
///     Some(Box::pin(payment_state(payment)))
/// }
///
/// // The entry point: decodes the payload, calls the adapter, turns an
/// // error into its text. (A check-back of `&Envelope` is called with the
/// // envelope as is.)
/// fn call<'a>(
///     envelope: &'a Envelope,
///     states: &'a txmsg::adapter::States,
/// ) -> BoxFuture<'a, Result<CheckStatus, String>> {
///     Box::pin(run_check_back::<PaymentRequested, std::io::Error, _>(
///         envelope, states, adapter,
///     ))
/// }
///
/// inventory::submit! {
///     CheckBackRecord {
///         topic: "payments.requested",
///         name: concat!(module_path!(), "::", "payment_state"),
///         file: file!(),
///         line: line!(),
///         states: &[],
///         call,
///     }
/// }
///
/// # fn main() {
/// let check_backs = txmsg::half::registered_check_backs();
/// assert!(check_backs.iter().any(|c| c.topic == "payments.requested"));
/// # }
/// ```
///
/// As for `#[message_handler]`, the generated entry point calls
/// `run_check_back` through a function generic over the message and error
/// types, so that a message that is not `DeserializeOwned`, or an error
/// that is not `Display`, is reported once, at its type.
///
/// # Compile-time checks
///
/// Every mistake below is a compile error, reported at the token named, and
/// all of them are reported at once; the function is still emitted. `A → B`
/// reads: writing `A` gives the error `B`.
///
/// The item:
///
/// - an `async fn` with a body: `struct State;` → `` `#[check_back]` can only
///   be used on an `async fn` with a body ``;
/// - `async`: `fn payment_state(..)` → `` `#[check_back]` functions must be
///   `async fn` ``, at the `fn` token;
/// - safe and Rust ABI: `async unsafe fn` → ``… cannot be `unsafe` ``;
///   `async extern "C" fn` → ``… cannot be `extern` ``;
/// - no generics but lifetimes: `async fn payment_state<M>(..)` →
///   `` `#[check_back]` functions cannot have type or const parameters,
///   expected lifetime parameters only ``, at `M`;
/// - a free function: `async fn payment_state(&self)` → `` `#[check_back]`
///   functions cannot take `self`, expected a free function whose parameter
///   is `&M` or `&txmsg::Envelope` ``, at `self`;
/// - no `impl Trait`: `message: &impl DeserializeOwned` → `` `#[check_back]`
///   functions cannot use `impl Trait` in their signature, expected concrete
///   types ``.
///
/// The arguments:
///
/// - `name = value` syntax and commas: `topic("a")` → ``expected `=` after
///   `topic` in `#[check_back]`, as in `topic = ...` ``;
/// - known names: `group = "billing"` → ``unknown argument `group` to
///   `#[check_back]`, expected one of: topic, crate``, at the name; a near
///   miss adds a suggestion: `topik` → ``…; did you mean `topic`?``;
/// - each name once: `topic = "a", topic = "b"` → ``duplicate argument
///   `topic` to `#[check_back]`, expected each argument at most once``, at
///   the second;
/// - a value: `topic` alone → ``expected `topic = "..."` in `#[check_back]` ``;
/// - a topic: none → ``missing `topic = "..."` in `#[check_back]`, as in
///   `#[check_back(topic = "payments.requested")]` ``, at the attribute;
///   `topic = PAYMENTS` → ``expected a string literal for `topic` …``;
/// - a valid topic, at the literal, with the rule and messages of
///   `#[transactional_message]`: `topic = "payments.*"` → ``invalid topic
///   `payments.*` in `#[check_back]`: may contain only ASCII letters,
///   digits, `.`, `-` and `_` ``;
/// - `crate` a path in a string literal: `crate = "not a path"` →
///   ``expected a path such as "my_txmsg" or "::my_txmsg" for `crate` …``.
///
/// The signature:
///
/// - the message, then only states: `async fn payment_state()` or
///   `(payment: &P, extra: u8)` → ``expected the parameters of a
///   `#[check_back]` function: `message: &M` or `envelope:
///   &txmsg::Envelope`, then optionally `State<T>` parameters``, at the
///   parentheses or the extra parameters; `(app: State<App>, payment: &P)`
///   → ``expected `message: &M` or `envelope: &txmsg::Envelope` as the first
///   parameter of a `#[check_back]` function, before the `State<T>`
///   parameters``;
/// - no transaction: `(tx: &mut Tx<'_, Sqlite>)` → `` `#[check_back]`
///   functions get no transaction: they look at the business data on their
///   own, expected `message: &M` or `envelope: &txmsg::Envelope` as the
///   first parameter ``;
/// - the message by shared reference: `payment: PaymentRequested` or `&mut
///   PaymentRequested` → `` `#[check_back]` functions take the message by
///   shared reference, expected `&PaymentRequested` rather than
///   `PaymentRequested` ``;
/// - the envelope by shared reference: `&mut Envelope` → ``expected
///   `&txmsg::Envelope` as the parameter of a `#[check_back]` function; the
///   envelope is shared, take it by `&` ``; `Envelope` → ``…; take it by
///   reference``;
/// - an owned message: `&Note<'a>` → ``the message type of a `#[check_back]`
///   function cannot borrow, expected an owned type (`M: DeserializeOwned`)``;
/// - a message that is `DeserializeOwned`: `&PaymentRequested` without
///   `#[derive(Deserialize)]` → `` `PaymentRequested` cannot be the message
///   of a `#[check_back]`: it does not implement `serde::Deserialize` ``, at
///   the type;
/// - `Result<CheckStatus, E>`: no return type or `-> CheckStatus` →
///   ``expected the return type `Result<CheckStatus, E>` of a `#[check_back]`
///   function, where `E: Display` ``; `-> Result<bool, E>` adds ``; a
///   check-back answers with `txmsg::half::CheckStatus`: `Commit`,
///   `Rollback` or `Unknown` ``; an alias `-> txmsg::Result<CheckStatus>`
///   adds ``; this `Result` alias hides `E`, write it out …``;
/// - an owned error: `Result<CheckStatus, &'a str>` → ``the error type of a
///   `#[check_back]` function cannot borrow, expected an owned type or
///   `'static` references``;
/// - an error that is `Display`: `Result<CheckStatus, CheckError>` without
///   `Display` → `` `CheckError` cannot be the error of a `#[check_back]`: it
///   does not implement `std::fmt::Display` ``, at the type;
/// - a `Send` future: an `Rc` held across an `.await` → rustc's ``future
///   cannot be sent between threads safely``.
///
/// A half producer's `check_back = path` is checked against this function's
/// payload type at the producer: see [`#[transactional_message]`'s
/// checks](macro@transactional_message#compile-time-checks).
///
/// Two check-backs for one topic, possibly in different crates, cannot be
/// seen by a single macro call: each call sees one function.
/// [`CheckBackWorker::start`] refuses them when the check-back worker
/// starts, with an error naming both functions and where they are. See
/// [Registration and duplicates](#registration-and-duplicates).
///
/// [`CheckStatus`]: https://docs.rs/txmsg/latest/txmsg/half/enum.CheckStatus.html
/// [`CheckBackWorker`]: https://docs.rs/txmsg/latest/txmsg/half/struct.CheckBackWorker.html
/// [`CheckBackWorker::start`]: https://docs.rs/txmsg/latest/txmsg/half/struct.CheckBackWorker.html#method.start
/// [`CheckBackRecord`]: https://docs.rs/txmsg/latest/txmsg/half/struct.CheckBackRecord.html
/// [`registered_check_backs`]: https://docs.rs/txmsg/latest/txmsg/half/fn.registered_check_backs.html
/// [`inventory`]: https://docs.rs/inventory
/// [`txmsg::Envelope`]: https://docs.rs/txmsg/latest/txmsg/struct.Envelope.html
/// [`txmsg::State`]: https://docs.rs/txmsg/latest/txmsg/struct.State.html
/// [`CheckBackWorker::with_state`]: https://docs.rs/txmsg/latest/txmsg/half/struct.CheckBackWorker.html#method.with_state
#[proc_macro_attribute]
pub fn check_back(args: TokenStream, item: TokenStream) -> TokenStream {
    check_back::check_back(args.into(), item.into()).into()
}
