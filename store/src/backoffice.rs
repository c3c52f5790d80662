//! The staff's reads over the store: orders filtered by customer, status and date, users
//! searched with whether they are active, and the sales per day with the top products.
//!
//! Orders are walked newest first (by id, from `orders` or a customer's `orders_by_user`).
//! Ids are given in log order and `created_at` comes from the clock of the node that took
//! the order, so times fall with ids up to the nodes' clock skew: a walk with a lower time
//! bound stops once it is [`CLOCK_SKEW`] past it. Everything else is a bounded scan.

use std::collections::HashMap;

use redb::{ReadableTable, ReadableTableMetadata};
use rust_decimal::Decimal;

use crate::error::StoreError;
use crate::model::{Id, Order, OrderItem, OrderStatus, OrderView, Timestamp, User};
use crate::query::Page;
use crate::reader::{StoreReader, get_record};
use crate::tables::*;

/// How far apart the nodes' clocks may be, at most, for date bounds to stop a walk.
pub const CLOCK_SKEW: Timestamp = 10 * 60 * 1_000_000;

/// One day in microseconds.
pub const DAY: Timestamp = 86_400 * 1_000_000;

/// Which orders a staff list or export wants. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct OrderFilter {
    pub user: Option<Id>,
    pub status: Option<OrderStatus>,
    /// Orders created at or after this time.
    pub created_from: Option<Timestamp>,
    /// Orders created before this time.
    pub created_before: Option<Timestamp>,
}

impl OrderFilter {
    pub fn is_empty(&self) -> bool {
        *self == OrderFilter::default()
    }

    fn matches(&self, order: &Order) -> bool {
        self.status.is_none_or(|s| order.status == s)
            && self.created_from.is_none_or(|t| order.created_at >= t)
            && self.created_before.is_none_or(|t| order.created_at < t)
    }

    /// Whether an order this old, and so every order older by more than the clock skew,
    /// is before the filter's window.
    fn is_past(&self, order: &Order) -> bool {
        self.created_from
            .is_some_and(|t| order.created_at < t.saturating_sub(CLOCK_SKEW))
    }
}

/// A user as the staff's user list shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserListing {
    pub user: User,
    pub active: bool,
}

/// Orders (not cancelled) and revenue of one day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaySales {
    /// The day's first microsecond.
    pub start: Timestamp,
    pub orders: u64,
    pub revenue: Decimal,
}

/// What one product sold over a report's days (orders not cancelled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductSales {
    pub product: Id,
    pub name: String,
    pub quantity: u64,
    pub revenue: Decimal,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SalesReport {
    pub days: Vec<DaySales>,
    pub top_products: Vec<ProductSales>,
    /// Cancelled orders in the window (not in the days' figures).
    pub cancelled: u64,
    /// The walk stopped at its bound before reaching the window's start.
    pub truncated: bool,
}

