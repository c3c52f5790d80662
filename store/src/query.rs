//! What a product list asks for ([`ProductQuery`], [`ProductSort`]) and a [`Page`] of any
//! list: the vocabulary shared by the catalog index and the store's readers.

use crate::model::Id;

/// How a product list is ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ProductSort {
    #[default]
    Id,
    NameAsc,
    NameDesc,
}

/// A product list request: filters, order and page.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProductQuery {
    pub category: Option<Id>,
    /// Case-insensitive substring of the name; matched against the lower-cased name.
    pub name_contains: Option<String>,
    pub sort: ProductSort,
    pub limit: usize,
    pub offset: usize,
}

/// One page of a list and how many entries match in all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub total: usize,
}
