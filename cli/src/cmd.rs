//! The commands, on any store.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Value, json};
use txmsg::consumer::{ConsumerConfig, ConsumerDeadLetter, InboxStore};
use txmsg::postgres::{Capture, LogRelay, LogRelayConfig, PgStore};
use txmsg::{DeadFilter, DeadLetter, Envelope, Error};
use txmsg_core::TopicStats;
use uuid::Uuid;

use crate::args::{
    Command, DeadCommand, FilterArgs, InboxPurgeArgs, ListArgs, PurgeArgs, ReplayArgs, ShowArgs,
    StatusArgs,
};
use crate::connect::{Context, Failure, describe};
use crate::fmt::{clip, format_age, table};

/// What a command prints on stdout: a document for `--json`, text otherwise.
#[derive(Debug)]
pub(crate) struct Output {
    /// For `--json`.
    pub(crate) json: Value,
    /// For people.
    pub(crate) text: String,
    /// Whether the command did all it was asked (exit 0).
    pub(crate) ok: bool,
}

impl Output {
    pub(crate) fn ok(json: Value, text: String) -> Self {
        Output {
            json,
            text,
            ok: true,
        }
    }
}

/// Runs a command and reports the store's errors as one line.
pub(crate) struct Runner<'a, S> {
    store: &'a S,
    ctx: &'a Context,
    now: DateTime<Utc>,
}

impl<S: InboxStore> Runner<'_, S> {
    fn fail(&self, e: Error) -> Failure {
        Failure::Failed(describe(&e, Some(self.ctx)))
    }

    /// `now - age`.
    fn ago(&self, age: Duration) -> Result<DateTime<Utc>, Failure> {
        chrono::Duration::from_std(age)
            .ok()
            .and_then(|d| self.now.checked_sub_signed(d))
            .ok_or_else(|| Failure::Usage("the age is too long".to_owned()))
    }
}

