//! An order's way through its statuses: placed → paid → shipped → delivered, or cancelled
//! from placed or paid. Staff move orders; an owner may only cancel their own placed order.
//! Stock comes back only on cancel. When (and by whom) each status was reached is kept in
//! `order_status_changes`.

use redb::ReadableTable;

use super::orders::return_stock;
use super::{ChangeSet, CommandResult, WriteTables};
use crate::command::{CommandOutcome, Rejection};
use crate::model::{Id, OrderStatus, Timestamp};

pub(super) fn set_order_status(
    t: &mut WriteTables<'_>,
    actor: Id,
    id: Id,
    status: OrderStatus,
    at: Timestamp,
    changes: &mut ChangeSet,
) -> CommandResult {
    let Some(mut order) = t.order(id)? else {
        return Err(Rejection::NotFound.into());
    };
    let actor_is_staff = t.user(actor)?.is_some_and(|u| u.is_staff);
    // Another user's order does not exist for a customer.
    if !actor_is_staff && order.user != actor {
        return Err(Rejection::NotFound.into());
    }
    if status == OrderStatus::Cancelled && order.status == OrderStatus::Cancelled {
        return Err(Rejection::AlreadyCancelled.into());
    }
    // Their own order a customer may only cancel, and only before it is paid.
    if !actor_is_staff && (status != OrderStatus::Cancelled || order.status != OrderStatus::Placed)
    {
        return Err(Rejection::Forbidden.into());
    }
    if !order.status.may_become(status) {
        return Err(Rejection::StatusChange {
            from: order.status,
            to: status,
        }
        .into());
    }

    // Everything checked: from here on the command only writes.
    if status == OrderStatus::Cancelled {
        return_stock(t, &order, changes)?;
    }
    order.status = status;
    t.put_order(&order)?;
    t.order_status_changes
        .insert((order.id, status.code()), (at, actor))?;
    changes.users.insert(order.user);
    Ok(CommandOutcome::Order {
        order,
        replayed: false,
    })
}

