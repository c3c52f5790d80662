//! Property tests of stock, over random but plausible command sequences (see `model`):
//!
//! - conservation: without admin stock edits, created stock = current stock + what the
//!   orders hold (placed, paid, shipped or delivered: every one not cancelled);
//! - an order asking for more than the stock of a product, summed over its lines, is refused
//!   with exactly that sum.

mod model;

use std::collections::BTreeMap;

use proptest::prelude::*;
use rust_decimal::Decimal;
use store::{
    Command, CommandOutcome, Id, NewProduct, OrderLine, OrderLines, OrderStatus, Rejection,
    StockShortage,
};

use model::generate::new_user;
use model::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// With stock set only when products are created, it is all accounted for: what is on
    /// the shelf plus what placed orders hold is what was created.
    #[test]
    fn stock_is_conserved(commands in commands(false, 60), cuts in cuts()) {
        let s = TestStore::new();
        let mut created: BTreeMap<Id, u32> = BTreeMap::new();
        for batch in batches(&commands, &cuts) {
            let (answers, _) = s.apply(batch);
            for answer in answers {
                if let Ok(CommandOutcome::Product(p)) = answer {
                    created.entry(p.id).or_insert(p.stock);
                }
            }
        }
        let reader = s.store.read().unwrap();
        let mut held: BTreeMap<Id, u64> = BTreeMap::new();
        for view in reader.all_orders().unwrap() {
            prop_assert_eq!(view.items.len(), view.order.items.len());
            if view.order.status != OrderStatus::Cancelled {
                for item in &view.items {
                    *held.entry(item.item.product).or_default() += u64::from(item.item.quantity);
                }
            }
        }
        let products = reader.all_products().unwrap();
        for p in &products {
            let held = held.get(&p.id).copied().unwrap_or(0);
            prop_assert_eq!(
                u64::from(created[&p.id]),
                u64::from(p.stock) + held,
                "product {} ({:?})", p.id, p
            );
        }
        // Products that are gone were never ordered.
        for product in held.keys() {
            prop_assert!(products.iter().any(|p| p.id == *product));
        }
    }
}

/// An order for product 1 (stock `stock`) in `parts` lines, mixed with lines for product 2,
/// which always has enough, at the given positions.
#[derive(Debug, Clone)]
struct ShortOrder {
    stock: u32,
    parts: Vec<u32>,
    others: Vec<(prop::sample::Index, u32)>,
    from_cart: bool,
}

fn short_order() -> impl Strategy<Value = ShortOrder> {
    (
        prop::collection::vec(1..=6u32, 1..=5),
        any::<prop::sample::Index>(),
        prop::collection::vec((any::<prop::sample::Index>(), 1..=3u32), 0..=3),
        any::<bool>(),
    )
        .prop_map(|(parts, below, others, from_cart)| {
            let sum: u32 = parts.iter().sum();
            // Anything from 0 to sum - 1.
            let stock = below.index(sum as usize) as u32;
            ShortOrder {
                stock,
                parts,
                others,
                from_cart,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Lines of one product are added up: more than the stock in all is refused, naming
    /// the product, the sum and the stock; exactly the stock is fine.
    #[test]
    fn an_order_beyond_stock_is_refused_with_the_sum(order in short_order()) {
        let s = TestStore::new();
        let setup = [
            Command::CreateCategory { name: "Rock".into() },
            new_user("alice", false),
            Command::CreateProduct(NewProduct {
                name: "Short".into(),
                stock: order.stock,
                price: Decimal::new(250, 2),
                description: String::new(),
                category: 1,
            }),
            Command::CreateProduct(NewProduct {
                name: "Plenty".into(),
                stock: 100,
                price: Decimal::ONE,
                description: String::new(),
                category: 1,
            }),
        ];
        prop_assert!(s.apply(&setup).0.iter().all(Result::is_ok));

        let mut lines: Vec<(Id, u32)> = order.parts.iter().map(|&q| (1, q)).collect();
        for (position, quantity) in &order.others {
            let at = position.index(lines.len() + 1);
            lines.insert(at, (2, *quantity));
        }
        let place = |lines: &[(Id, u32)]| -> Command {
            let lines = if order.from_cart {
                let adds: Vec<Command> = lines
                    .iter()
                    .map(|&(product, quantity)| Command::AddOrderItem {
                        user: 1,
                        product,
                        quantity,
                        at: 0,
                    })
                    .collect();
                let ids = s
                    .apply(&adds)
                    .0
                    .into_iter()
                    .map(|a| match a {
                        Ok(CommandOutcome::OrderItem(item)) => item.id,
                        other => panic!("cart line not added: {other:?}"),
                    })
                    .collect();
                OrderLines::CartItems(ids)
            } else {
                OrderLines::Products(
                    lines
                        .iter()
                        .map(|&(product, quantity)| OrderLine { product, quantity })
                        .collect(),
                )
            };
            Command::PlaceOrder { user: 1, lines, idempotency_key: None, at: 1 }
        };

        let command = place(&lines);
        let before = s.digest();
        let (answers, _) = s.apply(std::slice::from_ref(&command));
        let requested: u32 = order.parts.iter().sum();
        let expected = Rejection::InsufficientStock(vec![StockShortage {
            product: 1,
            requested: u64::from(requested),
            available: order.stock,
        }]);
        prop_assert_eq!(&answers[0], &Err(expected));
        prop_assert_eq!(s.digest(), before);

        // Taking exactly the stock works and empties the shelf.
        if order.stock > 0 {
            let mut exact = lines.clone();
            exact.retain(|&(product, _)| product == 2);
            exact.push((1, order.stock));
            let (answers, _) = s.apply(&[place(&exact)]);
            let placed = matches!(&answers[0], Ok(CommandOutcome::Order { replayed: false, .. }));
            prop_assert!(placed, "{:?}", answers);
            let reader = s.store.read().unwrap();
            prop_assert_eq!(reader.product(1).unwrap().unwrap().stock, 0);
        }
    }
}
