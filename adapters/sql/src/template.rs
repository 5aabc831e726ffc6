//! Statements with their values written in as literals, for the scripts
//! that send a transaction's messages with its `COMMIT`: one message of
//! several statements cannot be bound, so each store writes every value as
//! a literal of its own that no input can change.

use crate::dialect::Arg;

/// One part of a template: text as it is, or the argument (in the
/// statement's logical order) a placeholder takes.
#[derive(Debug, Clone)]
enum Part {
    Text(String),
    Arg(usize),
}

/// A statement whose placeholders are filled with literals.
///
/// # Examples
///
/// ```
/// use txmsg_sql::{Arg, Template};
///
/// let t = Template::positional("SELECT ?, ?", Some(&[1, 0]));
/// let mut out = String::new();
/// t.fill(&[Arg::Int(1), Arg::Int(2)], |arg, out| {
///     if let Arg::Int(n) = arg {
///         out.push_str(&n.to_string());
///     }
/// }, &mut out);
/// assert_eq!(out, "SELECT 2, 1");
/// ```
#[derive(Debug, Clone)]
pub struct Template(Vec<Part>);

impl Template {
    /// `text` with numbered placeholders `$1`, `$2`, … (PostgreSQL's),
    /// `$n` taking argument `n - 1`. Only a store's own statement text
    /// belongs here, which has no `$` but in its placeholders.
    pub fn numbered(text: &str) -> Self {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(at) = rest.find('$') {
            let digits = rest[at + 1..]
                .find(|c: char| !c.is_ascii_digit())
                .map_or(rest.len() - at - 1, |n| n);
            match rest[at + 1..at + 1 + digits].parse::<usize>() {
                Ok(n) if n > 0 => {
                    parts.push(Part::Text(rest[..at].to_owned()));
                    parts.push(Part::Arg(n - 1));
                }
                _ => parts.push(Part::Text(rest[..at + 1 + digits].to_owned())),
            }
            rest = &rest[at + 1 + digits..];
        }
        parts.push(Part::Text(rest.to_owned()));
        Template(parts)
    }

    /// `text` with positional `?` placeholders (MySQL's), the `k`-th taking
    /// argument `order[k]` (argument `k` without an order). Only a store's
    /// own statement text belongs here, which has no `?` but its
    /// placeholders.
    pub fn positional(text: &str, order: Option<&[usize]>) -> Self {
        let mut parts = Vec::new();
        for (k, piece) in text.split('?').enumerate() {
            if k > 0 {
                let arg = order.and_then(|o| o.get(k - 1).copied()).unwrap_or(k - 1);
                parts.push(Part::Arg(arg));
            }
            parts.push(Part::Text(piece.to_owned()));
        }
        Template(parts)
    }

    /// Appends the statement to `out` with each placeholder replaced by
    /// `literal` of its argument (`NULL` where `args` has none).
    pub fn fill(
        &self,
        args: &[Arg<'_>],
        literal: impl Fn(&Arg<'_>, &mut String),
        out: &mut String,
    ) {
        for part in &self.0 {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Arg(n) => match args.get(*n) {
                    Some(arg) => literal(arg, out),
                    None => out.push_str("NULL"),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(arg: &Arg<'_>, out: &mut String) {
        if let Arg::Int(n) = arg {
            out.push_str(&n.to_string());
        }
    }

    #[test]
    fn numbered_placeholders_take_their_arguments() {
        let t = Template::numbered("SELECT $2, $1, $10, $, $0");
        let args: Vec<Arg<'_>> = (1..=10).map(Arg::Int).collect();
        let mut out = String::new();
        t.fill(&args, int, &mut out);
        assert_eq!(out, "SELECT 2, 1, 10, $, $0");
    }

    #[test]
    fn positional_placeholders_follow_the_order() {
        let t = Template::positional("? ? ?", Some(&[2, 0, 2]));
        let mut out = String::new();
        t.fill(&[Arg::Int(1), Arg::Int(2), Arg::Int(3)], int, &mut out);
        assert_eq!(out, "3 1 3");
        let mut out = String::new();
        Template::positional("? ?", None).fill(&[Arg::Int(7)], int, &mut out);
        assert_eq!(out, "7 NULL");
    }
}
