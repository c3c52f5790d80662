//! [`StoreReader`]: a read transaction of the whole store with the catalog index of the
//! same state, and the queries the node answers from it.

use std::collections::HashMap;
use std::sync::Arc;

use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::catalog::CatalogIndex;
use crate::command::MemberRecord;
use crate::error::StoreError;
use crate::model::{
    Category, Id, Order, OrderItem, OrderItemView, OrderStatus, OrderView, Product, ProductImage,
    StatusChange, User,
};
use crate::query::{Page, ProductQuery, ProductSort, StockFilter};
use crate::tables::*;

/// A read snapshot of the whole store.
pub struct StoreReader {
    pub(crate) txn: ReadTransaction,
    /// The catalog index of the same state as `txn`.
    catalog: Arc<CatalogIndex>,
}

pub(crate) fn get_record<T: serde::de::DeserializeOwned>(
    txn: &ReadTransaction,
    table: TableDefinition<u64, &[u8]>,
    id: Id,
) -> Result<Option<T>, StoreError> {
    let table = txn.open_table(table)?;
    let value = table.get(id)?;
    value.map(|v| decode(v.value())).transpose()
}

/// Ids from an index keyed by `(owner, id)`: newest (highest id) first, or all ids of a
/// record table when there is no owner.
fn owned_ids(
    txn: &ReadTransaction,
    index: TableDefinition<(u64, u64), ()>,
    records: TableDefinition<u64, &[u8]>,
    owner: Option<Id>,
    offset: usize,
    limit: usize,
) -> Result<(Vec<Id>, usize), StoreError> {
    match owner {
        Some(owner) => {
            let index = txn.open_table(index)?;
            let range = || index.range((owner, 0)..=(owner, u64::MAX));
            let total = range()?.count();
            let ids = range()?
                .rev()
                .skip(offset)
                .take(limit)
                .map(|entry| entry.map(|(key, _)| key.value().1))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((ids, total))
        }
        None => {
            let table = txn.open_table(records)?;
            let total = table.len()? as usize;
            let ids = table
                .iter()?
                .rev()
                .skip(offset)
                .take(limit)
                .map(|entry| entry.map(|(key, _)| key.value()))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((ids, total))
        }
    }
}

impl StoreReader {
    /// A reader of `txn`, whose state's catalog index is `catalog`.
    pub(crate) fn new(txn: ReadTransaction, catalog: Arc<CatalogIndex>) -> StoreReader {
        StoreReader { txn, catalog }
    }

    pub fn category(&self, id: Id) -> Result<Option<Category>, StoreError> {
        get_record(&self.txn, CATEGORIES, id)
    }

    /// All categories by id.
    pub fn categories(&self) -> Result<Vec<Category>, StoreError> {
        let table = self.txn.open_table(CATEGORIES)?;
        table
            .iter()?
            .map(|entry| decode(entry?.1.value()))
            .collect()
    }

    /// A product, archived or not.
    pub fn product(&self, id: Id) -> Result<Option<Product>, StoreError> {
        get_record(&self.txn, PRODUCTS, id)
    }

    /// Products on sale that match the query, one page of them and the number matching.
    /// The catalog index picks the page's ids and counts the matches; only the page's
    /// products are read.
    pub fn products(&self, query: &ProductQuery) -> Result<Page<Product>, StoreError> {
        if query.needs_records() {
            return self.products_by_record(query);
        }
        let page = self.catalog.query(query);
        let products = self.txn.open_table(PRODUCTS)?;
        let mut items = Vec::with_capacity(page.ids.len());
        for id in page.ids {
            // The index is of this very state, so every id is a product on sale; the check
            // only keeps a stale index from ever listing an archived product.
            if let Some(value) = products.get(id)? {
                let product: Product = decode(value.value())?;
                if !product.archived {
                    items.push(product);
                }
            }
        }
        Ok(Page {
            items,
            total: page.total,
        })
    }

