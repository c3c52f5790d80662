//! [`CatalogIndex`]: the products on sale (id, category, lower-cased name) held in memory, so
//! that a product list query finds its page of ids, in order, and how many match, without
//! decoding a product.
//!
//! A product's *slot* is its position among the products on sale in id order. Names are
//! kept lower-cased, concatenated in slot order into one buffer, so a `name_contains` filter
//! is one SIMD substring scan (`memchr::memmem`) over the whole catalog. Name order and each
//! category's slots (in id and in name order) are kept as lists of slots.
//!
//! The index is immutable: a write that changes what lists hold makes a new one from the
//! old one in a few linear passes (a full sort only when it is built from scratch), and the
//! [`Store`](crate::Store) swaps it in at the commit, so every reader sees the index of the
//! state its read transaction sees. Stock and price changes never touch it.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::ops::Range;

use memchr::memmem::Finder;
use redb::ReadableTable;

use crate::error::StoreError;
use crate::model::{Id, Product};
use crate::query::{ProductQuery, ProductSort};
use crate::tables::decode;

/// A position among the products on sale, in id order.
type Slot = u32;

/// What the index keeps of a product on sale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listed {
    pub(crate) category: Id,
    pub(crate) lower_name: String,
}

impl Listed {
    /// How `product` is listed, or `None` if it is not on sale.
    pub(crate) fn of(product: &Product) -> Option<Listed> {
        (!product.archived).then(|| Listed {
            category: product.category,
            lower_name: product.name.to_lowercase(),
        })
    }
}

/// One page of a product list as ids, and how many products match in all.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct IdPage {
    pub(crate) ids: Vec<Id>,
    pub(crate) total: usize,
}

/// One category's slots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct CategorySlots {
    by_id: Vec<Slot>,
    by_name: Vec<Slot>,
}

/// The products on sale, indexed for product list queries. See the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CatalogIndex {
    /// Ids of the products on sale, ascending: slot → id.
    ids: Vec<Id>,
    /// Slot → category.
    categories: Vec<Id>,
    /// Every slot's lower-cased name, concatenated in slot order.
    names: Vec<u8>,
    /// Where each slot's name starts in `names`, and one more: the end of the last.
    name_starts: Vec<usize>,
    /// Every slot in (lower-cased name, id) order.
    by_name: Vec<Slot>,
    /// Categories that have products on sale, with their slots.
    by_category: BTreeMap<Id, CategorySlots>,
}

impl Default for CatalogIndex {
    /// An index of no products.
    fn default() -> CatalogIndex {
        CatalogIndex {
            ids: Vec::new(),
            categories: Vec::new(),
            names: Vec::new(),
            name_starts: vec![0],
            by_name: Vec::new(),
            by_category: BTreeMap::new(),
        }
    }
}

/// Marks an old slot that has no place in the next index (removed, or changed and placed
/// anew).
const GONE: Slot = Slot::MAX;

impl CatalogIndex {
    /// The index of every product on sale in a products table.
    pub(crate) fn from_table(
        products: &impl ReadableTable<u64, &'static [u8]>,
    ) -> Result<CatalogIndex, StoreError> {
        let mut listed = Vec::new();
        for entry in products.iter()? {
            let (id, value) = entry?;
            let product: Product = decode(value.value())?;
            listed.push((id.value(), Listed::of(&product)));
        }
        Ok(CatalogIndex::default()
            .with_changes(listed)?
            .unwrap_or_default())
    }

    /// This index after the products with these ids changed to what `products` holds now,
    /// or `None` if nothing the index keeps changed (stock, price, description).
    pub(crate) fn updated(
        &self,
        products: &impl ReadableTable<u64, &'static [u8]>,
        ids: impl IntoIterator<Item = Id>,
    ) -> Result<Option<CatalogIndex>, StoreError> {
        let mut changes = Vec::new();
        for id in ids {
            let product: Option<Product> = products
                .get(id)?
                .map(|value| decode(value.value()))
                .transpose()?;
            changes.push((id, product.as_ref().and_then(Listed::of)));
        }
        self.with_changes(changes)
    }

    /// How many products are on sale.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }

    fn slot_of(&self, id: Id) -> Option<usize> {
        self.ids.binary_search(&id).ok()
    }

    fn name(&self, slot: Slot) -> &[u8] {
        let slot = slot as usize;
        &self.names[self.name_starts[slot]..self.name_starts[slot + 1]]
    }

