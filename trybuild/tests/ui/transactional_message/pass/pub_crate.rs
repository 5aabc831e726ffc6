//! The generated function has the visibility of the annotated one.

mod orders {
    use txmsg::{Tx, transactional_message};

    #[derive(serde::Serialize)]
    pub(crate) struct OrderPlaced {
        pub(crate) id: i64,
    }

    #[transactional_message(topic = "orders.placed")]
    pub(crate) async fn place_order(
        tx: &mut Tx<'_, sqlx::Sqlite>,
        id: i64,
    ) -> Result<OrderPlaced, txmsg::Error> {
        sqlx::query("INSERT INTO orders (id) VALUES (?)")
            .bind(id)
            .execute(&mut **tx)
            .await?;
        Ok(OrderPlaced { id })
    }

    pub(crate) mod billing {
        use txmsg::{Tx, transactional_message};

        #[transactional_message(topic = "billing.charged")]
        pub(in crate::orders) async fn charge(
            tx: &mut Tx<'_, sqlx::Sqlite>,
            cents: i64,
        ) -> Result<i64, txmsg::Error> {
            let _ = tx;
            Ok(cents)
        }
    }

    pub(crate) async fn checkout(outbox: &txmsg::Outbox<sqlx::Sqlite>) -> txmsg::Result<()> {
        billing::charge_and_commit(outbox, 100).await?;
        Ok(())
    }
}

async fn run(outbox: &txmsg::Outbox<sqlx::Sqlite>) -> txmsg::Result<()> {
    orders::place_order_and_commit(outbox, 1).await?;
    let mut tx = outbox.begin().await?;
    orders::place_order(&mut tx, 2).await?;
    tx.commit().await?;
    orders::checkout(outbox).await
}

fn main() {
    let _ = run;
}