    /// Products on sale by price or stock, or kept by their stock: the index picks every
    /// match of the category and name filters, their records are read, filtered and
    /// sorted (ties by id), and the page cut from them.
    fn products_by_record(&self, query: &ProductQuery) -> Result<Page<Product>, StoreError> {
        let every = self.catalog.query(&ProductQuery {
            sort: ProductSort::Id,
            stock: StockFilter::default(),
            offset: 0,
            limit: usize::MAX,
            ..query.clone()
        });
        let products = self.txn.open_table(PRODUCTS)?;
        let mut found = Vec::with_capacity(every.ids.len());
        for id in every.ids {
            if let Some(value) = products.get(id)? {
                let product: Product = decode(value.value())?;
                if !product.archived && query.stock.keeps(product.stock) {
                    found.push(product);
                }
            }
        }
        // `found` is in id order and the sorts are stable: ties stay by id.
        match query.sort {
            ProductSort::PriceAsc => found.sort_by_key(|p| p.price),
            ProductSort::PriceDesc => found.sort_by_key(|p| std::cmp::Reverse(p.price)),
            ProductSort::StockAsc => found.sort_by_key(|p| p.stock),
            ProductSort::StockDesc => found.sort_by_key(|p| std::cmp::Reverse(p.stock)),
            ProductSort::IdDesc => found.reverse(),
            ProductSort::NameAsc => {
                found.sort_by_cached_key(|p| p.name.to_lowercase());
            }
            ProductSort::NameDesc => {
                found.sort_by_cached_key(|p| p.name.to_lowercase());
                found.reverse();
            }
            ProductSort::Id => {}
        }
        let total = found.len();
        let items = found
            .into_iter()
            .skip(query.offset)
            .take(query.limit)
            .collect();
        Ok(Page { items, total })
    }

    pub fn user(&self, id: Id) -> Result<Option<User>, StoreError> {
        get_record(&self.txn, USERS, id)
    }

    pub fn user_by_username(&self, username: &str) -> Result<Option<User>, StoreError> {
        let usernames = self.txn.open_table(USERNAMES)?;
        let id = usernames.get(username)?.map(|v| v.value());
        match id {
            Some(id) => self.user(id),
            None => Ok(None),
        }
    }

    fn item_views(&self, items: Vec<OrderItem>) -> Result<Vec<OrderItemView>, StoreError> {
        let mut usernames: HashMap<Id, String> = HashMap::new();
        let mut views = Vec::with_capacity(items.len());
        for item in items {
            let username = match usernames.get(&item.user) {
                Some(name) => name.clone(),
                None => {
                    let name = self
                        .user(item.user)?
                        .map(|u| u.username)
                        .unwrap_or_default();
                    usernames.insert(item.user, name.clone());
                    name
                }
            };
            let product_name = match &item.product_name {
                Some(name) => name.clone(),
                None => self
                    .product(item.product)?
                    .map(|p| p.name)
                    .unwrap_or_default(),
            };
            views.push(OrderItemView {
                item,
                username,
                product_name,
            });
        }
        Ok(views)
    }

    /// How many of `product` the cart lines of `user` hold, leaving out the line `except`.
    /// Walks the user's items newest first until every cart line was seen.
    pub fn cart_quantity(
        &self,
        user: Id,
        product: Id,
        except: Option<Id>,
    ) -> Result<u64, StoreError> {
        let lines = self
            .txn
            .open_table(CART_LINE_COUNTS)?
            .get(user)?
            .map_or(0, |v| v.value());
        let index = self.txn.open_table(ORDER_ITEMS_BY_USER)?;
        let items = self.txn.open_table(ORDER_ITEMS)?;
        let (mut seen, mut quantity) = (0, 0);
        for entry in index.range((user, 0)..=(user, u64::MAX))?.rev() {
            if seen == lines {
                break;
            }
            let id = entry?.0.value().1;
            let Some(value) = items.get(id)? else {
                continue;
            };
            let item: OrderItem = decode(value.value())?;
            if item.order.is_none() {
                seen += 1;
                if item.product == product && Some(item.id) != except {
                    quantity += u64::from(item.quantity);
                }
            }
        }
        Ok(quantity)
    }

    pub fn order_item(&self, id: Id) -> Result<Option<OrderItemView>, StoreError> {
        let item: Option<OrderItem> = get_record(&self.txn, ORDER_ITEMS, id)?;
        Ok(item
            .map(|i| self.item_views(vec![i]))
            .transpose()?
            .and_then(|mut v| v.pop()))
    }

