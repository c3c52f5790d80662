//! A user's cart: order items not yet in an order.

use super::{
    ChangeSet, CommandResult, MAX_CART_LINES, NotApplied, WriteTables, check_quantity,
    does_not_exist,
};
use crate::command::{CommandOutcome, Rejection};
use crate::model::{Id, OrderItem, Timestamp};

pub(super) fn add_order_item(
    t: &mut WriteTables<'_>,
    user: Id,
    product: Id,
    quantity: u32,
    at: Timestamp,
    changes: &mut ChangeSet,
) -> CommandResult {
    if t.user(user)?.is_none() {
        return Err(Rejection::NotFound.into());
    }
    check_quantity("quantity", quantity)?;
    if t.product_on_sale(product)?.is_none() {
        return Err(does_not_exist("product", product).into());
    }
    if t.cart_lines(user)? >= MAX_CART_LINES {
        return Err(Rejection::Invalid {
            field: "product",
            message: format!(
                "The cart is full ({MAX_CART_LINES} lines): order or remove some lines first."
            ),
        }
        .into());
    }
    let item = OrderItem {
        id: t.next_id("order_item")?,
        product,
        quantity,
        user,
        order: None,
        unit_price: None,
        product_name: None,
        created_at: at,
    };
    t.put_order_item(&item)?;
    t.order_items_by_user.insert((user, item.id), ())?;
    t.cart_lines_by_product.insert((product, item.id), ())?;
    t.count_cart_line(user, true)?;
    changes.users.insert(user);
    Ok(CommandOutcome::OrderItem(item))
}

/// The cart line `id` if `actor` owns it and no order has taken it yet.
pub(super) fn own_cart_line(
    t: &WriteTables<'_>,
    actor: Id,
    id: Id,
) -> Result<OrderItem, NotApplied> {
    match t.order_item(id)? {
        Some(item) if item.user == actor => {
            if item.order.is_some() {
                Err(Rejection::ItemAlreadyOrdered.into())
            } else {
                Ok(item)
            }
        }
        _ => Err(Rejection::NotFound.into()),
    }
}

pub(super) fn update_order_item(
    t: &mut WriteTables<'_>,
    actor: Id,
    id: Id,
    quantity: u32,
    changes: &mut ChangeSet,
) -> CommandResult {
    let mut item = own_cart_line(t, actor, id)?;
    check_quantity("quantity", quantity)?;
    item.quantity = quantity;
    t.put_order_item(&item)?;
    changes.users.insert(item.user);
    Ok(CommandOutcome::OrderItem(item))
}

pub(super) fn delete_order_item(
    t: &mut WriteTables<'_>,
    actor: Id,
    id: Id,
    changes: &mut ChangeSet,
) -> CommandResult {
    let item = own_cart_line(t, actor, id)?;
    t.order_items.remove(id)?;
    t.order_items_by_user.remove((item.user, id))?;
    t.cart_lines_by_product.remove((item.product, id))?;
    t.count_cart_line(item.user, false)?;
    changes.users.insert(item.user);
    Ok(CommandOutcome::Done)
}

#[cfg(test)]
mod tests {
    use rust_decimal::Decimal;

    use super::*;
    use crate::apply::tests::*;
    use crate::command::{Command, ProductChanges};

    #[test]
    fn cart_lines_show_live_names_and_orders_freeze_them() {
        let s = shop();
        s.apply(product("Guitar", 5, 1000, 1)).unwrap();
        let cart_line = created_id(s.apply(add_to_cart(ALICE, 1, 1)));
        let ordered_line = created_id(s.apply(add_to_cart(ALICE, 1, 2)));
        let (o, _) = placed(s.apply(cart_order(ALICE, &[ordered_line])));
        s.apply(Command::UpdateProduct {
            id: 1,
            changes: ProductChanges {
                name: Some("Bass".into()),
                price: Some(Decimal::new(1, 0)),
                ..Default::default()
            },
        })
        .unwrap();
        let reader = s.store.read().unwrap();
        let cart = reader.order_item(cart_line).unwrap().unwrap();
        assert_eq!(cart.product_name, "Bass");
        assert_eq!(cart.item.unit_price, None);
        let ordered = reader.order_item(ordered_line).unwrap().unwrap();
        assert_eq!(ordered.product_name, "Guitar");
        assert_eq!(ordered.item.order, Some(o.id));
        assert_eq!(ordered.item.unit_price, Some(Decimal::new(1000, 2)));
        assert_eq!(o.total, Decimal::new(2000, 2));
    }

    #[test]
    fn a_cart_holds_at_most_max_cart_lines_and_frees_them_as_lines_leave() {
        let s = shop();
        assert_eq!(created_id(s.apply(product("Amp", 5, 1000, 1))), 1);
        for _ in 0..MAX_CART_LINES {
            assert!(s.apply(add_to_cart(ALICE, 1, 1)).is_ok());
        }
        assert!(matches!(
            s.apply(add_to_cart(ALICE, 1, 1)),
            Err(Rejection::Invalid {
                field: "product",
                ..
            })
        ));
        assert!(
            s.apply(add_to_cart(BOB, 1, 1)).is_ok(),
            "other carts are not full"
        );
        // Deleting a line frees a place.
        let first = s
            .store
            .read()
            .unwrap()
            .order_items(Some(ALICE), 0, 1)
            .unwrap()
            .items[0]
            .item
            .id;
        assert!(
            s.apply(Command::DeleteOrderItem {
                actor: ALICE,
                id: first
            })
            .is_ok()
        );
        assert!(s.apply(add_to_cart(ALICE, 1, 1)).is_ok());
        assert!(s.apply(add_to_cart(ALICE, 1, 1)).is_err());
    }
}
