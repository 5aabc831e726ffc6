//! A module of the user's named `txmsg` must not capture the generated paths.

mod orders {
    #[allow(dead_code)]
    mod txmsg {
        pub struct Tx;
        pub struct Error;
        pub mod __private {}
    }

    #[derive(serde::Serialize)]
    pub(crate) struct OrderPlaced {
        pub(crate) id: i64,
    }

    #[::txmsg::transactional_message(topic = "orders.placed", key = id)]
    pub(crate) async fn place_order(
        tx: &mut ::txmsg::Tx<'_, sqlx::Sqlite>,
        id: i64,
    ) -> Result<OrderPlaced, ::txmsg::Error> {
        sqlx::query("INSERT INTO orders (id) VALUES (?)")
            .bind(id)
            .execute(&mut **tx)
            .await?;
        Ok(OrderPlaced { id })
    }
}

async fn run(outbox: &txmsg::Outbox<sqlx::Sqlite>) -> txmsg::Result<i64> {
    Ok(orders::place_order_and_commit(outbox, 7).await?.id)
}

fn main() {
    let _ = run;
}