    /// Order items newest first: one user's (`Some`) or everyone's (`None`).
    pub fn order_items(
        &self,
        owner: Option<Id>,
        offset: usize,
        limit: usize,
    ) -> Result<Page<OrderItemView>, StoreError> {
        let (ids, total) = owned_ids(
            &self.txn,
            ORDER_ITEMS_BY_USER,
            ORDER_ITEMS,
            owner,
            offset,
            limit,
        )?;
        let mut items = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(item) = get_record(&self.txn, ORDER_ITEMS, id)? {
                items.push(item);
            }
        }
        Ok(Page {
            items: self.item_views(items)?,
            total,
        })
    }

    pub(crate) fn order_view(&self, order: Order) -> Result<OrderView, StoreError> {
        let mut items = Vec::with_capacity(order.items.len());
        for &id in &order.items {
            if let Some(item) = get_record(&self.txn, ORDER_ITEMS, id)? {
                items.push(item);
            }
        }
        let items = self.item_views(items)?;
        let username = match items.first() {
            Some(view) => view.username.clone(),
            None => self
                .user(order.user)?
                .map(|u| u.username)
                .unwrap_or_default(),
        };
        Ok(OrderView {
            order,
            username,
            items,
            status_history: Vec::new(),
        })
    }

    /// One order with its items and when it reached each status (placed: its creation).
    pub fn order(&self, id: Id) -> Result<Option<OrderView>, StoreError> {
        let order: Option<Order> = get_record(&self.txn, ORDERS, id)?;
        let Some(order) = order else {
            return Ok(None);
        };
        let mut view = self.order_view(order)?;
        let changes = self.txn.open_table(ORDER_STATUS_CHANGES)?;
        view.status_history.push(StatusChange {
            status: OrderStatus::Placed,
            at: view.order.created_at,
            actor: view.order.user,
            actor_name: view.username.clone(),
        });
        for mut change in crate::apply::recorded_status_changes(&changes, id)? {
            change.actor_name = self
                .user(change.actor)?
                .map(|u| u.username)
                .unwrap_or_default();
            view.status_history.push(change);
        }
        Ok(Some(view))
    }

    /// Whether the user may log in and use their tokens (not deactivated by staff).
    pub fn user_is_active(&self, id: Id) -> Result<bool, StoreError> {
        let table = self.txn.open_table(DEACTIVATED_USERS)?;
        Ok(table.get(id)?.is_none())
    }

    /// Orders newest first: one user's (`Some`) or everyone's (`None`).
    pub fn orders(
        &self,
        owner: Option<Id>,
        offset: usize,
        limit: usize,
    ) -> Result<Page<OrderView>, StoreError> {
        let (ids, total) = owned_ids(&self.txn, ORDERS_BY_USER, ORDERS, owner, offset, limit)?;
        let mut views = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(order) = get_record::<Order>(&self.txn, ORDERS, id)? {
                views.push(self.order_view(order)?);
            }
        }
        Ok(Page {
            items: views,
            total,
        })
    }

    pub fn jwt_secret(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let meta = self.txn.open_table(META)?;
        Ok(meta.get(META_JWT_SECRET)?.map(|v| v.value().to_vec()))
    }

    /// The recorded cluster members (see `Command::RecordMember`), by id.
    pub fn members(&self) -> Result<Vec<MemberRecord>, StoreError> {
        let meta = self.txn.open_table(META)?;
        meta.range(META_MEMBER_PREFIX..META_MEMBER_END)?
            .map(|row| decode(row?.1.value()))
            .collect()
    }

    /// The unix second of the user's last password or staff change, if any: tokens issued
    /// before it belong to an ended session.
    pub fn credentials_changed_at(&self, user: Id) -> Result<Option<i64>, StoreError> {
        let table = self.txn.open_table(CREDENTIALS_CHANGED)?;
        Ok(table.get(user)?.map(|v| v.value()))
    }

    /// A product's images, the main one first (none for a product without images).
    pub fn product_images(&self, product: Id) -> Result<Vec<ProductImage>, StoreError> {
        let table = self.txn.open_table(PRODUCT_IMAGES)?;
        table
            .get(product)?
            .map_or(Ok(Vec::new()), |v| decode(v.value()))
    }

    /// The bytes stored under a media key (`HASH.EXT`).
    pub fn media(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let table = self.txn.open_table(MEDIA)?;
        Ok(table.get(key)?.map(|v| v.value().to_vec()))
    }

    pub fn refresh_token_used(&self, jti: &str) -> Result<bool, StoreError> {
        let table = self.txn.open_table(USED_REFRESH)?;
        Ok(table.get(jti)?.is_some())
    }

    /// Whether the catalog is empty (no categories and no products).
    pub fn catalog_is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.txn.open_table(CATEGORIES)?.is_empty()?
            && self.txn.open_table(PRODUCTS)?.is_empty()?)
    }

    /// Every product record, archived ones included, by id.
    pub fn all_products(&self) -> Result<Vec<Product>, StoreError> {
        let table = self.txn.open_table(PRODUCTS)?;
        table
            .iter()?
            .map(|entry| decode(entry?.1.value()))
            .collect()
    }

    /// Every order with its items, by id (oldest first).
    pub fn all_orders(&self) -> Result<Vec<OrderView>, StoreError> {
        let table = self.txn.open_table(ORDERS)?;
        let mut views = Vec::new();
        for entry in table.iter()? {
            let order: Order = decode(entry?.1.value())?;
            views.push(self.order_view(order)?);
        }
        Ok(views)
    }

    /// A digest of the application state (every table but the raft log and bookkeeping):
    /// equal on two stores exactly when they hold the same data. Used to compare nodes and
    /// in property tests.
    pub fn digest(&self) -> Result<u64, StoreError> {
        let mut digest = StateDigest::default();
        visit_state(&self.txn, &mut digest)?;
        Ok(digest.finish())
    }
}