/// Runs `command` on `store`.
pub(crate) async fn run<S: InboxStore>(
    store: &S,
    command: &Command,
    ctx: &Context,
) -> Result<Output, Failure> {
    let r = Runner {
        store,
        ctx,
        now: Utc::now(),
    };
    match command {
        Command::Migrate(_) => {
            store.migrate().await.map_err(|e| r.fail(e))?;
            Ok(Output::ok(
                json!({ "migrated": true }),
                "migrated: the txmsg tables are up to date\n".to_owned(),
            ))
        }
        Command::Status(args) => status(&r, args).await,
        Command::Dead(DeadCommand::List(args)) => dead_list(&r, args).await,
        Command::Dead(DeadCommand::Show(args)) => dead_show(&r, args).await,
        Command::Dead(DeadCommand::Replay(args)) => dead_replay(&r, args).await,
        Command::Dead(DeadCommand::Purge(args)) => dead_purge(&r, args).await,
        Command::Inbox(crate::args::InboxCommand::Purge(args)) => inbox_purge(&r, args).await,
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

async fn status<S: InboxStore>(r: &Runner<'_, S>, args: &StatusArgs) -> Result<Output, Failure> {
    let since = r.ago(args.sent_window)?;
    let topics: Vec<TopicStats> = r.store.topic_stats(since).await.map_err(|e| r.fail(e))?;
    let age = |t: &TopicStats| t.oldest_pending.map(|o| (r.now - o).num_seconds().max(0));
    let window = args.sent_window.as_secs();
    let json = json!({
        "sent_window_seconds": window,
        "topics": topics.iter().map(|t| json!({
            "topic": t.topic,
            "pending": t.pending,
            "prepared": t.prepared,
            "oldest_pending": t.oldest_pending.map(rfc3339),
            "oldest_pending_age_seconds": age(t),
            "dead": t.dead,
            "sent_recently": t.sent_since,
        })).collect::<Vec<_>>(),
    });
    let text = if topics.is_empty() {
        "no messages in the outbox\n".to_owned()
    } else {
        let sent = format!(
            "SENT LAST {}",
            format_age(i64::try_from(window).unwrap_or(i64::MAX))
        );
        let rows: Vec<Vec<String>> = topics
            .iter()
            .map(|t| {
                vec![
                    t.topic.clone(),
                    t.pending.to_string(),
                    t.prepared.to_string(),
                    age(t).map_or_else(|| "-".to_owned(), format_age),
                    t.dead.to_string(),
                    t.sent_since.to_string(),
                ]
            })
            .collect();
        table(
            &[
                "TOPIC",
                "PENDING",
                "PREPARED",
                "OLDEST PENDING",
                "DEAD",
                &sent,
            ],
            &rows,
        )
    };
    Ok(Output::ok(json, text))
}

/// Adds the log relay's slot to `out` (`txmsg status --log-prefix`); a
/// missing or invalidated slot makes the command fail (exit 1) after
/// printing what it found.
pub(crate) async fn log_slot(
    store: &PgStore,
    args: &StatusArgs,
    out: &mut Output,
    ctx: &Context,
) -> Result<(), Failure> {
    let usage = |e: Error| Failure::Usage(describe(&e, None));
    let prefix = args.log_prefix.as_deref().unwrap_or_default();
    let store = store
        .clone()
        .with_capture(Capture::log(prefix).map_err(usage)?);
    let config = LogRelayConfig::default()
        .with_slot(&args.log_slot)
        .and_then(|c| c.with_publication(&args.log_publication))
        .map_err(usage)?;
    let status = LogRelay::status(&store, &config)
        .await
        .map_err(|e| Failure::Failed(describe(&e, Some(ctx))))?;
    let Some(st) = status else {
        out.ok = false;
        out.json["log_slot"] = json!({ "slot": args.log_slot, "exists": false });
        out.text.push_str(&format!(
            "\nLOG SLOT {}: MISSING. No relay can read the log capture's messages; \
             create it before producers write (LogRelay::create_slot)\n",
            args.log_slot
        ));
        return Ok(());
    };
    let age = st
        .oldest_unconfirmed
        .map(|t| (Utc::now() - t).num_seconds().max(0));
    out.json["log_slot"] = json!({
        "slot": st.slot,
        "exists": true,
        "active": st.active,
        "lag_bytes": st.lag_bytes,
        "wal_status": st.wal_status,
        "safe_wal_bytes": st.safe_wal_bytes,
        "invalidated": st.invalidated(),
        "oldest_unconfirmed": st.oldest_unconfirmed.map(rfc3339),
        "oldest_unconfirmed_age_seconds": age,
        "reader_lag_seconds": st.reader_lag.map(|d| d.as_secs_f64()),
    });
    let rows = vec![vec![
        st.slot.clone(),
        if st.active { "reading" } else { "no reader" }.to_owned(),
        st.lag_bytes
            .map_or_else(|| "-".to_owned(), |b| b.to_string()),
        st.wal_status.clone().unwrap_or_else(|| "-".to_owned()),
        age.map_or_else(|| "-".to_owned(), format_age),
        st.reader_lag
            .map_or_else(|| "-".to_owned(), |d| format!("{:.3}s", d.as_secs_f64())),
    ]];
    out.text.push('\n');
    out.text.push_str(&table(
        &[
            "LOG SLOT",
            "READER",
            "LAG BYTES",
            "WAL STATUS",
            "OLDEST UNCONFIRMED",
            "READER LAG",
        ],
        &rows,
    ));
    if st.invalidated() {
        out.ok = false;
        out.text.push_str(&format!(
            "LOG SLOT {} IS INVALIDATED: PostgreSQL removed WAL it needed \
             (max_slot_wal_keep_size). Messages past its last confirmed position may never \
             be published; see the guide on recovering before creating a new slot.\n",
            st.slot
        ));
    } else if st.wal_status.as_deref() == Some("unreserved") {
        out.text.push_str(&format!(
            "warning: log slot {} is past max_slot_wal_keep_size and will be invalidated \
             at the next checkpoint unless its relay catches up\n",
            st.slot
        ));
    }
    Ok(())
}

/// The most dead letters a dry run looks at.
const DRY_RUN_LIMIT: u32 = 10_000;

/// The ids of the dead letters `filter` selects that went dead before
/// `before` (all of them without), oldest first, at most
/// [`DRY_RUN_LIMIT`]; and whether there may be more.
async fn selected_dead<S: InboxStore>(
    r: &Runner<'_, S>,
    filter: &FilterArgs,
    before: Option<DateTime<Utc>>,
) -> Result<(Vec<Uuid>, bool), Failure> {
    let listed = r
        .store
        .dead_letters(&dead_filter(filter, DRY_RUN_LIMIT))
        .await
        .map_err(|e| r.fail(e))?;
    let capped = listed.len() >= DRY_RUN_LIMIT as usize;
    let ids = listed
        .iter()
        .take_while(|d| before.is_none_or(|b| d.dead_at < b))
        .map(|d| d.envelope.id)
        .collect();
    Ok((ids, capped))
}

/// The text and JSON of a dry run that would `verb` `ids`.
fn dry_run_output(verb: &str, ids: &[Uuid], capped: bool) -> Output {
    let more = if capped { " or more" } else { "" };
    let mut text = format!(
        "would {verb} {}{more} dead letter(s) (dry run: nothing changed)\n",
        ids.len()
    );
    for id in ids.iter().take(20) {
        text.push_str(&format!("  {id}\n"));
    }
    if ids.len() > 20 {
        text.push_str(&format!("  ... and {} more\n", ids.len() - 20));
    }
    Output::ok(
        json!({ format!("would_{verb}"): ids, "more": capped, "dry_run": true }),
        text,
    )
}

fn dead_filter(filter: &FilterArgs, limit: u32) -> DeadFilter {
    let mut f = DeadFilter::default().limit(limit);
    if let Some(topic) = &filter.topic {
        f = f.topic(topic.clone());
    }
    if let Some(key) = &filter.key {
        f = f.key(key.clone());
    }
    f
}

fn envelope_json(e: &Envelope) -> Value {
    let payload = serde_json::from_slice::<Value>(&e.payload)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&e.payload).into_owned()));
    json!({
        "id": e.id,
        "topic": e.topic,
        "key": e.key,
        "idempotency_key": e.idempotency_key,
        "attempts": e.attempts,
        "created_at": rfc3339(e.created_at),
        "expires_at": e.expires_at.map(rfc3339),
        "headers": e.headers,
        "payload": payload,
    })
}

