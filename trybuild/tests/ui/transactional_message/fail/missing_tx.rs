use txmsg::transactional_message;

#[derive(serde::Serialize)]
struct OrderPlaced {
    id: i64,
}

#[transactional_message(topic = "orders.placed")]
async fn place_order(id: i64) -> Result<OrderPlaced, txmsg::Error> {
    Ok(OrderPlaced { id })
}

#[transactional_message(topic = "orders.placed")]
async fn place_first_order() -> Result<OrderPlaced, txmsg::Error> {
    Ok(OrderPlaced { id: 1 })
}

fn main() {}
