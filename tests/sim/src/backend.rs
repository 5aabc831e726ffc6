//! The stores a simulation runs on: SQLite (a file per run) and PostgreSQL
//! (a schema per run). Each has its own topics and groups, so that both
//! backends' handlers and check-backs are registered in one process.

use std::future::Future;
use std::path::PathBuf;

use txmsg::consumer::InboxStore;
use txmsg::postgres::PgStore;
use txmsg::prelude::*;
use txmsg::sqlite::SqliteStore;
use txmsg::{Envelope, Error, Tx};
use txmsg_tests::PgSchema;

use crate::{Effect, Names, Rec, check_back_answer, handler_faults};

/// A store the simulation runs on.
pub trait Backend: Send + Sync + 'static {
    /// The database.
    type Db: sqlx::Database;
    /// The store.
    type Store: InboxStore + HalfStore + SqlStore<Database = Self::Db> + Clone;
    /// What one run owns (its file or schema), dropped by [`close`](Self::close).
    type Place: Send;
    /// This backend's topics and groups.
    const NAMES: Names;

    /// A fresh, migrated store with the business tables, for run `seed`.
    fn open(seed: u64) -> impl Future<Output = txmsg::Result<Self::Place>> + Send;
    /// The store of `place`.
    fn store(place: &Self::Place) -> &Self::Store;
    /// Removes what [`open`](Self::open) made.
    fn close(place: Self::Place) -> impl Future<Output = ()> + Send;
    /// The producer's business row, in its transaction.
    fn business(
        tx: &mut Tx<'_, Self::Db>,
        producer: u32,
        n: u32,
    ) -> impl Future<Output = txmsg::Result<()>> + Send;
    /// Takes shared key `key`'s lock row in the transaction and returns the
    /// transaction's place in the key's commit order.
    fn next_order(
        tx: &mut Tx<'_, Self::Db>,
        key: u32,
    ) -> impl Future<Output = txmsg::Result<i64>> + Send;
    /// Every applied effect.
    fn effects(store: &Self::Store) -> impl Future<Output = txmsg::Result<Vec<Effect>>> + Send;
}

const BUSINESS: &str = "INSERT INTO business (producer, n) VALUES ($1, $2)";
const EFFECT: &str = "INSERT INTO effects (grp, topic, idem, okey, producer, n, i, pos) \
                      VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
/// The next place of an effect of (group, topic, key): the row lock it
/// takes is held until the handler's transaction ends, so places follow
/// commit order even if two handlers of one key overlap.
const NEXT_POS: &str = "INSERT INTO key_pos (grp, topic, okey, n) VALUES ($1, $2, $3, 1) \
                        ON CONFLICT (grp, topic, okey) DO UPDATE SET n = key_pos.n + 1 \
                        RETURNING n";
const NEXT_ORDER: &str = "UPDATE key_seq SET n = n + 1 WHERE k = $1 RETURNING n";
const EFFECTS: &str =
    "SELECT grp, topic, idem, okey, producer, n, i, pos FROM effects ORDER BY seq";
const TABLES: &str = "CREATE TABLE business (producer BIGINT NOT NULL, n BIGINT NOT NULL); \
     CREATE TABLE effects (seq {serial} PRIMARY KEY, grp TEXT NOT NULL, topic TEXT NOT NULL, \
     idem TEXT NOT NULL, okey TEXT, producer BIGINT NOT NULL, n BIGINT NOT NULL, i BIGINT NOT NULL, \
     pos BIGINT); \
     CREATE TABLE key_pos (grp TEXT NOT NULL, topic TEXT NOT NULL, okey TEXT NOT NULL, \
     n BIGINT NOT NULL, PRIMARY KEY (grp, topic, okey)); \
     CREATE TABLE key_seq (k BIGINT PRIMARY KEY, n BIGINT NOT NULL); \
     INSERT INTO key_seq (k, n) VALUES (0, 0), (1, 0), (2, 0)";

/// The statements a backend runs, the same text on both databases (SQLite
/// numbers `$1`, `$2`, … in order of first use, as PostgreSQL does): the
/// `business`, `next_order` and `effects` methods for database `$db`.
macro_rules! db_statements {
    ($db:ident, $store:ident) => {
        async fn business(tx: &mut Tx<'_, sqlx::$db>, producer: u32, n: u32) -> txmsg::Result<()> {
            sqlx::query(BUSINESS)
                .bind(i64::from(producer))
                .bind(i64::from(n))
                .execute(&mut **tx)
                .await?;
            Ok(())
        }

        async fn next_order(tx: &mut Tx<'_, sqlx::$db>, key: u32) -> txmsg::Result<i64> {
            Ok(sqlx::query_scalar(NEXT_ORDER)
                .bind(i64::from(key))
                .fetch_one(&mut **tx)
                .await?)
        }

        async fn effects(store: &$store) -> txmsg::Result<Vec<Effect>> {
            Ok(sqlx::query_as(EFFECTS).fetch_all(store.pool()).await?)
        }
    };
}

