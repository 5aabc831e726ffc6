//! `key` and `idempotency_key` are evaluated before the body, which may then
//! move the parameters they read.
use txmsg::{Tx, transactional_message};

#[derive(serde::Serialize)]
struct CustomerRegistered {
    email: String,
    name: String,
}

#[transactional_message(
    topic = "customers.registered",
    key = email,
    idempotency_key = format!("{email}/{}", name.len()),
)]
async fn register(
    tx: &mut Tx<'_, sqlx::Sqlite>,
    email: String,
    name: String,
) -> Result<CustomerRegistered, txmsg::Error> {
    sqlx::query("INSERT INTO customers (email, name) VALUES (?, ?)")
        .bind(&email)
        .bind(&name)
        .execute(&mut **tx)
        .await?;
    Ok(CustomerRegistered { email, name })
}

// Borrowed parameters work too, and keys may be any `Display` type.
#[transactional_message(topic = "customers.renamed", key = email, idempotency_key = version)]
async fn rename(
    tx: &mut Tx<'_, sqlx::Sqlite>,
    email: &str,
    name: String,
    version: u64,
) -> Result<CustomerRegistered, txmsg::Error> {
    let _ = tx;
    let _ = version;
    Ok(CustomerRegistered {
        email: email.to_owned(),
        name,
    })
}

async fn run(outbox: &txmsg::Outbox<sqlx::Sqlite>) -> txmsg::Result<()> {
    let email = String::from("ada@example.com");
    register_and_commit(outbox, email.clone(), "Ada".into()).await?;
    rename_and_commit(outbox, &email, "Ada L.".into(), 2).await?;
    Ok(())
}

fn main() {
    let _ = run;
}