fn dead_json(d: &DeadLetter, full: bool) -> Value {
    let mut v = envelope_json(&d.envelope);
    if let Value::Object(map) = &mut v {
        if !full {
            map.remove("headers");
            map.remove("payload");
        }
        map.insert("reason".into(), json!(d.reason));
        map.insert("dead_at".into(), json!(rfc3339(d.dead_at)));
    }
    v
}

fn consumer_dead_json(d: &ConsumerDeadLetter, full: bool) -> Value {
    let mut v = envelope_json(&d.envelope);
    if let Value::Object(map) = &mut v {
        if !full {
            map.remove("headers");
            map.remove("payload");
        }
        map.insert("message_id".into(), json!(d.envelope.id));
        map.insert("id".into(), json!(d.id));
        map.insert("group".into(), json!(d.group));
        map.insert("attempts".into(), json!(d.attempts));
        map.insert("reason".into(), json!(d.reason));
        map.insert("dead_at".into(), json!(rfc3339(d.dead_at)));
    }
    v
}

async fn dead_list<S: InboxStore>(r: &Runner<'_, S>, args: &ListArgs) -> Result<Output, Failure> {
    let filter = dead_filter(&args.filter, args.limit);
    let cutoff = args.filter.older_than.map(|a| r.ago(a)).transpose()?;
    // Listed oldest first, so those older than the cut-off are a prefix.
    let keep = |dead_at: DateTime<Utc>| cutoff.is_none_or(|c| dead_at <= c);
    let header = ["ID", "TOPIC", "KEY", "ATTEMPTS", "DEAD FOR", "REASON"];
    let age = |t: DateTime<Utc>| format_age((r.now - t).num_seconds());
    let (json, rows) = if let Some(group) = &args.group {
        let dead = r
            .store
            .consumer_dead_letters(group, &filter)
            .await
            .map_err(|e| r.fail(e))?;
        let dead: Vec<_> = dead.into_iter().filter(|d| keep(d.dead_at)).collect();
        let rows: Vec<Vec<String>> = dead
            .iter()
            .map(|d| {
                vec![
                    d.id.to_string(),
                    d.envelope.topic.clone(),
                    d.envelope.key.clone().unwrap_or_else(|| "-".into()),
                    d.attempts.to_string(),
                    age(d.dead_at),
                    clip(&d.reason, 60),
                ]
            })
            .collect();
        let json = json!({
            "group": group,
            "dead_letters": dead.iter().map(|d| consumer_dead_json(d, false)).collect::<Vec<_>>(),
        });
        (json, rows)
    } else {
        let dead = r.store.dead_letters(&filter).await.map_err(|e| r.fail(e))?;
        let dead: Vec<_> = dead.into_iter().filter(|d| keep(d.dead_at)).collect();
        let rows: Vec<Vec<String>> = dead
            .iter()
            .map(|d| {
                vec![
                    d.envelope.id.to_string(),
                    d.envelope.topic.clone(),
                    d.envelope.key.clone().unwrap_or_else(|| "-".into()),
                    d.envelope.attempts.to_string(),
                    age(d.dead_at),
                    clip(&d.reason, 60),
                ]
            })
            .collect();
        let json = json!({
            "dead_letters": dead.iter().map(|d| dead_json(d, false)).collect::<Vec<_>>(),
        });
        (json, rows)
    };
    let mut json = json;
    let mut text = if rows.is_empty() {
        "no dead letters\n".to_owned()
    } else {
        let mut text = table(&header, &rows);
        if u32::try_from(rows.len()).unwrap_or(u32::MAX) >= args.limit {
            text.push_str(&format!(
                "(first {} shown; --limit to see more)\n",
                args.limit
            ));
        }
        text
    };
    if args.group.is_none() {
        // These were the outbox's; say where the consumers' are.
        let groups = r
            .store
            .consumer_dead_groups()
            .await
            .map_err(|e| r.fail(e))?;
        text = format!("outbox dead letters:\n{text}");
        if groups.is_empty() {
            text.push_str("no consumer group has dead letters\n");
        } else {
            text.push_str("consumer groups with dead letters (list with --group <group>):\n");
            for (group, n) in &groups {
                text.push_str(&format!("  {group}: {n}\n"));
            }
        }
        json["consumer_dead_groups"] = groups
            .iter()
            .map(|(group, n)| json!({ "group": group, "dead_letters": n }))
            .collect();
    }
    Ok(Output::ok(json, text))
}

