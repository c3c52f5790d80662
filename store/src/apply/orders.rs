//! Orders: placing one (from products or cart lines, stock checked and taken at once,
//! idempotency keys remembered) and cancelling one.

use std::collections::{BTreeMap, BTreeSet};

use redb::ReadableTable;
use rust_decimal::Decimal;

use super::cart::own_cart_line;
use super::{
    ChangeSet, CommandResult, MAX_ORDER_LINES, NotApplied, WriteTables, check_quantity,
    does_not_exist,
};
use crate::command::{CommandOutcome, OrderLine, OrderLines, Rejection, StockShortage};
use crate::model::{Id, Order, OrderItem, OrderStatus, Product, Timestamp};
use crate::tables::{decode, encode};

/// What an idempotency key remembers: the request it was first used with and its order.
#[derive(serde::Serialize, serde::Deserialize)]
struct IdempotencyRecord {
    lines: OrderLines,
    order: Id,
}

/// One order line after validation: the product as it is now, and the cart line it came
/// from, if any.
struct ResolvedLine {
    product: Product,
    quantity: u32,
    cart_item: Option<OrderItem>,
}

/// Checks every line of an order (count, quantities, products on sale, cart lines owned and
/// not yet ordered) and reads each line's product as it is now.
fn resolve_lines(
    t: &WriteTables<'_>,
    user: Id,
    lines: &OrderLines,
) -> Result<Vec<ResolvedLine>, NotApplied> {
    let count = match lines {
        OrderLines::Products(lines) => lines.len(),
        OrderLines::CartItems(ids) => ids.len(),
    };
    let field = match lines {
        OrderLines::Products(_) => "items",
        OrderLines::CartItems(_) => "order_items",
    };
    if count == 0 {
        return Err(Rejection::Invalid {
            field,
            message: "This list may not be empty.".into(),
        }
        .into());
    }
    if count > MAX_ORDER_LINES {
        return Err(Rejection::Invalid {
            field,
            message: format!("Ensure this list has no more than {MAX_ORDER_LINES} elements."),
        }
        .into());
    }
    let mut resolved = Vec::with_capacity(count);
    match lines {
        OrderLines::Products(lines) => {
            for &OrderLine { product, quantity } in lines {
                check_quantity(field, quantity)?;
                let Some(product) = t.product_on_sale(product)? else {
                    return Err(does_not_exist(field, product).into());
                };
                resolved.push(ResolvedLine {
                    product,
                    quantity,
                    cart_item: None,
                });
            }
        }
        OrderLines::CartItems(ids) => {
            let mut seen = BTreeSet::new();
            for &id in ids {
                if !seen.insert(id) {
                    return Err(Rejection::Invalid {
                        field,
                        message: format!("Order item {id} is listed more than once."),
                    }
                    .into());
                }
                let item = match own_cart_line(t, user, id) {
                    Ok(item) => item,
                    Err(NotApplied::Rejected(Rejection::ItemAlreadyOrdered)) => {
                        return Err(Rejection::Invalid {
                            field,
                            message: format!("Order item {id} is already part of an order."),
                        }
                        .into());
                    }
                    Err(NotApplied::Rejected(_)) => return Err(does_not_exist(field, id).into()),
                    Err(storage @ NotApplied::Storage(_)) => return Err(storage),
                };
                let Some(product) = t.product_on_sale(item.product)? else {
                    return Err(does_not_exist(field, id).into());
                };
                resolved.push(ResolvedLine {
                    product,
                    quantity: item.quantity,
                    cart_item: Some(item),
                });
            }
        }
    }
    Ok(resolved)
}