    /// Name order: by lower-cased name, then by id (slots are in id order).
    fn name_order(&self, a: Slot, b: Slot) -> Ordering {
        self.name(a).cmp(self.name(b)).then(a.cmp(&b))
    }

    /// How `id` is listed now, if it is on sale.
    fn listed(&self, id: Id) -> Option<(Id, &[u8])> {
        let slot = self.slot_of(id)?;
        Some((self.categories[slot], self.name(slot as Slot)))
    }

    fn push(&mut self, id: Id, category: Id, lower_name: &[u8]) -> Result<Slot, StoreError> {
        let slot = self.ids.len();
        check_room(slot + 1)?;
        self.ids.push(id);
        self.categories.push(category);
        self.names.extend_from_slice(lower_name);
        self.name_starts.push(self.names.len());
        Ok(slot as Slot)
    }

    /// Copies the old index's slots `run` (consecutive, unchanged) to the end of this one,
    /// noting where each went.
    fn copy_run(
        &mut self,
        old: &CatalogIndex,
        run: Range<usize>,
        old_to_new: &mut [Slot],
    ) -> Result<(), StoreError> {
        if run.is_empty() {
            return Ok(());
        }
        let first = self.ids.len();
        check_room(first + run.len())?;
        self.ids.extend_from_slice(&old.ids[run.clone()]);
        self.categories
            .extend_from_slice(&old.categories[run.clone()]);
        let (from, to) = (old.name_starts[run.start], old.name_starts[run.end]);
        let base = self.names.len();
        self.names.extend_from_slice(&old.names[from..to]);
        self.name_starts.extend(
            old.name_starts[run.start + 1..=run.end]
                .iter()
                .map(|&end| end - from + base),
        );
        for (new, old_slot) in (first as Slot..).zip(run) {
            old_to_new[old_slot] = new;
        }
        Ok(())
    }

    /// This index with each `(id, listing)` applied (`None`: not on sale), or `None` if that
    /// changes nothing. An id appears at most once in `changes`.
    pub(crate) fn with_changes(
        &self,
        mut changes: Vec<(Id, Option<Listed>)>,
    ) -> Result<Option<CatalogIndex>, StoreError> {
        changes.retain(|(id, listed)| {
            let now = self.listed(*id);
            let next = listed
                .as_ref()
                .map(|l| (l.category, l.lower_name.as_bytes()));
            now != next
        });
        if changes.is_empty() {
            return Ok(None);
        }
        changes.sort_unstable_by_key(|(id, _)| *id);
        debug_assert!(changes.windows(2).all(|w| w[0].0 != w[1].0));

        // The id-ordered columns: unchanged runs copied, changed products placed anew.
        let mut name_starts = Vec::with_capacity(self.ids.len() + changes.len() + 1);
        name_starts.push(0);
        let mut next = CatalogIndex {
            ids: Vec::with_capacity(self.ids.len() + changes.len()),
            categories: Vec::with_capacity(self.ids.len() + changes.len()),
            names: Vec::with_capacity(self.names.len()),
            name_starts,
            ..CatalogIndex::default()
        };
        let mut old_to_new = vec![GONE; self.ids.len()];
        let mut placed: Vec<Slot> = Vec::new();
        let mut copied_to = 0;
        for (id, listed) in changes {
            let at = copied_to + self.ids[copied_to..].partition_point(|&other| other < id);
            next.copy_run(self, copied_to..at, &mut old_to_new)?;
            copied_to = at;
            if self.ids.get(at) == Some(&id) {
                copied_to += 1;
            }
            if let Some(listed) = listed {
                placed.push(next.push(id, listed.category, listed.lower_name.as_bytes())?);
            }
        }
        next.copy_run(self, copied_to..self.ids.len(), &mut old_to_new)?;

        // Orders: the old ones renumbered (still in order), the placed slots merged in.
        next.by_name = merge(
            remap(&self.by_name, &old_to_new),
            &sorted_by_name(&next, placed.clone()),
            |a, b| next.name_order(a, b),
        );
        let mut by_category: BTreeMap<Id, CategorySlots> = self
            .by_category
            .iter()
            .map(|(&category, slots)| {
                let remapped = CategorySlots {
                    by_id: remap(&slots.by_id, &old_to_new),
                    by_name: remap(&slots.by_name, &old_to_new),
                };
                (category, remapped)
            })
            .collect();
        let mut placed_by_category: BTreeMap<Id, Vec<Slot>> = BTreeMap::new();
        for &slot in &placed {
            placed_by_category
                .entry(next.categories[slot as usize])
                .or_default()
                .push(slot);
        }
        for (category, placed) in placed_by_category {
            let slots = by_category.entry(category).or_default();
            slots.by_id = merge(std::mem::take(&mut slots.by_id), &placed, |a, b| a.cmp(&b));
            slots.by_name = merge(
                std::mem::take(&mut slots.by_name),
                &sorted_by_name(&next, placed),
                |a, b| next.name_order(a, b),
            );
        }
        by_category.retain(|_, slots| !slots.by_id.is_empty());
        next.by_category = by_category;
        Ok(Some(next))
    }

