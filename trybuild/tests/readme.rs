//! The README's Rust snippets compile.
//!
//! Each ```rust block of `README.md` is built as a program: its items at
//! module level, its statements (from the first top-level `let` on) in an
//! async function, with the context the README leaves out (domain types, a
//! store, a relay) written here. The README stays as a reader sees it; a
//! snippet that stops compiling fails this test.

use std::fmt::Write as _;
use std::path::PathBuf;

/// Context of each snippet, in README order: what goes before its items,
/// and the parameters its statements may use.
struct Context {
    /// Snippets whose items this one builds on (by index).
    after: &'static [usize],
    items: &'static str,
    params: &'static str,
}

const CONTEXTS: [Context; 4] = [
    // `#[transactional_message]` on a PostgreSQL transaction.
    Context {
        after: &[],
        items: "",
        params: "",
    },
    // Wiring: store, broker, relay, outbox.
    Context {
        after: &[0],
        items: "",
        params: "",
    },
    // Half messages.
    Context {
        after: &[],
        items: r#"
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct PaymentCaptured { order_id: i64, payment_id: String, amount_cents: i64 }
#[derive(Debug, thiserror::Error)]
enum PayError {
    #[error(transparent)]
    Txmsg(#[from] txmsg::Error),
    #[error("declined")]
    Declined,
}
enum Status { Captured, Declined, NotFound, Processing }
struct PaymentApi;
impl PaymentApi {
    async fn charge(&self, _: &str, _: i64) -> Result<(), PayError> { Err(PayError::Declined) }
    async fn status(&self, _: &str) -> Result<Status, PayError> { Ok(Status::Processing) }
}
static API: PaymentApi = PaymentApi;
"#,
        params: "store: txmsg::postgres::PgStore, relay: txmsg::RelayHandle, \
                 payment: PaymentCaptured, api: PaymentApi",
    },
    // A consumer group.
    Context {
        after: &[],
        items: "",
        params: "store: txmsg::postgres::PgStore, broker: txmsg::rabbitmq::RabbitBroker",
    },
];

/// The ```rust blocks of the README.
fn snippets() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("read README.md");
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in readme.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```rust") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

/// A snippet's items (before its first top-level `let`, and the comment
/// lines right above it) and its statements.
fn split(snippet: &str) -> (String, String) {
    let lines: Vec<&str> = snippet.lines().collect();
    let Some(mut first) = lines.iter().position(|l| l.starts_with("let ")) else {
        return (snippet.to_owned(), String::new());
    };
    while first > 0 && lines[first - 1].starts_with("//") {
        first -= 1;
    }
    (lines[..first].join("\n"), lines[first..].join("\n"))
}

#[test]
fn readme_snippets_compile() {
    let snippets = snippets();
    assert_eq!(
        snippets.len(),
        CONTEXTS.len(),
        "a README snippet was added or removed: give it its context here"
    );
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("readme");
    std::fs::create_dir_all(&dir).expect("create the snippets' folder");
    let t = trybuild::TestCases::new();
    for (i, (snippet, context)) in snippets.iter().zip(&CONTEXTS).enumerate() {
        let mut program = String::from(
            "#![allow(dead_code, unused_imports, unused_variables, unreachable_code)]\n\
             use txmsg::sqlx;\n",
        );
        for before in context.after {
            program.push_str(&split(&snippets[*before]).0);
            program.push('\n');
        }
        program.push_str(context.items);
        let (items, statements) = split(snippet);
        program.push_str(&items);
        let _ = write!(
            program,
            "\nasync fn snippet({}) -> Result<(), Box<dyn std::error::Error>> {{\n{statements}\nOk(())\n}}\n\
             fn main() {{}}\n",
            context.params
        );
        let path = dir.join(format!("readme_{i}.rs"));
        std::fs::write(&path, program).expect("write a snippet");
        t.pass(&path);
    }
}