pub(super) fn place_order(
    t: &mut WriteTables<'_>,
    user: Id,
    lines: &OrderLines,
    idempotency_key: Option<&str>,
    at: Timestamp,
    changes: &mut ChangeSet,
) -> CommandResult {
    if let Some(key) = idempotency_key {
        let earlier = t
            .idempotency
            .get((user, key))?
            .map(|v| decode::<IdempotencyRecord>(v.value()))
            .transpose()?;
        if let Some(record) = earlier {
            if record.lines != *lines {
                return Err(Rejection::IdempotencyMismatch.into());
            }
            let Some(order) = t.order(record.order)? else {
                return Err(Rejection::NotFound.into());
            };
            return Ok(CommandOutcome::Order {
                order,
                replayed: true,
            });
        }
    }
    if t.user(user)?.is_none() {
        return Err(Rejection::NotFound.into());
    }
    let resolved = resolve_lines(t, user, lines)?;

    // Stock is checked per product, with the quantities of all its lines added up.
    let mut wanted: BTreeMap<Id, (u64, u32)> = BTreeMap::new();
    for line in &resolved {
        let entry = wanted
            .entry(line.product.id)
            .or_insert((0, line.product.stock));
        entry.0 += u64::from(line.quantity);
    }
    let shortages: Vec<StockShortage> = wanted
        .iter()
        .filter(|(_, (requested, available))| *requested > u64::from(*available))
        .map(|(&product, &(requested, available))| StockShortage {
            product,
            requested,
            available,
        })
        .collect();
    if !shortages.is_empty() {
        return Err(Rejection::InsufficientStock(shortages).into());
    }
    // Decimal arithmetic panics on overflow, which would take the writer down with it.
    let mut total = Decimal::ZERO;
    for line in &resolved {
        let Some(sum) = line
            .product
            .price
            .checked_mul(Decimal::from(line.quantity))
            .and_then(|amount| total.checked_add(amount))
        else {
            let field = match lines {
                OrderLines::Products(_) => "items",
                OrderLines::CartItems(_) => "order_items",
            };
            return Err(Rejection::Invalid {
                field,
                message: "The order total is too large.".into(),
            }
            .into());
        };
        total = sum;
    }

    // Everything checked: from here on the command only writes.
    let order_id = t.next_id("order")?;
    for (&product_id, &(requested, available)) in &wanted {
        if let Some(mut product) = t.product(product_id)? {
            // requested <= available was checked above, so this fits in u32.
            product.stock = available - requested as u32;
            product.ordered = true;
            t.put_product(&product)?;
            changes.products.insert(product_id);
        }
    }
    let mut item_ids = Vec::with_capacity(resolved.len());
    for line in resolved {
        let item = match line.cart_item {
            Some(mut item) => {
                t.cart_lines_by_product.remove((item.product, item.id))?;
                t.count_cart_line(item.user, false)?;
                item.order = Some(order_id);
                item.unit_price = Some(line.product.price);
                item.product_name = Some(line.product.name.clone());
                item
            }
            None => {
                let id = t.next_id("order_item")?;
                t.order_items_by_user.insert((user, id), ())?;
                OrderItem {
                    id,
                    product: line.product.id,
                    quantity: line.quantity,
                    user,
                    order: Some(order_id),
                    unit_price: Some(line.product.price),
                    product_name: Some(line.product.name.clone()),
                    created_at: at,
                }
            }
        };
        t.put_order_item(&item)?;
        item_ids.push(item.id);
    }
    let order = Order {
        id: order_id,
        user,
        items: item_ids,
        total,
        status: OrderStatus::Placed,
        created_at: at,
    };
    t.put_order(&order)?;
    t.orders_by_user.insert((user, order_id), ())?;
    if let Some(key) = idempotency_key {
        let record = IdempotencyRecord {
            lines: lines.clone(),
            order: order_id,
        };
        t.idempotency
            .insert((user, key), encode(&record)?.as_slice())?;
    }
    changes.users.insert(user);
    Ok(CommandOutcome::Order {
        order,
        replayed: false,
    })
}

pub(super) fn cancel_order(
    t: &mut WriteTables<'_>,
    actor: Id,
    id: Id,
    changes: &mut ChangeSet,
) -> CommandResult {
    let Some(mut order) = t.order(id)? else {
        return Err(Rejection::NotFound.into());
    };
    if order.user != actor {
        let actor_is_staff = t.user(actor)?.is_some_and(|u| u.is_staff);
        if !actor_is_staff {
            return Err(Rejection::NotFound.into());
        }
    }
    if order.status == OrderStatus::Cancelled {
        return Err(Rejection::AlreadyCancelled.into());
    }
    if !order.status.may_become(OrderStatus::Cancelled) {
        return Err(Rejection::StatusChange {
            from: order.status,
            to: OrderStatus::Cancelled,
        }
        .into());
    }
    return_stock(t, &order, changes)?;
    order.status = OrderStatus::Cancelled;
    t.put_order(&order)?;
    changes.users.insert(order.user);
    Ok(CommandOutcome::Order {
        order,
        replayed: false,
    })
}

