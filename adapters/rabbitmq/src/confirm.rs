//! Publisher confirms matched to their messages, returns included.
//!
//! With `mandatory`, RabbitMQ sends a `basic.return` for a message no queue
//! is bound for, then confirms it like any other. lapin hands a return to
//! whichever confirmation it completes next, and completes the messages of
//! one `multiple` ack in no particular order, so the return of one message
//! can arrive on another's confirmation: the returned message would be taken
//! as delivered (lost) and a delivered one sent again. This module does not
//! trust that pairing (it is hand-written because no AMQP client of the
//! field exposes returns matched to delivery tags): it tells returns apart
//! by the message id they carry.
//!
//! How: RabbitMQ sends a message's return before any ack for it or for a
//! later message of the channel, and returns in publish order. So once the
//! messages up to delivery tag `t` are all confirmed and lapin has finished
//! with the frame that confirmed the last of them, every return of those
//! messages sits on some completed confirmation. One [`drive`] task per
//! channel owns every publish of the channel from its first poll, in
//! delivery-tag order; it collects the returns of all completed
//! confirmations by id and settles the oldest messages only when all of them
//! are confirmed.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use futures_util::FutureExt;
use lapin::message::BasicReturnMessage;
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot, watch};

use crate::wire::TXMSG_ID_HEADER;

/// What became of one publish.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// RabbitMQ confirmed the message and did not return it.
    Routed,
    /// RabbitMQ returned the message: no queue is bound for it. `None` when
    /// the return could not be read back to a message id (see [`drive`]).
    Returned(Option<Box<BasicReturnMessage>>),
    /// RabbitMQ nacked the message.
    Nacked,
    /// The frames could not be sent.
    SendFailed(lapin::Error),
    /// The channel failed before the confirm.
    ConfirmFailed(lapin::Error),
    /// The channel was not in publisher-confirm mode.
    NotConfirmed,
}

/// The publishes of one channel, handed to its [`drive`] task in
/// delivery-tag order.
pub(crate) struct Confirms {
    channel: Channel,
    submit: Mutex<mpsc::UnboundedSender<Entry>>,
    in_flight: watch::Sender<usize>,
}

type Publish = Pin<Box<dyn Future<Output = Result<Confirmation, Failure>> + Send>>;

/// Why a publish got no confirmation.
enum Failure {
    Send(lapin::Error),
    Confirm(lapin::Error),
}

impl From<Failure> for Outcome {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Send(e) => Outcome::SendFailed(e),
            Failure::Confirm(e) => Outcome::ConfirmFailed(e),
        }
    }
}

/// One publish on its way to the driver.
struct Entry {
    id: String,
    publish: Publish,
    reply: oneshot::Sender<Outcome>,
}

impl Confirms {
    /// Starts the driver of `channel` on `runtime`.
    pub(crate) fn start(channel: Channel, runtime: &Handle) -> Self {
        let (submit, entries) = mpsc::unbounded_channel();
        let (in_flight, _) = watch::channel(0);
        runtime.spawn(drive(channel.clone(), entries, in_flight.clone()));
        Confirms {
            channel,
            submit: Mutex::new(submit),
            in_flight,
        }
    }

    /// Publishes on the channel and hands the publish to the driver; the
    /// receiver gets its outcome. The publish goes on when the receiver is
    /// dropped. `id` is the message's `txmsg-id` header.
    pub(crate) fn publish(
        &self,
        exchange: ShortString,
        routing_key: ShortString,
        options: BasicPublishOptions,
        payload: Vec<u8>,
        properties: BasicProperties,
        id: String,
    ) -> oneshot::Receiver<Outcome> {
        let (reply, outcome) = oneshot::channel();
        let channel = self.channel.clone();
        let mut publish: Publish = Box::pin(async move {
            let confirm = channel
                .basic_publish(exchange, routing_key, options, &payload, properties)
                .await
                .map_err(Failure::Send)?;
            confirm.await.map_err(Failure::Confirm)
        });
        let submit = self.submit.lock().unwrap_or_else(PoisonError::into_inner);
        // The first poll takes the delivery tag and queues the frames, with
        // no await before: done under the lock, publishes reach the driver
        // in delivery-tag order. The driver polls again with its own waker.
        if let Poll::Ready(done) = publish
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        {
            publish = Box::pin(std::future::ready(done));
        }
        self.in_flight.send_modify(|n| *n += 1);
        // A driver that is gone (its runtime shut down) drops the entry and
        // with it `reply`: the caller sees the publish end without outcome.
        if submit.send(Entry { id, publish, reply }).is_err() {
            self.in_flight.send_modify(|n| *n -= 1);
        }
        outcome
    }

    /// Waits until every publish handed to the driver is settled.
    pub(crate) async fn settled(&self) {
        let mut in_flight = self.in_flight.subscribe();
        let _ = in_flight.wait_for(|n| *n == 0).await;
    }
}

/// A publish in the driver's queue.
struct Slot {
    id: String,
    reply: oneshot::Sender<Outcome>,
    /// The publish, until its confirmation is complete.
    publish: Option<Publish>,
    /// The confirmation, once complete, with any return taken out of it.
    done: Option<Result<Confirmation, Failure>>,
}

impl Slot {
    /// Polls the publish, if still running; `true` once it is complete.
    fn poll(&mut self, returns: &mut Returns, cx: &mut Context<'_>) -> bool {
        if let Some(publish) = self.publish.as_mut()
            && let Poll::Ready(done) = publish.as_mut().poll(cx)
        {
            self.publish = None;
            self.done = Some(returns.take_from(done));
        }
        self.done.is_some()
    }
}