    /// The ids of one page of products on sale matching `query`, in its order, and how
    /// many match in all.
    pub(crate) fn query(&self, query: &ProductQuery) -> IdPage {
        // Newest first is id order backwards. Price and stock orders are the reader's,
        // over every match in id order (the index keeps neither); so are stock filters.
        if query.sort == ProductSort::IdDesc || query.sort.needs_records() {
            let every = self.query(&ProductQuery {
                sort: ProductSort::Id,
                offset: 0,
                limit: usize::MAX,
                ..query.clone()
            });
            let page = |ids: &mut dyn Iterator<Item = Id>| -> Vec<Id> {
                ids.skip(query.offset).take(query.limit).collect()
            };
            let ids = if query.sort == ProductSort::IdDesc {
                page(&mut every.ids.into_iter().rev())
            } else {
                page(&mut every.ids.into_iter())
            };
            return IdPage {
                ids,
                total: every.total,
            };
        }
        let needle = query
            .name_contains
            .as_deref()
            .map(str::to_lowercase)
            .filter(|needle| !needle.is_empty());
        let category = match query.category {
            Some(id) => match self.by_category.get(&id) {
                Some(slots) => Some((id, slots)),
                None => return IdPage::default(),
            },
            None => None,
        };
        let Some(needle) = needle else {
            return match (category, query.sort) {
                (None, ProductSort::Id) => IdPage {
                    ids: self
                        .ids
                        .iter()
                        .skip(query.offset)
                        .take(query.limit)
                        .copied()
                        .collect(),
                    total: self.ids.len(),
                },
                (None, sort) => self.page_of(&self.by_name, sort, query),
                (Some((_, slots)), ProductSort::Id) => {
                    self.page_of(&slots.by_id, ProductSort::Id, query)
                }
                (Some((_, slots)), sort) => self.page_of(&slots.by_name, sort, query),
            };
        };
        let finder = Finder::new(needle.as_bytes());
        let in_category = |slot: usize| category.is_none_or(|(id, _)| self.categories[slot] == id);
        if query.sort == ProductSort::Id {
            // Matches come in slot order, which is id order.
            let window = query.offset..query.offset.saturating_add(query.limit);
            let mut page = IdPage::default();
            self.for_each_match(&finder, |slot| {
                if in_category(slot) {
                    if window.contains(&page.total) {
                        page.ids.push(self.ids[slot]);
                    }
                    page.total += 1;
                }
            });
            return page;
        }
        // Name order: mark the matches, then walk the name order picking marked slots.
        let mut marked = vec![0u64; self.ids.len().div_ceil(64)];
        let mut total = 0;
        self.for_each_match(&finder, |slot| {
            if in_category(slot) {
                marked[slot / 64] |= 1 << (slot % 64);
                total += 1;
            }
        });
        let order = match category {
            Some((_, slots)) => &slots.by_name,
            None => &self.by_name,
        };
        let is_marked = |slot: &&Slot| {
            let slot = **slot as usize;
            marked[slot / 64] & (1 << (slot % 64)) != 0
        };
        let pick = |slots: &mut dyn Iterator<Item = &Slot>| -> Vec<Id> {
            slots
                .filter(is_marked)
                .skip(query.offset)
                .take(query.limit)
                .map(|&slot| self.ids[slot as usize])
                .collect()
        };
        let ids = if query.sort == ProductSort::NameDesc {
            pick(&mut order.iter().rev())
        } else {
            pick(&mut order.iter())
        };
        IdPage { ids, total }
    }

