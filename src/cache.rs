//! [`ResponseCache`]: ready-to-send response bodies in quick_cache, keyed by request and by
//! generation numbers. Applied commands bump the generations of what they changed (see
//! [`ResponseCache::invalidate`]), so an entry stored before a change is never found again
//! afterwards; it just ages out. A hit costs no store access and no JSON encoding.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::HeaderValue;
use metrics::Counter;
use quick_cache::Weighter;
use quick_cache::sync::Cache;
use store::{
    ChangeSet, Id, ProductQuery, ProductSort, StockFilter, Store, StoreError, StoreReader,
};

use crate::auth::Principal;
use crate::compression::Variants;
use crate::output::{ProductJson, json_bytes};

/// Generation stripes for per-product and per-user invalidation. Two ids sharing a stripe
/// only means one is invalidated needlessly now and then.
const STRIPES: usize = 4096;

/// Whose view of orders and order items a cached list or detail is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Viewer {
    /// A user's own items, at that user's generation.
    User { id: Id, generation: u64 },
    /// Staff see everyone's, at the generation of all users.
    Staff { generation: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CacheKey {
    ProductList {
        generation: u64,
        category: Option<Id>,
        name: Option<String>,
        sort: ProductSort,
        stock: StockFilter,
        limit: usize,
        offset: usize,
    },
    Product {
        generation: u64,
        id: Id,
    },
    /// The ids a product list query selects, valid while no product joins, leaves or
    /// moves in any list (stock and price changes keep it), or, for a query by price or
    /// stock, while no product changes at all (`listing` is then the product list's
    /// generation).
    ProductIds {
        listing: u64,
        category: Option<Id>,
        name: Option<String>,
        sort: ProductSort,
        stock: StockFilter,
        limit: usize,
        offset: usize,
    },
    CategoryList {
        generation: u64,
        limit: usize,
        offset: usize,
    },
    Category {
        generation: u64,
        id: Id,
    },
    OrderItemList {
        viewer: Viewer,
        names: u64,
        limit: usize,
        offset: usize,
    },
    OrderItem {
        viewer: Viewer,
        names: u64,
        id: Id,
    },
    OrderList {
        viewer: Viewer,
        limit: usize,
        offset: usize,
    },
    Order {
        viewer: Viewer,
        id: Id,
    },
    /// The authenticated user behind a token (for permission checks).
    Principal {
        generation: u64,
        id: Id,
    },
    /// What `/health/` writes and reads back.
    HealthProbe,
    /// `GET /api/users/me/`.
    Me {
        generation: u64,
        id: Id,
    },
}

/// A response body ready to send, with the list headers it needs.
#[derive(Debug, Clone)]
pub struct CachedBody {
    pub body: Bytes,
    pub total_count: Option<usize>,
    /// The `Link` header's value, ready to send.
    pub next_link: Option<HeaderValue>,
    /// The body's compressed forms (bodies of at least [`crate::compression::MIN_SIZE`]), made at
    /// most once each and shared by every copy of the entry.
    pub variants: Option<Arc<Variants>>,
}

impl CachedBody {
    /// A body without list headers.
    pub fn new(body: Bytes) -> CachedBody {
        CachedBody::list(body, None, None)
    }

    /// A body with the headers of a list: `X-Total-Count` and `Link`.
    pub fn list(
        body: Bytes,
        total_count: Option<usize>,
        next_link: Option<HeaderValue>,
    ) -> CachedBody {
        CachedBody {
            variants: Variants::new(body.clone()).map(Arc::new),
            body,
            total_count,
            next_link,
        }
    }
}

/// One page of a product list as ids, and how many products match in all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductIds {
    pub ids: Vec<Id>,
    pub total: usize,
}

#[derive(Debug, Clone)]
pub enum CacheValue {
    Body(CachedBody),
    Principal(Principal),
    Ids(Arc<ProductIds>),
}

#[derive(Clone)]
struct ByteWeighter;

