//! A statement of a store, with how the arguments of a call fill its
//! placeholders.

use std::fmt;
use std::sync::Arc;

use sqlx::SqlStr;
use txmsg_core::Result;

use crate::dialect::{Arg, Conn, Dialect, SqlQuery, SqlRow};

/// One statement of a store, run with the arguments of a call in the order
/// the shared layer documents for it (its *logical* order).
///
/// A database whose placeholders are numbered (`$1`, `?1`) usually writes
/// them in the logical order. Where its text needs another order, or a value
/// twice (positional `?` placeholders), [`bind_order`](Stmt::bind_order)
/// says which argument fills each placeholder. An [`Arg::Ids`] list is
/// bound as one array where the database has arrays
/// ([`Dialect::bind_ids`]), or spread over a list of placeholders when the
/// statement is an [`IdList`].
#[derive(Clone)]
pub struct Stmt {
    text: Text,
    order: Option<Arc<[usize]>>,
}

#[derive(Clone)]
enum Text {
    Fixed(SqlStr),
    Ids(Arc<IdList>),
}

impl fmt::Debug for Stmt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Stmt");
        match &self.text {
            Text::Fixed(sql) => s.field("sql", &sql.as_str()),
            Text::Ids(list) => s.field("id_list", list),
        };
        s.field("order", &self.order).finish()
    }
}

impl Stmt {
    /// A statement whose placeholders take the arguments in their logical
    /// order.
    pub fn new(sql: SqlStr) -> Self {
        Stmt {
            text: Text::Fixed(sql),
            order: None,
        }
    }

    /// A statement with a list of id placeholders, prepared for a few list
    /// lengths.
    pub fn id_list(list: IdList) -> Self {
        Stmt {
            text: Text::Ids(Arc::new(list)),
            order: None,
        }
    }

    /// The same statement, its placeholders bound in text order from the
    /// arguments at `order` (indexes into the logical order; one may repeat).
    #[must_use]
    pub fn bind_order(mut self, order: &[usize]) -> Self {
        self.order = Some(order.into());
        self
    }

    /// The statement's text (for an id list, its longest form), for logs and
    /// tests.
    pub fn as_str(&self) -> &str {
        match &self.text {
            Text::Fixed(sql) => sql.as_str(),
            Text::Ids(list) => list.largest.1.as_str(),
        }
    }

    /// The most ids one execution binds; longer lists are cut into chunks.
    pub fn ids_per_statement(&self) -> usize {
        match &self.text {
            Text::Fixed(_) => usize::MAX,
            Text::Ids(list) => list.largest(),
        }
    }

    fn query<'q, D: Dialect>(&self, args: &[Arg<'_>]) -> SqlQuery<'q, D> {
        let ids = args.iter().find_map(|arg| match arg {
            Arg::Ids(ids) => Some(ids.len()),
            _ => None,
        });
        let (sql, size) = match &self.text {
            Text::Fixed(sql) => (sql, None),
            Text::Ids(list) => {
                let (sql, size) = list.for_len(ids.unwrap_or(0));
                (sql, Some(size))
            }
        };
        let bind = |query: SqlQuery<'q, D>, arg: &Arg<'_>| match (arg, size) {
            (Arg::Ids(ids), Some(size)) => {
                // Padded to the prepared length with the last id: an id list
                // means "any of these", so a repeat changes nothing.
                let Some(last) = ids.last() else {
                    return query;
                };
                (0..size).fold(query, |q, i| {
                    D::bind(q, Arg::Id(*ids.get(i).unwrap_or(last)))
                })
            }
            (Arg::Ids(ids), None) => D::bind_ids(query, ids),
            (arg, _) => D::bind(query, *arg),
        };
        let query = sqlx::query(sql.clone());
        match &self.order {
            None => args.iter().fold(query, bind),
            // An index past the arguments binds nothing; the database then
            // reports the missing parameter.
            Some(order) => order.iter().filter_map(|&i| args.get(i)).fold(query, bind),
        }
    }

    /// Runs the statement with `args` on `conn`; how many rows it changed.
    ///
    /// # Errors
    ///
    /// [`txmsg_core::Error::Database`] if the statement failed.
    pub async fn execute<D: Dialect>(&self, conn: &mut Conn<D>, args: &[Arg<'_>]) -> Result<u64> {
        let done = self.query::<D>(args).execute(D::executor(conn)).await?;
        Ok(D::rows_affected(&done))
    }

    /// Runs the statement with `args` on `conn`; every row.
    ///
    /// # Errors
    ///
    /// [`txmsg_core::Error::Database`] if the statement failed.
    pub async fn fetch_all<D: Dialect>(
        &self,
        conn: &mut Conn<D>,
        args: &[Arg<'_>],
    ) -> Result<Vec<SqlRow<D>>> {
        Ok(self.query::<D>(args).fetch_all(D::executor(conn)).await?)
    }

    /// Runs the statement with `args` on `conn`; its first row, if any.
    ///
    /// # Errors
    ///
    /// [`txmsg_core::Error::Database`] if the statement failed.
    pub async fn fetch_optional<D: Dialect>(
        &self,
        conn: &mut Conn<D>,
        args: &[Arg<'_>],
    ) -> Result<Option<SqlRow<D>>> {
        Ok(self
            .query::<D>(args)
            .fetch_optional(D::executor(conn))
            .await?)
    }
}

impl From<SqlStr> for Stmt {
    fn from(sql: SqlStr) -> Self {
        Stmt::new(sql)
    }
}

/// The prepared forms of one statement with a list of id placeholders, one
/// per list length it is prepared for.
///
/// A list is cut into chunks of at most the largest length, and a chunk is
/// padded (by repeating its last id) up to the next length, so a handful of
/// prepared statements serve every batch and the database's statement cache
/// stays small.
pub struct IdList {
    /// (length, statement) below the largest, shortest first.
    smaller: Vec<(usize, SqlStr)>,
    /// The largest length and its statement.
    largest: (usize, SqlStr),
}

impl fmt::Debug for IdList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.smaller.iter().map(|(n, _)| n))
            .entry(&self.largest.0)
            .finish()
    }
}

impl IdList {
    /// The list lengths a statement is prepared for by default; the largest
    /// stays far below every database's parameter limit.
    pub const SIZES: [usize; 4] = [1, 16, 128, 512];

    /// The statement for each of `sizes` (lengths of zero are left out; none
    /// left means one), as `render(n)` writes it for a list of `n`
    /// placeholders.
    pub fn new(sizes: &[usize], render: impl Fn(usize) -> SqlStr) -> Self {
        let mut sizes: Vec<usize> = sizes.iter().copied().filter(|n| *n > 0).collect();
        sizes.sort_unstable();
        sizes.dedup();
        let largest = sizes.pop().unwrap_or(1);
        IdList {
            smaller: sizes.into_iter().map(|n| (n, render(n))).collect(),
            largest: (largest, render(largest)),
        }
    }

    /// The most ids one statement takes.
    pub fn largest(&self) -> usize {
        self.largest.0
    }

    /// The statement for a chunk of `len` ids, and how many ids it takes
    /// (the largest form if `len` exceeds every length: callers chunk first).
    pub fn for_len(&self, len: usize) -> (&SqlStr, usize) {
        let (n, sql) = self
            .smaller
            .iter()
            .find(|(n, _)| *n >= len)
            .unwrap_or(&self.largest);
        (sql, *n)
    }
}