    /// One page of `order` (ascending, or read backwards for [`ProductSort::NameDesc`]).
    fn page_of(&self, order: &[Slot], sort: ProductSort, query: &ProductQuery) -> IdPage {
        let to_id = |&slot: &Slot| self.ids[slot as usize];
        let ids = if sort == ProductSort::NameDesc {
            order
                .iter()
                .rev()
                .skip(query.offset)
                .take(query.limit)
                .map(to_id)
                .collect()
        } else {
            order
                .iter()
                .skip(query.offset)
                .take(query.limit)
                .map(to_id)
                .collect()
        };
        IdPage {
            ids,
            total: order.len(),
        }
    }

    /// Calls `found` with every slot whose name contains the needle, in slot order.
    fn for_each_match(&self, finder: &Finder<'_>, mut found: impl FnMut(usize)) {
        let needle_len = finder.needle().len();
        let mut from = 0;
        let mut slot = 0;
        while let Some(offset) = finder.find(&self.names[from..]) {
            let at = from + offset;
            slot = self.slot_at(at, slot);
            let end = self.name_starts[slot + 1];
            if at + needle_len <= end {
                found(slot);
            }
            // One match per name; a hit running past its name's end has no other match in
            // that name either, since a later one would run past it too.
            from = end;
        }
    }

    /// The slot whose name holds byte `at` of `names`, searching from slot `from` on (whose
    /// name starts at or before `at`): a galloping search, cheap when it is close.
    fn slot_at(&self, at: usize, from: usize) -> usize {
        let ends = &self.name_starts[from + 1..];
        let mut skipped = 0;
        let mut step = 1;
        while skipped + step <= ends.len() && ends[skipped + step - 1] <= at {
            skipped += step;
            step *= 2;
        }
        let bound = (skipped + step).min(ends.len());
        from + skipped + ends[skipped..bound].partition_point(|&end| end <= at)
    }
}

/// Fails if `len` slots would not all be numbered below [`GONE`].
fn check_room(len: usize) -> Result<(), StoreError> {
    if len <= GONE as usize {
        Ok(())
    } else {
        Err(StoreError::CatalogTooLarge)
    }
}

/// `slots` renumbered through `old_to_new`, leaving out the ones that are gone.
fn remap(slots: &[Slot], old_to_new: &[Slot]) -> Vec<Slot> {
    slots
        .iter()
        .map(|&slot| old_to_new[slot as usize])
        .filter(|&slot| slot != GONE)
        .collect()
}

fn sorted_by_name(index: &CatalogIndex, mut slots: Vec<Slot>) -> Vec<Slot> {
    slots.sort_unstable_by(|&a, &b| index.name_order(a, b));
    slots
}