fn show_text(fields: &[(&str, String)], headers: &txmsg::Headers, payload: &[u8]) -> String {
    let mut text = String::new();
    for (name, value) in fields {
        text.push_str(&format!("{:<18}{value}\n", format!("{name}:")));
    }
    text.push_str("headers:\n");
    for (k, v) in headers {
        text.push_str(&format!("  {k}: {v}\n"));
    }
    text.push_str("payload:\n");
    let pretty = serde_json::from_slice::<Value>(payload)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| String::from_utf8_lossy(payload).into_owned());
    for line in pretty.lines() {
        text.push_str(&format!("  {line}\n"));
    }
    text
}

fn envelope_fields(e: &Envelope) -> Vec<(&'static str, String)> {
    vec![
        ("topic", e.topic.clone()),
        ("key", e.key.clone().unwrap_or_else(|| "-".into())),
        ("idempotency key", e.idempotency_key.clone()),
        ("created at", rfc3339(e.created_at)),
        (
            "expires at",
            e.expires_at.map_or_else(|| "-".to_owned(), rfc3339),
        ),
    ]
}

async fn dead_show<S: InboxStore>(r: &Runner<'_, S>, args: &ShowArgs) -> Result<Output, Failure> {
    if let Some(group) = &args.group {
        let dead = r
            .store
            .consumer_dead_letter(group, args.id)
            .await
            .map_err(|e| r.fail(e))?
            .ok_or_else(|| {
                Failure::Failed(format!(
                    "group `{group}` has no dead letter with id {}",
                    args.id
                ))
            })?;
        let mut fields = vec![
            ("id", dead.id.to_string()),
            ("group", dead.group.clone()),
            ("message id", dead.envelope.id.to_string()),
        ];
        fields.extend(envelope_fields(&dead.envelope));
        fields.push(("attempts", dead.attempts.to_string()));
        fields.push(("dead at", rfc3339(dead.dead_at)));
        fields.push(("reason", dead.reason.clone()));
        let text = show_text(&fields, &dead.envelope.headers, &dead.envelope.payload);
        return Ok(Output::ok(consumer_dead_json(&dead, true), text));
    }
    let dead = r
        .store
        .dead_letter(args.id)
        .await
        .map_err(|e| r.fail(e))?
        .ok_or_else(|| Failure::Failed(format!("no dead letter with id {}", args.id)))?;
    let mut fields = vec![("id", dead.envelope.id.to_string())];
    fields.extend(envelope_fields(&dead.envelope));
    fields.push(("attempts", dead.envelope.attempts.to_string()));
    fields.push(("dead at", rfc3339(dead.dead_at)));
    fields.push(("reason", dead.reason.clone()));
    let text = show_text(&fields, &dead.envelope.headers, &dead.envelope.payload);
    Ok(Output::ok(dead_json(&dead, true), text))
}