/// Returns collected from completed confirmations, by message id.
///
/// A return can come on the confirmation of an earlier publish before the
/// driver has taken its own publish in, so returns are kept until their
/// publish is settled: each is taken by exactly one, since every publish of
/// the channel is settled (with a failure when the channel is lost).
#[derive(Default)]
struct Returns {
    by_id: HashMap<String, Vec<BasicReturnMessage>>,
    /// Returns without a readable id: each makes one confirmed message be
    /// reported returned, so it is published again rather than lost.
    unattributed: usize,
}

impl Returns {
    fn collect(&mut self, message: BasicReturnMessage) {
        let id = message
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(TXMSG_ID_HEADER))
            .and_then(|v| match v {
                lapin::types::AMQPValue::LongString(s) => Some(s.to_string()),
                lapin::types::AMQPValue::ShortString(s) => Some(s.to_string()),
                _ => None,
            });
        match id {
            Some(id) => self.by_id.entry(id).or_default().push(message),
            None => self.unattributed += 1,
        }
    }

    /// Takes the return out of a completed confirmation.
    fn take_from(&mut self, done: Result<Confirmation, Failure>) -> Result<Confirmation, Failure> {
        match done {
            Ok(Confirmation::Ack(Some(message))) => {
                self.collect(message);
                Ok(Confirmation::Ack(None))
            }
            Ok(Confirmation::Nack(Some(message))) => {
                self.collect(message);
                Ok(Confirmation::Nack(None))
            }
            other => other,
        }
    }

    fn outcome(&mut self, id: &str, done: Result<Confirmation, Failure>) -> Outcome {
        let returned = self.by_id.get_mut(id).and_then(Vec::pop);
        if self.by_id.get(id).is_some_and(Vec::is_empty) {
            self.by_id.remove(id);
        }
        match done {
            Ok(Confirmation::Ack(_)) => match returned {
                Some(message) => Outcome::Returned(Some(Box::new(message))),
                None if self.unattributed > 0 => {
                    self.unattributed -= 1;
                    Outcome::Returned(None)
                }
                None => Outcome::Routed,
            },
            Ok(Confirmation::Nack(_)) => Outcome::Nacked,
            Ok(Confirmation::NotRequested) => Outcome::NotConfirmed,
            Err(failure) => failure.into(),
        }
    }
}

/// Settles the publishes of `channel` in delivery-tag order, until the
/// [`Confirms`] is dropped and everything handed over is settled.
async fn drive(
    channel: Channel,
    entries: mpsc::UnboundedReceiver<Entry>,
    in_flight: watch::Sender<usize>,
) {
    let mut driver = Driver {
        entries,
        open: true,
        queue: VecDeque::new(),
        returns: Returns::default(),
    };
    loop {
        // Waits for the oldest publish to complete, taking new ones in.
        let head_done = std::future::poll_fn(|cx| {
            driver.take_in(cx);
            match driver.queue.front_mut() {
                Some(head) => match head.poll(&mut driver.returns, cx) {
                    true => Poll::Ready(true),
                    false => Poll::Pending,
                },
                None if driver.open => Poll::Pending,
                None => Poll::Ready(false),
            }
        })
        .await;
        if !head_done {
            return;
        }
        // The oldest publishes are confirmed: how many in a row is counted
        // now, before the barrier below. lapin may still be completing the
        // other confirmations of the ack frames that confirmed them, one of
        // which may carry the return of one of them: taking the lock lapin
        // holds for a whole frame (`wait_for_confirms` takes it on its first
        // poll) waits for the frames' end. Then every confirmation complete
        // so far is collected, those of publishes not taken in yet included,
        // and only the publishes counted before the barrier are settled: one
        // completed after it may belong to a frame lapin is still working
        // through.
        let confirmed = std::future::poll_fn(|cx| Poll::Ready(driver.poll_all(cx))).await;
        if let Some(Ok(messages)) = channel.wait_for_confirms().now_or_never() {
            // Returns of confirmations dropped unawaited; none are expected
            // since this task owns every publish, but they are counted all
            // the same.
            messages.into_iter().for_each(|m| driver.returns.collect(m));
        }
        std::future::poll_fn(|cx| {
            driver.take_in(cx);
            driver.poll_all(cx);
            Poll::Ready(())
        })
        .await;
        for slot in driver.queue.drain(..confirmed) {
            if let Slot {
                id,
                reply,
                done: Some(done),
                ..
            } = slot
            {
                // The caller may have stopped waiting: nothing to tell it.
                let _ = reply.send(driver.returns.outcome(&id, done));
            }
            in_flight.send_modify(|n| *n -= 1);
        }
    }
}

/// The state of [`drive`].
struct Driver {
    entries: mpsc::UnboundedReceiver<Entry>,
    /// Whether more entries may come.
    open: bool,
    /// The publishes not settled yet, in delivery-tag order.
    queue: VecDeque<Slot>,
    returns: Returns,
}

impl Driver {
    /// Takes in every publish handed over so far.
    fn take_in(&mut self, cx: &mut Context<'_>) {
        while self.open {
            match self.entries.poll_recv(cx) {
                Poll::Ready(Some(Entry { id, publish, reply })) => self.queue.push_back(Slot {
                    id,
                    reply,
                    publish: Some(publish),
                    done: None,
                }),
                Poll::Ready(None) => self.open = false,
                Poll::Pending => break,
            }
        }
    }

    /// Polls every publish still running; gives how many publishes at the
    /// front of the queue are complete.
    fn poll_all(&mut self, cx: &mut Context<'_>) -> usize {
        let mut in_a_row = true;
        let mut complete = 0;
        for slot in &mut self.queue {
            in_a_row &= slot.poll(&mut self.returns, cx);
            complete += usize::from(in_a_row);
        }
        complete
    }
}