impl StoreReader {
    /// Walks orders newest first, one customer's or everyone's, until `visit` says stop.
    fn walk_orders(
        &self,
        user: Option<Id>,
        mut visit: impl FnMut(Order) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        match user {
            Some(user) => {
                let index = self.txn.open_table(ORDERS_BY_USER)?;
                for entry in index.range((user, 0)..=(user, u64::MAX))?.rev() {
                    let id = entry?.0.value().1;
                    if let Some(order) = get_record::<Order>(&self.txn, ORDERS, id)?
                        && !visit(order)?
                    {
                        break;
                    }
                }
            }
            None => {
                let table = self.txn.open_table(ORDERS)?;
                for entry in table.iter()?.rev() {
                    let order: Order = decode(entry?.1.value())?;
                    if !visit(order)? {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Orders matching `filter`, newest first: one page and how many match in all.
    pub fn orders_matching(
        &self,
        filter: &OrderFilter,
        offset: usize,
        limit: usize,
    ) -> Result<Page<OrderView>, StoreError> {
        let window = offset..offset.saturating_add(limit);
        let mut total = 0;
        let mut items = Vec::new();
        self.walk_orders(filter.user, |order| {
            if filter.is_past(&order) {
                return Ok(false);
            }
            if filter.matches(&order) {
                if window.contains(&total) {
                    items.push(self.order_view(order)?);
                }
                total += 1;
            }
            Ok(true)
        })?;
        Ok(Page { items, total })
    }

    /// Users by id whose username or email contains `search` (lower-cased), one page and
    /// how many match.
    pub fn users_matching(
        &self,
        search: Option<&str>,
        offset: usize,
        limit: usize,
    ) -> Result<Page<UserListing>, StoreError> {
        let users = self.txn.open_table(USERS)?;
        let deactivated = self.txn.open_table(DEACTIVATED_USERS)?;
        let window = offset..offset.saturating_add(limit);
        let mut total = 0;
        let mut items = Vec::new();
        for entry in users.iter()? {
            let user: User = decode(entry?.1.value())?;
            let found = search.is_none_or(|needle| {
                user.username.to_lowercase().contains(needle)
                    || user.email.to_lowercase().contains(needle)
            });
            if !found {
                continue;
            }
            if window.contains(&total) {
                let active = deactivated.get(user.id)?.is_none();
                items.push(UserListing { user, active });
            }
            total += 1;
        }
        Ok(Page { items, total })
    }

    /// How many users there are.
    pub fn user_count(&self) -> Result<u64, StoreError> {
        Ok(self.txn.open_table(USERS)?.len()?)
    }

    /// Sales per day for `days` days from `start` (a day's first microsecond), and the `top`
    /// products by revenue, walking at most `max_orders` orders newest first.
    pub fn sales(
        &self,
        start: Timestamp,
        days: u32,
        top: usize,
        max_orders: usize,
    ) -> Result<SalesReport, StoreError> {
        let end = start.saturating_add(DAY.saturating_mul(i64::from(days)));
        let mut report = SalesReport {
            days: (0..i64::from(days))
                .map(|n| DaySales {
                    start: start + n * DAY,
                    orders: 0,
                    revenue: Decimal::ZERO,
                })
                .collect(),
            top_products: Vec::new(),
            cancelled: 0,
            truncated: false,
        };
        let filter = OrderFilter {
            created_from: Some(start),
            created_before: Some(end),
            ..OrderFilter::default()
        };
        let items = self.txn.open_table(ORDER_ITEMS)?;
        let mut products: HashMap<Id, ProductSales> = HashMap::new();
        let mut walked = 0;
        self.walk_orders(None, |order| {
            if filter.is_past(&order) {
                return Ok(false);
            }
            if walked == max_orders {
                report.truncated = true;
                return Ok(false);
            }
            walked += 1;
            if !filter.matches(&order) {
                return Ok(true);
            }
            if order.status == OrderStatus::Cancelled {
                report.cancelled += 1;
                return Ok(true);
            }
            let day = ((order.created_at - start) / DAY) as usize;
            if let Some(day) = report.days.get_mut(day) {
                day.orders += 1;
                day.revenue = day.revenue.saturating_add(order.total);
            }
            for &id in &order.items {
                let Some(value) = items.get(id)? else {
                    continue;
                };
                let item: OrderItem = decode(value.value())?;
                let entry = products
                    .entry(item.product)
                    .or_insert_with(|| ProductSales {
                        product: item.product,
                        name: item.product_name.clone().unwrap_or_default(),
                        quantity: 0,
                        revenue: Decimal::ZERO,
                    });
                entry.quantity += u64::from(item.quantity);
                let line = item
                    .unit_price
                    .unwrap_or_default()
                    .saturating_mul(Decimal::from(item.quantity));
                entry.revenue = entry.revenue.saturating_add(line);
            }
            Ok(true)
        })?;
        let mut ranked: Vec<ProductSales> = products.into_values().collect();
        ranked.sort_by(|a, b| {
            b.revenue
                .cmp(&a.revenue)
                .then(b.quantity.cmp(&a.quantity))
                .then(a.product.cmp(&b.product))
        });
        ranked.truncate(top);
        report.top_products = ranked;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::tests::*;
    use crate::command::Command;

    fn order_at(user: Id, lines: &[(Id, u32)], at: Timestamp) -> Command {
        let Command::PlaceOrder {
            user,
            lines,
            idempotency_key,
            ..
        } = order(user, lines, None)
        else {
            unreachable!()
        };
        Command::PlaceOrder {
            user,
            lines,
            idempotency_key,
            at,
        }
    }

    fn ids(page: &Page<OrderView>) -> Vec<Id> {
        page.items.iter().map(|v| v.order.id).collect()
    }

    #[test]
    fn orders_are_filtered_by_customer_status_and_date() {
        let s = shop();
        s.apply(product("Guitar", 100, 1000, 1)).unwrap();
        s.apply(product("Drum", 100, 250, 1)).unwrap();
        // Orders 1..=4 on days 0, 1, 2, 3.
        s.apply(order_at(ALICE, &[(1, 1)], 0)).unwrap();
        s.apply(order_at(BOB, &[(2, 2)], DAY)).unwrap();
        s.apply(order_at(ALICE, &[(1, 1), (2, 1)], 2 * DAY))
            .unwrap();
        s.apply(order_at(BOB, &[(1, 3)], 3 * DAY)).unwrap();
        s.apply(Command::SetOrderStatus {
            actor: CAROL,
            id: 3,
            status: OrderStatus::Paid,
            at: 3 * DAY,
        })
        .unwrap();
        s.apply(cancel(BOB, 4)).unwrap();

        let reader = s.store.read().unwrap();
        let all = reader
            .orders_matching(&OrderFilter::default(), 0, 10)
            .unwrap();
        assert_eq!((ids(&all), all.total), (vec![4, 3, 2, 1], 4));
        let alices = OrderFilter {
            user: Some(ALICE),
            ..OrderFilter::default()
        };
        assert_eq!(
            ids(&reader.orders_matching(&alices, 0, 10).unwrap()),
            [3, 1]
        );
        let paid = OrderFilter {
            status: Some(OrderStatus::Paid),
            ..OrderFilter::default()
        };
        assert_eq!(ids(&reader.orders_matching(&paid, 0, 10).unwrap()), [3]);
        let days_1_and_2 = OrderFilter {
            created_from: Some(DAY),
            created_before: Some(3 * DAY),
            ..OrderFilter::default()
        };
        let page = reader.orders_matching(&days_1_and_2, 0, 1).unwrap();
        assert_eq!((ids(&page), page.total), (vec![3], 2));
        let page = reader.orders_matching(&days_1_and_2, 1, 1).unwrap();
        assert_eq!(ids(&page), [2]);
        let bobs_cancelled = OrderFilter {
            user: Some(BOB),
            status: Some(OrderStatus::Cancelled),
            ..OrderFilter::default()
        };
        assert_eq!(
            ids(&reader.orders_matching(&bobs_cancelled, 0, 10).unwrap()),
            [4]
        );

        // Sales over days 0..3: order 4 is cancelled, so day 3 is empty.
        let report = reader.sales(0, 4, 10, 1000).unwrap();
        let per_day: Vec<(u64, Decimal)> =
            report.days.iter().map(|d| (d.orders, d.revenue)).collect();
        assert_eq!(
            per_day,
            [
                (1, Decimal::new(1000, 2)),
                (1, Decimal::new(500, 2)),
                (1, Decimal::new(1250, 2)),
                (0, Decimal::ZERO),
            ]
        );
        assert_eq!(report.cancelled, 1);
        assert!(!report.truncated);
        let top: Vec<(Id, u64)> = report
            .top_products
            .iter()
            .map(|p| (p.product, p.quantity))
            .collect();
        assert_eq!(top, [(1, 2), (2, 3)]);
        assert_eq!(report.top_products[0].name, "Guitar");
        // The walk's bound is kept and said.
        assert!(reader.sales(0, 4, 10, 2).unwrap().truncated);
    }

    #[test]
    fn users_are_searched_by_name_or_email_with_whether_they_are_active() {
        let s = shop();
        s.apply(Command::SetUserActive {
            actor: CAROL,
            id: BOB,
            active: false,
            at: 1,
        })
        .unwrap();
        let reader = s.store.read().unwrap();
        let all = reader.users_matching(None, 0, 10).unwrap();
        assert_eq!(all.total, 3);
        let found = reader.users_matching(Some("bo"), 0, 10).unwrap();
        assert_eq!(found.total, 1);
        assert_eq!(found.items[0].user.username, "bob");
        assert!(!found.items[0].active);
        let by_mail = reader.users_matching(Some("carol@"), 0, 10).unwrap();
        assert!(by_mail.items[0].active);
        assert_eq!(reader.users_matching(Some("zzz"), 0, 10).unwrap().total, 0);
        assert_eq!(reader.user_count().unwrap(), 3);
    }
}