fn progress(verb: &str, done: u64) {
    eprintln!("{verb} {done} so far");
}

async fn dead_replay<S: InboxStore>(
    r: &Runner<'_, S>,
    args: &ReplayArgs,
) -> Result<Output, Failure> {
    let mut replayed: Vec<Uuid> = Vec::new();
    let mut not_dead: Vec<Uuid> = Vec::new();
    if args.dry_run {
        if !args.ids.is_empty() {
            let mut dead = Vec::new();
            for id in &args.ids {
                if r.store
                    .dead_letter(*id)
                    .await
                    .map_err(|e| r.fail(e))?
                    .is_some()
                {
                    dead.push(*id);
                }
            }
            return Ok(dry_run_output("replay", &dead, false));
        }
        if !args.filter.any() && !args.all {
            return Err(Failure::Usage(
                "say which dead letters to replay: message ids, --topic, --key, --older-than, or --all"
                    .to_owned(),
            ));
        }
        let cutoff = args.filter.older_than.map(|a| r.ago(a)).transpose()?;
        let (ids, capped) = selected_dead(r, &args.filter, cutoff).await?;
        return Ok(dry_run_output("replay", &ids, capped));
    }
    if !args.ids.is_empty() {
        for id in &args.ids {
            if r.store.replay(*id, r.now).await.map_err(|e| r.fail(e))? {
                replayed.push(*id);
            } else {
                not_dead.push(*id);
            }
        }
    } else {
        if !args.filter.any() && !args.all {
            return Err(Failure::Usage(
                "say which dead letters to replay: message ids, --topic, --key, --older-than, or --all"
                    .to_owned(),
            ));
        }
        let cutoff = args.filter.older_than.map(|a| r.ago(a)).transpose()?;
        let filter = dead_filter(&args.filter, args.batch);
        let mut seen: HashSet<Uuid> = HashSet::new();
        loop {
            let batch = r.store.dead_letters(&filter).await.map_err(|e| r.fail(e))?;
            let full = batch.len() >= usize::try_from(args.batch).unwrap_or(usize::MAX);
            let mut progressed = false;
            let mut past_cutoff = false;
            for d in &batch {
                if cutoff.is_some_and(|c| d.dead_at > c) {
                    past_cutoff = true;
                    break;
                }
                let id = d.envelope.id;
                if !seen.insert(id) {
                    continue;
                }
                progressed = true;
                // Replayed rows become due now, as of this run.
                if r.store
                    .replay(id, Utc::now())
                    .await
                    .map_err(|e| r.fail(e))?
                {
                    replayed.push(id);
                }
            }
            progress("replayed", replayed.len() as u64);
            if !full || past_cutoff || !progressed {
                break;
            }
        }
    }
    let json = json!({ "replayed": replayed, "not_dead": not_dead });
    let mut text = format!("replayed {} dead letter(s)\n", replayed.len());
    for id in &not_dead {
        text.push_str(&format!("not replayed: {id} is not a dead letter\n"));
    }
    Ok(Output {
        json,
        text,
        ok: not_dead.is_empty(),
    })
}

