//! What the claims of the SQL stores share: reading the heads a claim
//! found.

use txmsg_core::Result;
use uuid::Uuid;

use crate::dialect::{Dialect, SqlRow};

/// The heads a claim found, each the first claimable row of its key (or a
/// row without a key): every head's id in the order found, and the keyed
/// heads, whose followers the claim looks for next.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Heads {
    /// Every head's id.
    pub ids: Vec<Uuid>,
    /// The heads with a key: (id, topic, key).
    pub keyed: Vec<(Uuid, String, String)>,
}

impl Heads {
    /// The heads in `rows`, which have the columns `id`, `topic` and `key`.
    ///
    /// # Errors
    ///
    /// [`txmsg_core::Error::Database`] if a column is missing or holds
    /// something else.
    pub fn read<D: Dialect>(rows: &[SqlRow<D>]) -> Result<Self> {
        let mut heads = Heads {
            ids: Vec::with_capacity(rows.len()),
            keyed: Vec::new(),
        };
        for row in rows {
            let id = D::id(row, "id")?;
            heads.ids.push(id);
            if let Some(key) = D::text(row, "key")? {
                let topic = D::text(row, "topic")?.unwrap_or_default();
                heads.keyed.push((id, topic, key));
            }
        }
        Ok(heads)
    }

    /// The heads in `rows`, as [`read`](Self::read), with how many
    /// followers a claim of at most `limit` rows can take after them;
    /// `None` when there are none (the claim has nothing to take).
    ///
    /// # Errors
    ///
    /// As [`read`](Self::read).
    pub fn read_some<D: Dialect>(rows: &[SqlRow<D>], limit: u32) -> Result<Option<(Self, usize)>> {
        if rows.is_empty() {
            return Ok(None);
        }
        let heads = Self::read::<D>(rows)?;
        let budget = heads.budget(limit);
        Ok(Some((heads, budget)))
    }

    /// How many followers a claim of at most `limit` rows can take after
    /// these heads.
    pub fn budget(&self, limit: u32) -> usize {
        usize::try_from(limit)
            .unwrap_or(usize::MAX)
            .saturating_sub(self.ids.len())
    }
}