/// The recorded status changes of order `id`, in the order an order goes through them.
pub(crate) fn recorded_changes(
    table: &impl ReadableTable<(u64, u8), (i64, u64)>,
    id: Id,
) -> Result<Vec<crate::model::StatusChange>, crate::error::StoreError> {
    let mut found = Vec::new();
    for entry in table.range((id, 0)..=(id, u8::MAX))? {
        let (key, value) = entry?;
        let (_, code) = key.value();
        let (at, actor) = value.value();
        if let Some(status) = OrderStatus::from_code(code) {
            found.push(crate::model::StatusChange {
                status,
                at,
                actor,
                actor_name: String::new(),
            });
        }
    }
    found.sort_by_key(|change| change.at);
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::tests::*;
    use crate::command::Command;

    const CAROL_STAFF: Id = CAROL;

    fn set(actor: Id, id: Id, status: OrderStatus, at: Timestamp) -> Command {
        Command::SetOrderStatus {
            actor,
            id,
            status,
            at,
        }
    }

    fn status_of(s: &TestStore, id: Id) -> OrderStatus {
        s.store
            .read()
            .unwrap()
            .order(id)
            .unwrap()
            .unwrap()
            .order
            .status
    }

    /// placed → paid → shipped → delivered by staff, each time kept; no step skipped or
    /// taken back; stock is taken once, at the order, and never returned on the way.
    #[test]
    fn staff_move_an_order_forward_one_step_at_a_time() {
        let s = shop();
        s.apply(product("Guitar", 5, 1000, 1)).unwrap();
        let (o, _) = placed(s.apply(order(ALICE, &[(1, 2)], None)));
        assert_eq!(s.stock(1), 3);

        let before = s.digest();
        for wrong in [
            OrderStatus::Shipped,
            OrderStatus::Delivered,
            OrderStatus::Placed,
        ] {
            assert_eq!(
                s.apply(set(CAROL_STAFF, o.id, wrong, 20)),
                Err(Rejection::StatusChange {
                    from: OrderStatus::Placed,
                    to: wrong
                })
            );
        }
        assert_eq!(s.digest(), before, "a refused change writes nothing");

        for (at, next) in [
            (21, OrderStatus::Paid),
            (22, OrderStatus::Shipped),
            (23, OrderStatus::Delivered),
        ] {
            let (moved, _) = placed(s.apply(set(CAROL_STAFF, o.id, next, at)));
            assert_eq!(moved.status, next);
            assert_eq!(status_of(&s, o.id), next);
        }
        assert_eq!(s.stock(1), 3);
        // Delivered is the end: neither back nor cancelled.
        for wrong in [OrderStatus::Shipped, OrderStatus::Cancelled] {
            assert!(matches!(
                s.apply(set(CAROL_STAFF, o.id, wrong, 30)),
                Err(Rejection::StatusChange { .. })
            ));
        }
        // The old cancel command is refused too once the order is on its way.
        assert!(matches!(
            s.apply(cancel(CAROL_STAFF, o.id)),
            Err(Rejection::StatusChange { .. })
        ));
        let view = s.store.read().unwrap().order(o.id).unwrap().unwrap();
        let history: Vec<(OrderStatus, Timestamp, Id)> = view
            .status_history
            .iter()
            .map(|c| (c.status, c.at, c.actor))
            .collect();
        assert_eq!(
            history,
            [
                (OrderStatus::Placed, 10, ALICE),
                (OrderStatus::Paid, 21, CAROL_STAFF),
                (OrderStatus::Shipped, 22, CAROL_STAFF),
                (OrderStatus::Delivered, 23, CAROL_STAFF),
            ]
        );
    }

    /// Cancelling returns the stock, from placed or paid; a shipped order stays shipped.
    #[test]
    fn cancelling_returns_stock_only_from_placed_or_paid() {
        let s = shop();
        s.apply(product("Guitar", 10, 1000, 1)).unwrap();
        let (a, _) = placed(s.apply(order(ALICE, &[(1, 2)], None)));
        let (b, _) = placed(s.apply(order(ALICE, &[(1, 3)], None)));
        let (c, _) = placed(s.apply(order(BOB, &[(1, 4)], None)));
        assert_eq!(s.stock(1), 1);

        // a: cancelled straight from placed by staff.
        s.apply(set(CAROL_STAFF, a.id, OrderStatus::Cancelled, 20))
            .unwrap();
        assert_eq!(s.stock(1), 3);
        assert_eq!(
            s.apply(set(CAROL_STAFF, a.id, OrderStatus::Cancelled, 21)),
            Err(Rejection::AlreadyCancelled)
        );
        assert!(matches!(
            s.apply(set(CAROL_STAFF, a.id, OrderStatus::Paid, 21)),
            Err(Rejection::StatusChange { .. })
        ));
        // b: paid, then cancelled.
        s.apply(set(CAROL_STAFF, b.id, OrderStatus::Paid, 22))
            .unwrap();
        s.apply(set(CAROL_STAFF, b.id, OrderStatus::Cancelled, 23))
            .unwrap();
        assert_eq!(s.stock(1), 6);
        // c: shipped, cannot be cancelled; its stock stays taken.
        s.apply(set(CAROL_STAFF, c.id, OrderStatus::Paid, 24))
            .unwrap();
        s.apply(set(CAROL_STAFF, c.id, OrderStatus::Shipped, 25))
            .unwrap();
        assert_eq!(
            s.apply(set(CAROL_STAFF, c.id, OrderStatus::Cancelled, 26)),
            Err(Rejection::StatusChange {
                from: OrderStatus::Shipped,
                to: OrderStatus::Cancelled
            })
        );
        assert_eq!(s.stock(1), 6);
    }

    /// A customer may cancel their own placed order and nothing else; another customer's
    /// order does not exist for them.
    #[test]
    fn customers_only_cancel_their_own_placed_orders() {
        let s = shop();
        s.apply(product("Guitar", 10, 1000, 1)).unwrap();
        let (a, _) = placed(s.apply(order(ALICE, &[(1, 2)], None)));
        let (b, _) = placed(s.apply(order(ALICE, &[(1, 2)], None)));

        assert_eq!(
            s.apply(set(ALICE, a.id, OrderStatus::Paid, 20)),
            Err(Rejection::Forbidden)
        );
        assert_eq!(
            s.apply(set(BOB, a.id, OrderStatus::Cancelled, 20)),
            Err(Rejection::NotFound)
        );
        assert_eq!(
            s.apply(set(ALICE, 99, OrderStatus::Cancelled, 20)),
            Err(Rejection::NotFound)
        );
        let (cancelled, _) = placed(s.apply(set(ALICE, a.id, OrderStatus::Cancelled, 21)));
        assert_eq!(cancelled.status, OrderStatus::Cancelled);
        assert_eq!(s.stock(1), 8);

        s.apply(set(CAROL_STAFF, b.id, OrderStatus::Paid, 22))
            .unwrap();
        assert_eq!(
            s.apply(set(ALICE, b.id, OrderStatus::Cancelled, 23)),
            Err(Rejection::Forbidden)
        );
        assert_eq!(status_of(&s, b.id), OrderStatus::Paid);
    }
}