#[cfg(test)]
mod tests {
    use rust_decimal::Decimal;

    use super::*;
    use crate::apply::tests::{
        TestStore, add_to_cart, cancel, category, created_id, order, placed, product, user,
    };
    use crate::command::{Command, ProductChanges};
    use crate::model::OrderStatus;
    use crate::query::ProductSort;

    #[test]
    fn a_fresh_store_has_every_table_and_an_empty_catalog() {
        let s = TestStore::new();
        let reader = s.store.read().unwrap();
        assert!(reader.catalog_is_empty().unwrap());
        assert_eq!(reader.categories().unwrap(), []);
        assert_eq!(reader.all_products().unwrap(), []);
        assert_eq!(reader.all_orders().unwrap(), []);
        assert_eq!(reader.jwt_secret().unwrap(), None);
        assert_eq!(reader.orders(None, 0, 10).unwrap().total, 0);
        assert_eq!(reader.order_items(Some(1), 0, 10).unwrap().total, 0);
        // 24 application tables, 2 of applied request ids, the raft log and raft state.
        assert_eq!(reader.txn.list_tables().unwrap().count(), 28);
        // Two fresh stores are equal.
        assert_eq!(reader.digest().unwrap(), TestStore::new().digest());
    }

    #[test]
    fn digest_tells_stores_apart() {
        let a = TestStore::new();
        let b = TestStore::new();
        let commands = [category("Rock"), product("Guitar", 3, 100, 1)];
        a.apply_all(&commands);
        b.apply_all(&commands);
        assert_eq!(a.digest(), b.digest());
        a.apply(Command::UpdateProduct {
            id: 1,
            changes: ProductChanges {
                stock: Some(4),
                ..Default::default()
            },
        })
        .unwrap();
        assert_ne!(a.digest(), b.digest());
        // An index-only difference shows too: the same record, listed in another category.
        let c = TestStore::new();
        c.apply_all(&commands);
        let txn = c.store.db().begin_write().unwrap();
        txn.open_table(PRODUCTS_BY_CATEGORY)
            .unwrap()
            .insert((9, 1), ())
            .unwrap();
        txn.commit().unwrap();
        assert_ne!(c.digest(), b.digest());
    }

    fn query(category: Option<Id>, name: Option<&str>, sort: ProductSort) -> ProductQuery {
        ProductQuery {
            stock: Default::default(),
            category,
            name_contains: name.map(str::to_owned),
            sort,
            limit: 100,
            offset: 0,
        }
    }

