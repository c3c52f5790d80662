//! What a product list asks for ([`ProductQuery`], [`ProductSort`]) and a [`Page`] of any
//! list: the vocabulary shared by the catalog index and the store's readers.

use crate::model::Id;

/// How a product list is ordered. Ties are broken by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ProductSort {
    #[default]
    Id,
    NameAsc,
    NameDesc,
    /// Newest first.
    IdDesc,
    PriceAsc,
    PriceDesc,
    StockAsc,
    StockDesc,
}

impl ProductSort {
    /// Whether the order depends on what the catalog index does not keep (price, stock).
    pub fn needs_records(self) -> bool {
        matches!(
            self,
            ProductSort::PriceAsc
                | ProductSort::PriceDesc
                | ProductSort::StockAsc
                | ProductSort::StockDesc
        )
    }
}

/// Which products a list keeps by their stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct StockFilter {
    /// Only products with at least one in stock.
    pub in_stock: bool,
    /// Only products with at most this many in stock (the low-stock view).
    pub at_most: Option<u32>,
}

impl StockFilter {
    pub fn is_any(self) -> bool {
        self == StockFilter::default()
    }

    pub fn keeps(self, stock: u32) -> bool {
        (!self.in_stock || stock > 0) && self.at_most.is_none_or(|most| stock <= most)
    }
}

/// A product list request: filters, order and page.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProductQuery {
    pub category: Option<Id>,
    /// Case-insensitive substring of the name; matched against the lower-cased name.
    pub name_contains: Option<String>,
    pub sort: ProductSort,
    pub stock: StockFilter,
    pub limit: usize,
    pub offset: usize,
}

impl ProductQuery {
    /// Whether the products' records must be read to answer: a price or stock order, or a
    /// stock filter. Such a list changes with every stock or price change.
    pub fn needs_records(&self) -> bool {
        self.sort.needs_records() || !self.stock.is_any()
    }
}

/// One page of a list and how many entries match in all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub total: usize,
}