impl Weighter<CacheKey, CacheValue> for ByteWeighter {
    fn weight(&self, _key: &CacheKey, value: &CacheValue) -> u64 {
        let payload = match value {
            CacheValue::Body(b) => {
                // Room for the compressed forms, made later on demand: br and gzip of the
                // node's JSON together come to about a fifth of it (the demo's 1,000-product
                // list: 10 % and 11 %).
                let compressed = b.variants.as_ref().map_or(0, |_| b.body.len() / 4);
                b.body.len() + compressed + b.next_link.as_ref().map_or(0, HeaderValue::len)
            }
            CacheValue::Principal(p) => p.username.len(),
            CacheValue::Ids(page) => page.ids.len() * std::mem::size_of::<Id>(),
        };
        // Keys and bookkeeping cost something too.
        (payload + 128) as u64
    }
}

/// Striped generation counters.
struct Generations {
    stripes: Box<[AtomicU64]>,
}

impl Generations {
    fn new() -> Generations {
        Generations {
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn get(&self, id: Id) -> u64 {
        self.stripes[(id as usize) % STRIPES].load(Ordering::Acquire)
    }

    fn bump(&self, id: Id) {
        self.stripes[(id as usize) % STRIPES].fetch_add(1, Ordering::AcqRel);
    }
}

pub struct ResponseCache {
    entries: Cache<CacheKey, CacheValue, ByteWeighter>,
    categories: AtomicU64,
    product_list: AtomicU64,
    product_listing: AtomicU64,
    products: Generations,
    users: Generations,
    all_users: AtomicU64,
    product_names: AtomicU64,
    /// `soundwave_cache_lookups_total{result="hit"|"miss"}`, registered at the first lookup
    /// (by then the node has installed its recorder) so that lookups skip the registry.
    lookups: OnceLock<LookupCounters>,
}

struct LookupCounters {
    hits: Counter,
    misses: Counter,
}

impl ResponseCache {
    pub fn new(capacity_bytes: u64) -> ResponseCache {
        // quick_cache sizes its tables from an item estimate; ~2 KiB per entry is typical.
        let estimated_items = (capacity_bytes / 2048).clamp(1024, 1 << 20) as usize;
        ResponseCache {
            entries: Cache::with_weighter(estimated_items, capacity_bytes, ByteWeighter),
            categories: AtomicU64::new(0),
            product_list: AtomicU64::new(0),
            product_listing: AtomicU64::new(0),
            products: Generations::new(),
            users: Generations::new(),
            all_users: AtomicU64::new(0),
            product_names: AtomicU64::new(0),
            lookups: OnceLock::new(),
        }
    }

    pub fn categories_generation(&self) -> u64 {
        self.categories.load(Ordering::Acquire)
    }

    pub fn product_list_generation(&self) -> u64 {
        self.product_list.load(Ordering::Acquire)
    }

    pub fn product_listing_generation(&self) -> u64 {
        self.product_listing.load(Ordering::Acquire)
    }

    pub fn product_generation(&self, id: Id) -> u64 {
        self.products.get(id)
    }

    pub fn user_generation(&self, id: Id) -> u64 {
        self.users.get(id)
    }

    pub fn product_names_generation(&self) -> u64 {
        self.product_names.load(Ordering::Acquire)
    }

    /// The generation a viewer's order data is cached at.
    pub fn viewer(&self, principal: &Principal) -> Viewer {
        if principal.is_staff {
            Viewer::Staff {
                generation: self.all_users.load(Ordering::Acquire),
            }
        } else {
            Viewer::User {
                id: principal.id,
                generation: self.users.get(principal.id),
            }
        }
    }

    /// A lookup counted as a hit or a miss in the metrics.
    pub fn get_body(&self, key: &CacheKey) -> Option<CachedBody> {
        let found = self.peek_body(key);
        let counters = self.lookups.get_or_init(|| LookupCounters {
            hits: metrics::counter!("soundwave_cache_lookups_total", "result" => "hit"),
            misses: metrics::counter!("soundwave_cache_lookups_total", "result" => "miss"),
        });
        match found {
            Some(_) => counters.hits.increment(1),
            None => counters.misses.increment(1),
        }
        found
    }

    /// A lookup that counts neither as a hit nor as a miss.
    pub fn peek_body(&self, key: &CacheKey) -> Option<CachedBody> {
        match self.entries.get(key) {
            Some(CacheValue::Body(body)) => Some(body),
            _ => None,
        }
    }

    pub fn put_body(&self, key: CacheKey, body: CachedBody) {
        self.entries.insert(key, CacheValue::Body(body));
    }

    pub fn get_ids(&self, key: &CacheKey) -> Option<Arc<ProductIds>> {
        match self.entries.get(key) {
            Some(CacheValue::Ids(page)) => Some(page),
            _ => None,
        }
    }

    pub fn put_ids(&self, key: CacheKey, page: Arc<ProductIds>) {
        self.entries.insert(key, CacheValue::Ids(page));
    }

    pub fn get_principal(&self, key: &CacheKey) -> Option<Principal> {
        match self.entries.get(key) {
            Some(CacheValue::Principal(p)) => Some(p),
            _ => None,
        }
    }

    pub fn put_principal(&self, key: CacheKey, principal: Principal) {
        self.entries.insert(key, CacheValue::Principal(principal));
    }

    /// Makes every entry that `changes` made stale unreachable. Called after the commit and
    /// before the writer answers its callers.
    pub fn invalidate(&self, changes: &ChangeSet) {
        if changes.everything {
            self.invalidate_all();
            return;
        }
        if changes.categories {
            self.categories.fetch_add(1, Ordering::AcqRel);
        }
        if !changes.products.is_empty() {
            self.product_list.fetch_add(1, Ordering::AcqRel);
            for &id in &changes.products {
                self.products.bump(id);
            }
        }
        if !changes.users.is_empty() {
            self.all_users.fetch_add(1, Ordering::AcqRel);
            for &id in &changes.users {
                self.users.bump(id);
            }
        }
        if changes.product_names {
            self.product_names.fetch_add(1, Ordering::AcqRel);
        }
        if changes.product_listing {
            self.product_listing.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Makes every entry unreachable (the whole state was replaced).
    fn invalidate_all(&self) {
        for generation in [
            &self.categories,
            &self.product_list,
            &self.product_listing,
            &self.all_users,
            &self.product_names,
        ] {
            generation.fetch_add(1, Ordering::AcqRel);
        }
        for stripe in self
            .products
            .stripes
            .iter()
            .chain(self.users.stripes.iter())
        {
            stripe.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Entries held and their weight, for health and metrics.
    pub fn usage(&self) -> (usize, u64) {
        (self.entries.len(), self.entries.weight())
    }
}

/// Product lists. A list is rebuilt after every stock change, so it is built from cached
/// parts: the ids the query selects ([`ProductIds`], kept across stock and price changes,
/// until a product joins, leaves or moves in a list) and each product's JSON (the bytes of
/// its detail response).
impl ResponseCache {
    /// The key of one product's detail response.
    pub fn product_key(&self, id: Id) -> CacheKey {
        CacheKey::Product {
            generation: self.product_generation(id),
            id,
        }
    }

    /// The JSON array of the products `query` selects, and how many match in all.
    pub fn product_list(
        &self,
        store: &Store,
        query: &ProductQuery,
    ) -> Result<(Bytes, usize), StoreError> {
        let page = self.product_ids(store, query)?;
        match self.assemble_list(store, &page.ids)? {
            Some(body) => Ok((body, page.total)),
            None => {
                // A product went away between the cached ids and now: one consistent read.
                let reader = store.read()?;
                let fresh = reader.products(query)?;
                let images = fresh
                    .items
                    .iter()
                    .map(|p| reader.product_images(p.id))
                    .collect::<Result<Vec<_>, _>>()?;
                let json: Vec<ProductJson> = fresh
                    .items
                    .iter()
                    .zip(&images)
                    .map(|(product, images)| ProductJson::new(product, images))
                    .collect();
                Ok((json_bytes(&json), fresh.total))
            }
        }
    }

    /// A JSON array of the products with these ids, or `None` if one no longer exists.
    fn assemble_list(&self, store: &Store, ids: &[u64]) -> Result<Option<Bytes>, StoreError> {
        let mut body = Vec::with_capacity(2 + ids.len() * 256);
        body.push(b'[');
        let mut reader = None;
        for (n, &id) in ids.iter().enumerate() {
            if n > 0 {
                body.push(b',');
            }
            match self.product_json(store, &mut reader, id)? {
                Some(json) => body.extend_from_slice(&json),
                None => return Ok(None),
            }
        }
        body.push(b']');
        Ok(Some(body.into()))
    }

    /// The ids a product list query selects, from the cache or the store.
    fn product_ids(
        &self,
        store: &Store,
        query: &ProductQuery,
    ) -> Result<Arc<ProductIds>, StoreError> {
        let listing = if query.needs_records() {
            self.product_list_generation()
        } else {
            self.product_listing_generation()
        };
        let key = CacheKey::ProductIds {
            listing,
            category: query.category,
            name: query.name_contains.clone(),
            sort: query.sort,
            stock: query.stock,
            limit: query.limit,
            offset: query.offset,
        };
        if let Some(page) = self.get_ids(&key) {
            return Ok(page);
        }
        let page = store.read()?.products(query)?;
        let ids = Arc::new(ProductIds {
            ids: page.items.iter().map(|p| p.id).collect(),
            total: page.total,
        });
        self.put_ids(key, ids.clone());
        Ok(ids)
    }

    /// One product's JSON, the same bytes as its detail response: from the cache, or read
    /// (through one reader shared by a whole list) and cached. `None` if it no longer exists.
    fn product_json(
        &self,
        store: &Store,
        reader: &mut Option<StoreReader>,
        id: u64,
    ) -> Result<Option<Bytes>, StoreError> {
        let key = self.product_key(id);
        if let Some(hit) = self.peek_body(&key) {
            return Ok(Some(hit.body));
        }
        let reader = match reader {
            Some(reader) => reader,
            None => reader.insert(store.read()?),
        };
        let Some(product) = reader.product(id)? else {
            return Ok(None);
        };
        let images = reader.product_images(id)?;
        let body = json_bytes(&ProductJson::new(&product, &images));
        // Only products on sale may answer their detail from the cache.
        if !product.archived {
            self.put_body(key, CachedBody::new(body.clone()));
        }
        Ok(Some(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(text: &'static str) -> CachedBody {
        CachedBody::new(Bytes::from_static(text.as_bytes()))
    }

    #[test]
    fn a_change_makes_earlier_entries_unreachable() {
        let cache = ResponseCache::new(1 << 20);
        let key = |cache: &ResponseCache| CacheKey::Product {
            generation: cache.product_generation(7),
            id: 7,
        };
        cache.put_body(key(&cache), body("old"));
        assert!(cache.get_body(&key(&cache)).is_some());

        let mut changes = ChangeSet::default();
        changes.products.insert(7);
        cache.invalidate(&changes);
        assert!(cache.get_body(&key(&cache)).is_none());
    }

    #[test]
    fn a_replaced_state_makes_every_entry_unreachable() {
        let cache = ResponseCache::new(1 << 20);
        let product = |cache: &ResponseCache| CacheKey::Product {
            generation: cache.product_generation(3),
            id: 3,
        };
        let me = |cache: &ResponseCache| CacheKey::Me {
            generation: cache.user_generation(9),
            id: 9,
        };
        cache.put_body(product(&cache), body("p"));
        cache.put_body(me(&cache), body("m"));
        cache.invalidate(&ChangeSet::everything());
        assert!(cache.get_body(&product(&cache)).is_none());
        assert!(cache.get_body(&me(&cache)).is_none());
    }

    #[test]
    fn one_users_change_leaves_another_users_entries() {
        let cache = ResponseCache::new(1 << 20);
        let alice = Principal {
            id: 1,
            username: "alice".into(),
            is_staff: false,
        };
        let bob = Principal {
            id: 2,
            username: "bob".into(),
            is_staff: false,
        };
        let list = |cache: &ResponseCache, p: &Principal| CacheKey::OrderList {
            viewer: cache.viewer(p),
            limit: 10,
            offset: 0,
        };
        cache.put_body(list(&cache, &alice), body("a"));
        cache.put_body(list(&cache, &bob), body("b"));
        let mut changes = ChangeSet::default();
        changes.users.insert(1);
        cache.invalidate(&changes);
        assert!(cache.get_body(&list(&cache, &alice)).is_none());
        assert!(cache.get_body(&list(&cache, &bob)).is_some());
    }
}