    /// A catalog with two categories, names that differ only in case, an archived product
    /// and an erased one.
    fn catalog() -> TestStore {
        let s = TestStore::new();
        let results = s.apply_all(&[
            category("Strings"),                   // 1
            category("Drums"),                     // 2
            user("alice", false),                  // 1
            product("Fender GUITAR", 3, 100, 1),   // 1
            product("bass guitar", 3, 100, 1),     // 2
            product("Snare", 3, 100, 2),           // 3
            product("amp", 3, 100, 1),             // 4
            product("Old Guitar", 3, 100, 1),      // 5: ordered, then archived
            product("Acoustic Guitar", 3, 100, 2), // 6
            product("Amp", 3, 100, 2),             // 7
            product("Gone guitar", 3, 100, 1),     // 8: erased
            product("Zither", 3, 100, 1),          // 9
            order(1, &[(5, 1)], None),
            Command::DeleteProduct { id: 5 },
            Command::DeleteProduct { id: 8 },
        ]);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        s
    }

    fn ids(page: &Page<Product>) -> Vec<Id> {
        page.items.iter().map(|p| p.id).collect()
    }

    #[test]
    fn product_listing_filters_and_sorts() {
        let s = catalog();
        let reader = s.store.read().unwrap();
        let list = |q: ProductQuery| {
            let page = reader.products(&q).unwrap();
            assert_eq!(page.total, page.items.len(), "one page holds all of {q:?}");
            ids(&page)
        };
        use ProductSort::{NameAsc, NameDesc};
        assert_eq!(
            list(query(None, None, ProductSort::Id)),
            [1, 2, 3, 4, 6, 7, 9]
        );
        // Name order is case-insensitive; equal names go by id, and reversed by id.
        assert_eq!(list(query(None, None, NameAsc)), [6, 4, 7, 2, 1, 3, 9]);
        assert_eq!(list(query(None, None, NameDesc)), [9, 3, 1, 2, 7, 4, 6]);
        assert_eq!(list(query(Some(1), None, ProductSort::Id)), [1, 2, 4, 9]);
        assert_eq!(list(query(Some(1), None, NameAsc)), [4, 2, 1, 9]);
        assert_eq!(list(query(Some(1), None, NameDesc)), [9, 1, 2, 4]);
        assert_eq!(list(query(Some(2), None, NameAsc)), [6, 7, 3]);
        assert_eq!(list(query(Some(2), None, NameDesc)), [3, 7, 6]);
        assert_eq!(
            list(query(Some(99), None, ProductSort::Id)),
            Vec::<Id>::new()
        );
        // The needle matches any case; archived and erased guitars are not listed.
        for needle in ["guitar", "GUITAR", "gUiTaR", "uita"] {
            assert_eq!(list(query(None, Some(needle), ProductSort::Id)), [1, 2, 6]);
            assert_eq!(list(query(None, Some(needle), NameAsc)), [6, 2, 1]);
            assert_eq!(list(query(None, Some(needle), NameDesc)), [1, 2, 6]);
            assert_eq!(list(query(Some(1), Some(needle), NameAsc)), [2, 1]);
            assert_eq!(list(query(Some(2), Some(needle), ProductSort::Id)), [6]);
        }
        assert_eq!(list(query(None, Some("AMP"), ProductSort::Id)), [4, 7]);
        assert_eq!(list(query(None, Some(""), ProductSort::Id)).len(), 7);
        assert_eq!(list(query(None, Some("violin"), NameAsc)), Vec::<Id>::new());
        // The archived product is still there to read directly.
        assert!(reader.product(5).unwrap().unwrap().archived);
        assert_eq!(reader.product(8).unwrap(), None);
    }