/// Merges `placed` (few, sorted) into `kept` (sorted by the same order): each placed slot's
/// place is found by binary search, and the runs of `kept` between are copied whole.
fn merge(kept: Vec<Slot>, placed: &[Slot], order: impl Fn(Slot, Slot) -> Ordering) -> Vec<Slot> {
    if placed.is_empty() {
        return kept;
    }
    let mut merged = Vec::with_capacity(kept.len() + placed.len());
    let mut rest = kept.as_slice();
    for &slot in placed {
        let before = rest.partition_point(|&other| order(other, slot) == Ordering::Less);
        merged.extend_from_slice(&rest[..before]);
        merged.push(slot);
        rest = &rest[before..];
    }
    merged.extend_from_slice(rest);
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(category: Id, name: &str) -> Option<Listed> {
        Some(Listed {
            category,
            lower_name: name.to_lowercase(),
        })
    }

    fn index(products: &[(Id, Id, &str)]) -> CatalogIndex {
        let changes = products
            .iter()
            .map(|&(id, category, name)| (id, listed(category, name)))
            .collect();
        CatalogIndex::default()
            .with_changes(changes)
            .unwrap()
            .unwrap_or_default()
    }

    fn query(category: Option<Id>, name: Option<&str>, sort: ProductSort) -> ProductQuery {
        ProductQuery {
            stock: Default::default(),
            category,
            name_contains: name.map(str::to_owned),
            sort,
            limit: usize::MAX,
            offset: 0,
        }
    }

    fn ids(
        index: &CatalogIndex,
        category: Option<Id>,
        name: Option<&str>,
        sort: ProductSort,
    ) -> Vec<Id> {
        let page = index.query(&query(category, name, sort));
        assert_eq!(page.total, page.ids.len());
        page.ids
    }

    /// Every slot list agrees with the columns: the index is what a fresh build gives.
    fn assert_consistent(index: &CatalogIndex) {
        let products: Vec<(Id, Id, String)> = (0..index.len())
            .map(|slot| {
                let name = String::from_utf8(index.name(slot as Slot).to_vec()).unwrap();
                (index.ids[slot], index.categories[slot], name)
            })
            .collect();
        let fresh = self::index(
            &products
                .iter()
                .map(|(id, category, name)| (*id, *category, name.as_str()))
                .collect::<Vec<_>>(),
        );
        assert_eq!(index, &fresh);
    }

    use ProductSort::{Id as ById, NameAsc, NameDesc};

    #[test]
    fn an_empty_index_lists_nothing() {
        let empty = CatalogIndex::default();
        assert_eq!(empty.len(), 0);
        for sort in [ById, NameAsc, NameDesc] {
            assert_eq!(ids(&empty, None, None, sort), Vec::<Id>::new());
            assert_eq!(ids(&empty, None, Some("a"), sort), Vec::<Id>::new());
            assert_eq!(ids(&empty, Some(1), None, sort), Vec::<Id>::new());
        }
        // Nothing on sale stays nothing.
        let none = CatalogIndex::default()
            .with_changes(vec![(1, None), (2, None)])
            .unwrap();
        assert_eq!(none, None);
    }

    #[test]
    fn lists_filter_by_category_and_name_in_every_order() {
        let index = index(&[
            (1, 1, "Fender Guitar"),
            (2, 1, "bass guitar"),
            (3, 2, "Snare"),
            (4, 1, "amp"),
            (6, 2, "Acoustic Guitar"),
            (7, 2, "Amp"),
            (9, 1, "Zither"),
        ]);
        assert_eq!(index.len(), 7);
        assert_eq!(ids(&index, None, None, ById), [1, 2, 3, 4, 6, 7, 9]);
        // Equal lower-cased names go by id, and backwards by id.
        assert_eq!(ids(&index, None, None, NameAsc), [6, 4, 7, 2, 1, 3, 9]);
        assert_eq!(ids(&index, None, None, NameDesc), [9, 3, 1, 2, 7, 4, 6]);
        assert_eq!(ids(&index, Some(1), None, ById), [1, 2, 4, 9]);
        assert_eq!(ids(&index, Some(1), None, NameAsc), [4, 2, 1, 9]);
        assert_eq!(ids(&index, Some(2), None, NameDesc), [3, 7, 6]);
        assert_eq!(ids(&index, Some(3), None, ById), Vec::<Id>::new());
        assert_eq!(ids(&index, None, Some("GUITAR"), ById), [1, 2, 6]);
        assert_eq!(ids(&index, None, Some("guitar"), NameAsc), [6, 2, 1]);
        assert_eq!(ids(&index, None, Some("guitar"), NameDesc), [1, 2, 6]);
        assert_eq!(ids(&index, Some(1), Some("uitar"), NameAsc), [2, 1]);
        assert_eq!(ids(&index, Some(2), Some("uitar"), ById), [6]);
        // An empty needle matches everything; a needle across two names matches nothing.
        assert_eq!(ids(&index, None, Some(""), ById).len(), 7);
        assert_eq!(
            ids(&index, None, Some("guitarbass"), ById),
            Vec::<Id>::new()
        );
        assert_eq!(ids(&index, None, Some("rsnare"), ById), Vec::<Id>::new());
        assert_eq!(ids(&index, None, Some("rb"), NameAsc), Vec::<Id>::new());
        assert_eq!(
            ids(&index, None, Some("ampacoustic"), ById),
            Vec::<Id>::new()
        );
        assert_eq!(ids(&index, None, Some("violin"), NameAsc), Vec::<Id>::new());
        assert_consistent(&index);
    }

    #[test]
    fn pages_count_every_match() {
        let products: Vec<(Id, Id, String)> = (1..=300)
            .map(|id| (id, id % 3, format!("item {:03}", 1000 - id)))
            .collect();
        let borrowed: Vec<(Id, Id, &str)> = products
            .iter()
            .map(|(id, category, name)| (*id, *category, name.as_str()))
            .collect();
        let index = index(&borrowed);
        for (category, name, sort) in [
            (None, None, ById),
            (Some(1), None, NameDesc),
            (None, Some("item 9"), NameAsc),
            (Some(2), Some("9"), ById),
            (Some(0), Some("8"), NameDesc),
        ] {
            let all = ids(&index, category, name, sort);
            for (offset, limit) in [(0, 10), (5, 7), (all.len() - 1, 5), (all.len(), 1), (0, 0)] {
                let page = index.query(&ProductQuery {
                    stock: Default::default(),
                    offset,
                    limit,
                    ..query(category, name, sort)
                });
                assert_eq!(page.total, all.len());
                let expected: Vec<Id> = all.iter().copied().skip(offset).take(limit).collect();
                assert_eq!(
                    page.ids, expected,
                    "{category:?} {name:?} {sort:?} {offset} {limit}"
                );
            }
        }
    }

    #[test]
    fn empty_names_and_unicode_are_matched_like_str_contains() {
        let index = index(&[
            (1, 1, ""),
            (2, 1, ""),
            (3, 1, "ÉCOLE Straße"),
            (4, 1, ""),
            (5, 1, "e"),
            (6, 1, "ß"),
        ]);
        assert_eq!(ids(&index, None, Some("é"), ById), [3]);
        assert_eq!(ids(&index, None, Some("STRASSE"), ById), Vec::<Id>::new());
        assert_eq!(ids(&index, None, Some("straße"), ById), [3]);
        assert_eq!(ids(&index, None, Some("e"), ById), [3, 5]);
        // Name order is byte order of the UTF-8 lower-cased names: "ß" (C3 9F) < "é" (C3 A9).
        assert_eq!(ids(&index, None, Some("ß"), NameDesc), [3, 6]);
        assert_eq!(ids(&index, None, None, NameAsc), [1, 2, 4, 5, 6, 3]);
    }

    #[test]
    fn changes_follow_renames_moves_removals_and_additions() {
        let mut index = index(&[
            (1, 1, "Fender Guitar"),
            (2, 1, "bass guitar"),
            (3, 2, "Snare"),
            (4, 1, "amp"),
        ]);
        let mut apply = |changes: Vec<(Id, Option<Listed>)>| {
            index = index.with_changes(changes).unwrap().expect("a change");
            assert_consistent(&index);
            index.clone()
        };
        // A rename moves the product in name order.
        let renamed = apply(vec![(2, listed(1, "Zebra bass"))]);
        assert_eq!(ids(&renamed, None, None, NameAsc), [4, 1, 3, 2]);
        assert_eq!(ids(&renamed, None, Some("guitar"), ById), [1]);
        // A move changes both categories' lists.
        let moved = apply(vec![(1, listed(2, "Fender Guitar"))]);
        assert_eq!(ids(&moved, Some(1), None, ById), [2, 4]);
        assert_eq!(ids(&moved, Some(2), None, NameAsc), [1, 3]);
        // Removals and additions in one change; a category left empty is gone.
        let mixed = apply(vec![
            (3, None),
            (1, None),
            (10, listed(3, "Drum")),
            (8, listed(3, "cymbal")),
        ]);
        assert_eq!(ids(&mixed, None, None, ById), [2, 4, 8, 10]);
        assert_eq!(ids(&mixed, None, None, NameAsc), [4, 8, 10, 2]);
        assert_eq!(ids(&mixed, Some(2), None, ById), Vec::<Id>::new());
        assert_eq!(ids(&mixed, Some(3), None, NameDesc), [10, 8]);
        assert!(!mixed.by_category.contains_key(&2));
        // Everything removed.
        let gone = apply(vec![(2, None), (4, None), (8, None), (10, None)]);
        assert_eq!(gone.len(), 0);
        assert_eq!(gone.names, b"");
    }

    #[test]
    fn a_change_that_changes_nothing_listed_makes_no_new_index() {
        let index = index(&[(1, 1, "Amp"), (2, 1, "Bass")]);
        // The same category and lower-cased name (a case-only rename, or a stock change).
        assert_eq!(
            index.with_changes(vec![(1, listed(1, "AMP"))]).unwrap(),
            None
        );
        // A product not on sale that stays so (erased, or archived).
        assert_eq!(index.with_changes(vec![(7, None)]).unwrap(), None);
        assert!(
            index
                .with_changes(vec![(1, listed(2, "amp"))])
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn slot_at_finds_the_name_holding_a_byte() {
        let index = index(&[
            (1, 1, "ab"),
            (2, 1, ""),
            (3, 1, ""),
            (4, 1, "cde"),
            (5, 1, "f"),
        ]);
        // names "abcdef": a b | c d e | f
        let expected = [0, 0, 3, 3, 3, 4];
        for (at, &slot) in expected.iter().enumerate() {
            // Searching from any slot that starts at or before `at`.
            for from in (0..=slot).filter(|&from| index.name_starts[from] <= at) {
                assert_eq!(index.slot_at(at, from), slot, "at {at} from {from}");
            }
        }
    }
}