/// A backend's handlers (each: its injected faults, then the effect and
/// its place in its key's commit order) and its half messages' check-back.
macro_rules! handlers {
    ($db:ident; check $check:ident: $half:tt; $($name:ident: $topic:tt, $group:tt;)*) => {
        $(
            #[txmsg::message_handler(topic = $topic, group = $group, max_attempts = 1000)]
            async fn $name(tx: &mut Tx<'_, sqlx::$db>, rec: Rec, env: &Envelope) -> Result<(), Error> {
                handler_faults($group, &rec, env)?;
                let pos: Option<i64> = match &env.key {
                    Some(key) => Some(
                        sqlx::query_scalar(NEXT_POS)
                            .bind($group)
                            .bind(&env.topic)
                            .bind(key)
                            .fetch_one(&mut **tx)
                            .await?,
                    ),
                    None => None,
                };
                sqlx::query(EFFECT)
                    .bind($group)
                    .bind(&env.topic)
                    .bind(&env.idempotency_key)
                    .bind(env.key.as_deref())
                    .bind(i64::from(rec.producer))
                    .bind(rec.order)
                    .bind(i64::from(rec.i))
                    .bind(pos)
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }
        )*

        #[txmsg::check_back(topic = $half)]
        async fn $check(rec: &Rec) -> Result<txmsg::half::CheckStatus, Error> {
            check_back_answer(rec)
        }
    };
}

/// The embedded store: one file per run (so that connections interleave as
/// they do with a server).
#[derive(Debug)]
pub struct Sqlite;

impl Backend for Sqlite {
    type Db = sqlx::Sqlite;
    type Store = SqliteStore;
    type Place = (SqliteStore, PathBuf);
    const NAMES: Names = Names {
        a: "sim.a",
        b: "sim.b",
        h: "sim.h",
        group1: "sim-1",
        group2: "sim-2",
    };

    async fn open(seed: u64) -> txmsg::Result<Self::Place> {
        let path =
            std::env::temp_dir().join(format!("txmsg-sim-{seed}-{}.db", uuid::Uuid::now_v7()));
        let store = SqliteStore::connect(&format!("sqlite://{}", path.display())).await?;
        store.migrate().await?;
        let tables = TABLES.replace("{serial}", "INTEGER");
        sqlx::raw_sql(sqlx::AssertSqlSafe(tables))
            .execute(store.pool())
            .await?;
        Ok((store, path))
    }

    fn store(place: &Self::Place) -> &SqliteStore {
        &place.0
    }

    async fn close((store, path): Self::Place) {
        store.pool().close().await;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }

    db_statements!(Sqlite, SqliteStore);
}

handlers! {
    Sqlite;
    check sqlite_check: "sim.h";
    sqlite_1a: "sim.a", "sim-1";
    sqlite_1b: "sim.b", "sim-1";
    sqlite_1h: "sim.h", "sim-1";
    sqlite_2a: "sim.a", "sim-2";
}

/// The production database: one schema per run (first on the pool's
/// search path), at `DATABASE_URL`.
#[derive(Debug)]
pub struct Postgres;

impl Backend for Postgres {
    type Db = sqlx::Postgres;
    type Store = PgStore;
    type Place = PgSchema;
    const NAMES: Names = Names {
        a: "simpg.a",
        b: "simpg.b",
        h: "simpg.h",
        group1: "simpg-1",
        group2: "simpg-2",
    };

    async fn open(_seed: u64) -> txmsg::Result<Self::Place> {
        let schema = PgSchema::new().await;
        let tables = TABLES.replace("{serial}", "BIGSERIAL");
        sqlx::raw_sql(sqlx::AssertSqlSafe(tables))
            .execute(&schema.pool)
            .await?;
        Ok(schema)
    }

    fn store(place: &Self::Place) -> &PgStore {
        &place.store
    }

    async fn close(place: Self::Place) {
        place.drop_schema().await;
    }

    db_statements!(Postgres, PgStore);
}

handlers! {
    Postgres;
    check pg_check: "simpg.h";
    pg_1a: "simpg.a", "simpg-1";
    pg_1b: "simpg.b", "simpg-1";
    pg_1h: "simpg.h", "simpg-1";
    pg_2a: "simpg.a", "simpg-2";
}