    #[test]
    fn product_listing_pages() {
        let s = catalog();
        let reader = s.store.read().unwrap();
        let categories = [None, Some(1), Some(2), Some(3)];
        let needles = [None, Some("GUITAR"), Some("a"), Some("nothing")];
        let sorts = [ProductSort::Id, ProductSort::NameAsc, ProductSort::NameDesc];
        for category in categories {
            for needle in needles {
                for sort in sorts {
                    let full = reader.products(&query(category, needle, sort)).unwrap();
                    let all = ids(&full);
                    for limit in 0..=4 {
                        for offset in 0..=all.len() + 1 {
                            let q = ProductQuery {
                                stock: Default::default(),
                                limit,
                                offset,
                                ..query(category, needle, sort)
                            };
                            let page = reader.products(&q).unwrap();
                            assert_eq!(page.total, all.len(), "{q:?}");
                            let expected: Vec<Id> =
                                all.iter().copied().skip(offset).take(limit).collect();
                            assert_eq!(ids(&page), expected, "{q:?}");
                        }
                    }
                    // A huge limit or offset does not overflow.
                    let q = ProductQuery {
                        stock: Default::default(),
                        limit: usize::MAX,
                        offset: usize::MAX,
                        ..query(category, needle, sort)
                    };
                    assert_eq!(reader.products(&q).unwrap().items, []);
                    let q = ProductQuery {
                        stock: Default::default(),
                        limit: usize::MAX,
                        offset: 1,
                        ..query(category, needle, sort)
                    };
                    assert_eq!(
                        reader.products(&q).unwrap().items.len(),
                        all.len().saturating_sub(1)
                    );
                }
            }
        }
    }

    #[test]
    fn product_listing_follows_renames_moves_and_deletes() {
        let s = catalog();
        s.apply(Command::UpdateProduct {
            id: 9,
            changes: ProductChanges {
                name: Some("AAA Guitar".into()),
                category: Some(2),
                ..Default::default()
            },
        })
        .unwrap();
        s.apply(Command::DeleteProduct { id: 1 }).unwrap();
        let reader = s.store.read().unwrap();
        let list = |q| ids(&reader.products(&q).unwrap());
        assert_eq!(
            list(query(None, Some("guitar"), ProductSort::NameAsc)),
            [9, 6, 2]
        );
        assert_eq!(list(query(Some(1), None, ProductSort::Id)), [2, 4]);
        assert_eq!(
            list(query(Some(2), None, ProductSort::NameAsc)),
            [9, 6, 7, 3]
        );
    }

    #[test]
    fn orders_and_items_are_listed_newest_first() {
        let s = catalog();
        s.apply(user("bob", false)).unwrap();
        let bob = 2;
        let mut bobs_orders = Vec::new();
        for _ in 0..3 {
            let (o, _) = placed(s.apply(order(bob, &[(1, 1), (3, 1)], None)));
            bobs_orders.push(o.id);
        }
        let cart_line = created_id(s.apply(add_to_cart(bob, 2, 2)));
        s.apply(cancel(bob, bobs_orders[1])).unwrap();

        let reader = s.store.read().unwrap();
        let page = reader.orders(Some(bob), 0, 2).unwrap();
        assert_eq!(page.total, 3);
        let listed: Vec<Id> = page.items.iter().map(|v| v.order.id).collect();
        assert_eq!(listed, [bobs_orders[2], bobs_orders[1]]);
        assert_eq!(page.items[1].order.status, OrderStatus::Cancelled);
        let page = reader.orders(Some(bob), 2, 2).unwrap();
        assert_eq!(page.items.len(), 1);
        assert_eq!(page.items[0].order.id, bobs_orders[0]);
        let view = &page.items[0];
        assert_eq!(view.username, "bob");
        let names: Vec<&str> = view.items.iter().map(|i| i.product_name.as_str()).collect();
        assert_eq!(names, ["Fender GUITAR", "Snare"]);
        assert_eq!(view.order.total, Decimal::new(200, 2));

        // Everyone's orders: alice's one from the catalog and bob's three.
        let all = reader.orders(None, 0, 10).unwrap();
        assert_eq!(all.total, 4);
        assert_eq!(all.items.last().unwrap().username, "alice");
        assert_eq!(reader.all_orders().unwrap().len(), 4);
        assert_eq!(reader.orders(Some(99), 0, 10).unwrap().total, 0);

        // Bob's order items: the cart line first, then the order lines, newest first.
        let items = reader.order_items(Some(bob), 0, 3).unwrap();
        assert_eq!(items.total, 7);
        assert_eq!(items.items[0].item.id, cart_line);
        assert_eq!(items.items[0].item.order, None);
        assert_eq!(items.items[0].product_name, "bass guitar");
        assert!(items.items.windows(2).all(|w| w[0].item.id > w[1].item.id));
        assert_eq!(reader.order_items(None, 0, 100).unwrap().total, 8);
    }
}
