//! Attribute macros of [txmsg](https://docs.rs/txmsg).
//!
//! Use them through the `txmsg` crate (`txmsg::transactional_message`); the
//! code they generate refers to `txmsg` and nothing else.

mod diag;
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
/// | `ttl = "..."`            | no       | how long the message may wait for delivery before it is dead-lettered as expired: a whole number and a unit, `ms`, `s`, `m`, `h` or `d` (`"500ms"`, `"30m"`, `"1d"`) |
/// | `crate = "path"`         | no       | path of the `txmsg` crate if the dependency is renamed; default `::txmsg` |
///
/// `key` and `idempotency_key` are Rust expressions that may use the
/// function's parameters. They are evaluated before the body runs, so the
/// body may move those parameters, and turned into `String`s with
/// [`Display`](std::fmt::Display). `ttl` and the topic are checked at compile
/// time.
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
/// or repeated arguments, a missing or invalid topic and an invalid `ttl`.
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
///   (dropping it does), so that the business writes are undone too.
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
/// `.ttl(Duration::from_secs(30 * 60))`.
///
/// [`txmsg::Tx`]: https://docs.rs/txmsg/latest/txmsg/struct.Tx.html
#[proc_macro_attribute]
pub fn transactional_message(args: TokenStream, item: TokenStream) -> TokenStream {
    producer::transactional_message(args.into(), item.into()).into()
}