/// Puts the quantities of a cancelled order's lines back into stock.
pub(super) fn return_stock(
    t: &mut WriteTables<'_>,
    order: &Order,
    changes: &mut ChangeSet,
) -> Result<(), NotApplied> {
    for &item_id in &order.items {
        let Some(item) = t.order_item(item_id)? else {
            continue;
        };
        if let Some(mut product) = t.product(item.product)? {
            product.stock = product.stock.saturating_add(item.quantity);
            t.put_product(&product)?;
            changes.products.insert(product.id);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rust_decimal::Decimal;

    use super::*;
    use crate::apply::MAX_LINE_QUANTITY;
    use crate::apply::tests::*;
    use crate::command::{Command, NewProduct};

    #[test]
    fn orders_from_cart_items() {
        let s = shop();
        s.apply(product("Guitar", 5, 1000, 1)).unwrap();
        s.apply(product("Drum", 5, 250, 1)).unwrap();
        let a = created_id(s.apply(add_to_cart(ALICE, 1, 2)));
        let b = created_id(s.apply(add_to_cart(ALICE, 2, 1)));
        let c = created_id(s.apply(add_to_cart(ALICE, 1, 4)));
        let bobs = created_id(s.apply(add_to_cart(BOB, 2, 1)));

        // Quantities of a cart line can change while it is in the cart.
        let update = Command::UpdateOrderItem {
            actor: ALICE,
            id: a,
            quantity: 3,
        };
        assert!(matches!(s.apply(update), Ok(CommandOutcome::OrderItem(ref i)) if i.quantity == 3));

        let before = s.digest();
        assert_invalid(s.apply(cart_order(ALICE, &[a, a])), "order_items");
        assert_invalid(s.apply(cart_order(ALICE, &[a, bobs])), "order_items");
        assert_invalid(s.apply(cart_order(ALICE, &[99])), "order_items");
        // 3 + 4 guitars from two cart lines exceed the stock of 5.
        assert_eq!(
            s.apply(cart_order(ALICE, &[a, b, c])),
            Err(Rejection::InsufficientStock(vec![StockShortage {
                product: 1,
                requested: 7,
                available: 5,
            }]))
        );
        assert_eq!(s.digest(), before);

        let (o, replayed) = placed(s.apply(cart_order(ALICE, &[b, a])));
        assert!(!replayed);
        assert_eq!(
            o.items,
            [b, a],
            "cart lines keep their ids, in request order"
        );
        assert_eq!(o.total, Decimal::new(3250, 2));
        assert_eq!(s.stock(1), 2);
        assert_eq!(s.stock(2), 4);

        // Ordered lines are no longer cart lines.
        assert_invalid(s.apply(cart_order(ALICE, &[a])), "order_items");
        let update = Command::UpdateOrderItem {
            actor: ALICE,
            id: a,
            quantity: 1,
        };
        assert_eq!(s.apply(update), Err(Rejection::ItemAlreadyOrdered));
        assert_eq!(
            s.apply(Command::DeleteOrderItem {
                actor: ALICE,
                id: b
            }),
            Err(Rejection::ItemAlreadyOrdered)
        );
        // Somebody else's line is not found, whoever asks.
        assert_eq!(
            s.apply(Command::DeleteOrderItem {
                actor: ALICE,
                id: bobs
            }),
            Err(Rejection::NotFound)
        );
        assert_eq!(
            s.apply(Command::DeleteOrderItem {
                actor: BOB,
                id: bobs
            }),
            Ok(CommandOutcome::Done)
        );
        assert_eq!(s.store.read().unwrap().order_item(bobs).unwrap(), None);
        // Deleting the guitar drops alice's remaining guitar cart line `c`.
        s.apply(Command::DeleteProduct { id: 1 }).unwrap();
        assert_eq!(s.store.read().unwrap().order_item(c).unwrap(), None);
        assert!(s.product(1).unwrap().archived);
    }

    #[test]
    fn quantities_and_line_counts_are_bounded() {
        let s = shop();
        s.apply(product("Pick", u32::MAX, 1, 1)).unwrap();
        assert_invalid(s.apply(add_to_cart(ALICE, 1, 0)), "quantity");
        assert_invalid(
            s.apply(add_to_cart(ALICE, 1, MAX_LINE_QUANTITY + 1)),
            "quantity",
        );
        assert!(s.apply(add_to_cart(ALICE, 1, MAX_LINE_QUANTITY)).is_ok());
        assert_eq!(s.apply(add_to_cart(99, 1, 1)), Err(Rejection::NotFound));
        assert_invalid(s.apply(add_to_cart(ALICE, 99, 1)), "product");

        assert_invalid(s.apply(order(ALICE, &[], None)), "items");
        assert_invalid(s.apply(cart_order(ALICE, &[])), "order_items");
        assert_invalid(s.apply(order(ALICE, &[(1, 0)], None)), "items");
        assert_invalid(
            s.apply(order(ALICE, &[(1, MAX_LINE_QUANTITY + 1)], None)),
            "items",
        );
        let too_many = vec![(1, 1); MAX_ORDER_LINES + 1];
        assert_invalid(s.apply(order(ALICE, &too_many, None)), "items");
        assert_eq!(
            s.apply(order(99, &[(1, 1)], None)),
            Err(Rejection::NotFound)
        );

        let most = vec![(1, MAX_LINE_QUANTITY); MAX_ORDER_LINES];
        let (o, _) = placed(s.apply(order(ALICE, &most, None)));
        assert_eq!(o.items.len(), MAX_ORDER_LINES);
        assert_eq!(
            s.stock(1),
            u32::MAX - MAX_LINE_QUANTITY * MAX_ORDER_LINES as u32
        );
    }

    #[test]
    fn insufficient_stock_adds_up_the_lines_of_a_product() {
        let s = shop();
        s.apply(product("Guitar", 5, 1000, 1)).unwrap();
        s.apply(product("Drum", 2, 500, 1)).unwrap();
        s.apply(product("Amp", 9, 500, 1)).unwrap();
        let before = s.digest();
        // Each line alone fits, together they do not; shortages come in product id order.
        assert_eq!(
            s.apply(order(
                ALICE,
                &[(3, 1), (2, 2), (1, 3), (2, 1), (1, 3)],
                None
            )),
            Err(Rejection::InsufficientStock(vec![
                StockShortage {
                    product: 1,
                    requested: 6,
                    available: 5,
                },
                StockShortage {
                    product: 2,
                    requested: 3,
                    available: 2,
                },
            ]))
        );
        assert_eq!(s.digest(), before);
        // Exactly the stock is fine, and leaves zero.
        let (o, _) = placed(s.apply(order(ALICE, &[(1, 2), (2, 2), (1, 3)], None)));
        assert_eq!(o.items.len(), 3);
        assert_eq!(o.total, Decimal::new(6000, 2));
        assert_eq!((s.stock(1), s.stock(2), s.stock(3)), (0, 0, 9));
        assert_eq!(
            s.apply(order(BOB, &[(1, 1)], None)),
            Err(Rejection::InsufficientStock(vec![StockShortage {
                product: 1,
                requested: 1,
                available: 0,
            }]))
        );
    }

    #[test]
    fn idempotency_key_replays_the_order_and_takes_stock_once() {
        let s = shop();
        s.apply(product("Guitar", 5, 1000, 1)).unwrap();
        s.apply(product("Drum", 5, 500, 1)).unwrap();
        let first = order(ALICE, &[(1, 2), (2, 1)], Some("key-1"));
        let (o, replayed) = placed(s.apply(first.clone()));
        assert!(!replayed);
        assert_eq!((s.stock(1), s.stock(2)), (3, 4));
        let after_first = s.digest();

        // The same request again (even at another time) gives the same order, nothing new.
        let mut again = first.clone();
        if let Command::PlaceOrder { at, .. } = &mut again {
            *at = 99;
        }
        let (o2, replayed) = placed(s.apply(again));
        assert!(replayed);
        assert_eq!(o2, o);
        assert_eq!(s.digest(), after_first);

        // The same key with other lines is refused.
        assert_eq!(
            s.apply(order(ALICE, &[(1, 1)], Some("key-1"))),
            Err(Rejection::IdempotencyMismatch)
        );
        assert_eq!(
            s.apply(order(ALICE, &[(2, 1), (1, 2)], Some("key-1"))),
            Err(Rejection::IdempotencyMismatch)
        );
        assert_eq!(s.digest(), after_first);

        // Keys belong to a user: bob's "key-1" is a new order.
        let (bobs, replayed) = placed(s.apply(order(BOB, &[(1, 1)], Some("key-1"))));
        assert!(!replayed);
        assert_ne!(bobs.id, o.id);
        assert_eq!(s.stock(1), 2);

        // Both requests in one batch: the second is a replay of the first.
        let twice = order(ALICE, &[(1, 1)], Some("key-2"));
        let results = s.apply_all(&[twice.clone(), twice]);
        let (a, replayed_a) = placed(results[0].clone());
        let (b, replayed_b) = placed(results[1].clone());
        assert!(!replayed_a && replayed_b);
        assert_eq!(a, b);
        assert_eq!(s.stock(1), 1);

        // A replay of a cancelled order shows it cancelled and places nothing.
        s.apply(cancel(ALICE, o.id)).unwrap();
        let (replay, replayed) = placed(s.apply(first));
        assert!(replayed);
        assert_eq!(replay.status, OrderStatus::Cancelled);
        assert_eq!((s.stock(1), s.stock(2)), (3, 5));
    }

    #[test]
    fn refused_order_does_not_use_up_its_idempotency_key() {
        let s = shop();
        s.apply(product("Guitar", 1, 1000, 1)).unwrap();
        assert!(matches!(
            s.apply(order(ALICE, &[(1, 2)], Some("k"))),
            Err(Rejection::InsufficientStock(_))
        ));
        let (o, replayed) = placed(s.apply(order(ALICE, &[(1, 1)], Some("k"))));
        assert!(!replayed);
        assert_eq!(o.id, 1, "the refused order did not take an id");
    }

    #[test]
    fn cancel_returns_stock_once() {
        let s = shop();
        s.apply(product("Guitar", 5, 1000, 1)).unwrap();
        s.apply(product("Drum", 5, 500, 1)).unwrap();
        let (o, _) = placed(s.apply(order(ALICE, &[(1, 2), (2, 3), (1, 1)], None)));
        assert_eq!((s.stock(1), s.stock(2)), (2, 2));

        let (cancelled, replayed) = placed(s.apply(cancel(ALICE, o.id)));
        assert!(!replayed);
        assert_eq!(cancelled.status, OrderStatus::Cancelled);
        assert_eq!(cancelled.items, o.items);
        assert_eq!((s.stock(1), s.stock(2)), (5, 5));

        let after = s.digest();
        assert_eq!(
            s.apply(cancel(ALICE, o.id)),
            Err(Rejection::AlreadyCancelled)
        );
        assert_eq!(
            s.apply(cancel(CAROL, o.id)),
            Err(Rejection::AlreadyCancelled)
        );
        assert_eq!(s.digest(), after);
        let view = s.store.read().unwrap().order(o.id).unwrap().unwrap();
        assert_eq!(view.order.status, OrderStatus::Cancelled);
    }

    #[test]
    fn only_the_owner_or_staff_can_cancel() {
        let s = shop();
        s.apply(product("Guitar", 5, 1000, 1)).unwrap();
        let (o, _) = placed(s.apply(order(ALICE, &[(1, 2)], None)));
        let before = s.digest();
        assert_eq!(s.apply(cancel(BOB, o.id)), Err(Rejection::NotFound));
        assert_eq!(s.apply(cancel(99, o.id)), Err(Rejection::NotFound));
        assert_eq!(s.apply(cancel(ALICE, 99)), Err(Rejection::NotFound));
        assert_eq!(s.digest(), before);
        assert_eq!(s.stock(1), 3);

        let mut changes = ChangeSet::default();
        let results = s.store.apply_batch(&[cancel(CAROL, o.id)], &mut changes);
        let (cancelled, _) = placed(results.unwrap().pop().unwrap());
        assert_eq!(cancelled.status, OrderStatus::Cancelled);
        assert_eq!(cancelled.user, ALICE);
        // The owner's data changed, not the staff member's.
        assert_eq!(changes.users, BTreeSet::from([ALICE]));
        assert_eq!(changes.products, BTreeSet::from([1]));
        assert_eq!(s.stock(1), 5);
    }

    #[test]
    fn an_order_total_that_overflows_is_refused_not_a_panic() {
        let s = shop();
        s.apply(Command::CreateProduct(NewProduct {
            name: "Priceless".into(),
            stock: 10,
            price: Decimal::MAX,
            description: String::new(),
            category: 1,
        }))
        .unwrap();
        s.apply(product("Pick", 10, 100, 1)).unwrap();
        let before = s.digest();
        assert_invalid(s.apply(order(ALICE, &[(1, 2)], None)), "items");
        assert_invalid(s.apply(order(ALICE, &[(1, 1), (1, 1)], None)), "items");
        let line = created_id(s.apply(add_to_cart(ALICE, 1, 1)));
        let other = created_id(s.apply(add_to_cart(ALICE, 2, 1)));
        let before_cart = s.digest();
        assert_ne!(before, before_cart);
        assert_invalid(s.apply(cart_order(ALICE, &[line, other])), "order_items");
        assert_eq!(s.digest(), before_cart);
        assert_eq!(s.stock(1), 10);
        // One of it still sells.
        let (o, _) = placed(s.apply(order(ALICE, &[(1, 1)], None)));
        assert_eq!(o.total, Decimal::MAX);
    }
}