/// A time after every dead row, for purges without an age; within every
/// store's range.
fn far_future() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(9999, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

async fn dead_purge<S: InboxStore>(r: &Runner<'_, S>, args: &PurgeArgs) -> Result<Output, Failure> {
    if !args.filter.any() && !args.all {
        return Err(Failure::Usage(
            "say which dead letters to purge: --topic, --key, --older-than, or --all".to_owned(),
        ));
    }
    let before = match args.filter.older_than {
        Some(age) => r.ago(age)?,
        None => far_future(),
    };
    if args.dry_run {
        let (ids, capped) = selected_dead(r, &args.filter, Some(before)).await?;
        return Ok(dry_run_output("purge", &ids, capped));
    }
    let filter = dead_filter(&args.filter, args.batch);
    let mut purged = 0u64;
    loop {
        let n = r
            .store
            .purge_dead(&filter, before)
            .await
            .map_err(|e| r.fail(e))?;
        purged += n;
        progress("purged", purged);
        if n < u64::from(args.batch) {
            break;
        }
    }
    Ok(Output::ok(
        json!({ "purged": purged }),
        format!("purged {purged} dead letter(s)\n"),
    ))
}

/// Attempts of a handler that does not set `max_attempts`.
const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// Refuses an inbox retention the library itself refuses
/// (`ConsumerConfig::check_retention`): keys must outlive every redelivery,
/// here judged with the consumer's default settings.
fn check_inbox_age(args: &InboxPurgeArgs) -> Result<(), Failure> {
    let defaults = ConsumerConfig::new(args.group.clone());
    let horizon = defaults.redelivery_horizon(DEFAULT_MAX_ATTEMPTS);
    if args.older_than > horizon || args.allow_below_horizon {
        return Ok(());
    }
    let age = |d: Duration| format_age(i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    Err(Failure::Usage(format!(
        "--older-than {} is not longer than the redelivery horizon of a group with the \
         default settings (redelivery_window {} + {DEFAULT_MAX_ATTEMPTS} attempts x \
         backoff_max {}): a message redelivered after its key was purged would be applied \
         twice; pass --allow-below-horizon if group `{}` stops redelivering sooner",
        age(args.older_than),
        age(defaults.redelivery_window()),
        age(defaults.backoff_max()),
        args.group,
    )))
}

async fn inbox_purge<S: InboxStore>(
    r: &Runner<'_, S>,
    args: &InboxPurgeArgs,
) -> Result<Output, Failure> {
    check_inbox_age(args)?;
    let before = r.ago(args.older_than)?;
    // A group with no key at all is most likely a misspelt name.
    let far = Utc::now() + chrono::Duration::days(36_500);
    let any = r
        .store
        .count_inbox(&args.group, far)
        .await
        .map_err(|e| r.fail(e))?;
    if any == 0 {
        eprintln!(
            "warning: group `{}` has no inbox keys at all: is the group name right?",
            args.group
        );
    }
    if args.dry_run {
        let would = r
            .store
            .count_inbox(&args.group, before)
            .await
            .map_err(|e| r.fail(e))?;
        return Ok(Output::ok(
            json!({ "group": args.group, "would_purge": would, "dry_run": true }),
            format!(
                "would purge {would} inbox key(s) of group `{}` processed before {} (dry run: nothing deleted)\n",
                args.group,
                rfc3339(before)
            ),
        ));
    }
    let mut purged = 0u64;
    loop {
        let n = r
            .store
            .purge_inbox(&args.group, before, args.batch)
            .await
            .map_err(|e| r.fail(e))?;
        purged += n;
        progress("purged", purged);
        if n < u64::from(args.batch) {
            break;
        }
    }
    Ok(Output::ok(
        json!({ "group": args.group, "purged": purged }),
        format!(
            "purged {purged} inbox key(s) of group `{}` processed before {}\n",
            args.group,
            rfc3339(before)
        ),
    ))
}
