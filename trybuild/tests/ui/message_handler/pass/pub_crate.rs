//! Handlers of any visibility, in nested modules, stay callable as written.

mod billing {
    use txmsg::{Envelope, Tx, message_handler};

    #[derive(serde::Deserialize)]
    pub(crate) struct OrderPlaced {
        pub(crate) id: i64,
    }

    #[message_handler(topic = "orders.placed", group = "billing")]
    pub(crate) async fn bill(
        tx: &mut Tx<'_, sqlx::Sqlite>,
        order: OrderPlaced,
        envelope: &Envelope,
    ) -> Result<(), txmsg::Error> {
        sqlx::query("INSERT INTO invoices (order_id, message) VALUES (?, ?)")
            .bind(order.id)
            .bind(&envelope.idempotency_key)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    pub(crate) mod refunds {
        use txmsg::{Tx, message_handler};

        #[message_handler(topic = "orders.cancelled", group = "billing")]
        pub(in crate::billing) async fn refund(
            tx: &mut Tx<'_, sqlx::Sqlite>,
            id: i64,
        ) -> Result<(), txmsg::Error> {
            let _ = (tx, id);
            Ok(())
        }
    }

    pub(crate) async fn refund(tx: &mut Tx<'_, sqlx::Sqlite>, id: i64) -> txmsg::Result<()> {
        refunds::refund(tx, id).await
    }
}

// Private, and only ever called by the consumer: no `dead_code` warning.
#[txmsg::message_handler(topic = "orders.shipped", group = "billing")]
async fn close(tx: &mut txmsg::Tx<'_, sqlx::Sqlite>, id: i64) -> Result<(), txmsg::Error> {
    let _ = (tx, id);
    Ok(())
}

async fn run(outbox: &txmsg::Outbox<sqlx::Sqlite>, envelope: &txmsg::Envelope) -> txmsg::Result<()> {
    let mut tx = outbox.begin().await?;
    billing::bill(&mut tx, billing::OrderPlaced { id: 1 }, envelope).await?;
    billing::refund(&mut tx, 1).await?;
    tx.commit().await
}

fn main() {
    let _ = run;
}
