//! Categories and products: anyone reads (from the response cache), staff write.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use http::StatusCode;
use store::{
    Command, CommandOutcome, NewProduct, ProductChanges, ProductQuery, ProductSort, StockFilter,
};

use super::request::{IdPath, PageRequest, QueryParams};
use super::response::{cached, no_content, send_json};
use crate::auth::Staff;
use crate::cache::{CacheKey, CachedBody};
use crate::error::{ApiError, ApiResult};
use crate::input::{Fields, JsonObject};
use crate::output::{CategoryJson, ProductJson, json_bytes};
use crate::state::AppState;

const NAME_MAX_CHARS: usize = 200;
const DESCRIPTION_MAX_CHARS: usize = 10_000;
/// Django's PositiveIntegerField bound.
const STOCK_MAX: i64 = 2_147_483_647;
const NAME_FILTER_MAX_CHARS: usize = 200;

pub async fn list_categories(
    State(state): State<Arc<AppState>>,
    params: QueryParams,
) -> ApiResult<Response> {
    let page = PageRequest::parse(&params, state.limits.page_size)?;
    let key = category_list_key(&state, page);
    cached(&state, key, || {
        let categories = state.read()?.categories()?;
        let json: Vec<CategoryJson> = categories
            .iter()
            .skip(page.offset)
            .take(page.limit)
            .map(CategoryJson::from)
            .collect();
        Ok(CachedBody::list(
            json_bytes(&json),
            Some(categories.len()),
            page.next_link("/api/categories/", &params, categories.len()),
        ))
    })
}

pub async fn get_category(
    State(state): State<Arc<AppState>>,
    IdPath(id): IdPath,
) -> ApiResult<Response> {
    let key = category_key(&state, id);
    cached(&state, key, || {
        let category = state.read()?.category(id)?.ok_or(ApiError::NotFound)?;
        Ok(CachedBody::new(json_bytes(&CategoryJson::from(&category))))
    })
}

fn category_list_key(state: &AppState, page: PageRequest) -> CacheKey {
    CacheKey::CategoryList {
        generation: state.cache.categories_generation(),
        limit: page.limit,
        offset: page.offset,
    }
}

fn category_key(state: &AppState, id: u64) -> CacheKey {
    CacheKey::Category {
        generation: state.cache.categories_generation(),
        id,
    }
}

fn product_list_key(state: &AppState, query: &ProductQuery) -> CacheKey {
    CacheKey::ProductList {
        generation: state.cache.product_list_generation(),
        category: query.category,
        name: query.name_contains.clone(),
        sort: query.sort,
        stock: query.stock,
        limit: query.limit,
        offset: query.offset,
    }
}

/// A catalog read the router's cached-read fast path ([`super::CachedReads`]) may answer.
#[derive(Debug, PartialEq)]
pub(super) enum CatalogRead {
    Product(u64),
    Category(u64),
    Products(ProductQuery),
    Categories(PageRequest),
}

impl CatalogRead {
    /// The catalog read a request's path and query ask for, parsed as the handlers parse
    /// them. `None` for any other request, and for one the handler would answer with an
    /// error: the router then takes it as usual.
    pub(super) fn parse(path: &str, query: Option<&str>, page_size: usize) -> Option<Self> {
        let rest = path.strip_prefix("/api/")?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (collection, id) = match rest.split_once('/') {
            None => (rest, None),
            // Only plain digits: anything else (percent-encoded, signed) is the router's.
            Some((collection, id))
                if !id.is_empty() && id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit()) =>
            {
                (
                    collection,
                    Some(id.parse::<u64>().ok().filter(|&id| id > 0)?),
                )
            }
            Some(_) => return None,
        };
        let params = || QueryParams::parse(query.unwrap_or(""));
        match (collection, id) {
            ("products", Some(id)) => Some(CatalogRead::Product(id)),
            ("categories", Some(id)) => Some(CatalogRead::Category(id)),
            ("products", None) => product_query(&params(), page_size)
                .ok()
                .map(CatalogRead::Products),
            ("categories", None) => PageRequest::parse(&params(), page_size)
                .ok()
                .map(CatalogRead::Categories),
            _ => None,
        }
    }

    /// The route, as metrics label it.
    pub(super) fn route(&self) -> &'static str {
        match self {
            CatalogRead::Product(_) => "/api/products/{id}",
            CatalogRead::Category(_) => "/api/categories/{id}",
            CatalogRead::Products(_) => "/api/products",
            CatalogRead::Categories(_) => "/api/categories",
        }
    }

    /// The key its handler caches the answer under, so a hit is the body it would send.
    pub(super) fn cache_key(&self, state: &AppState) -> CacheKey {
        match self {
            CatalogRead::Product(id) => state.cache.product_key(*id),
            CatalogRead::Category(id) => category_key(state, *id),
            CatalogRead::Products(query) => product_list_key(state, query),
            CatalogRead::Categories(page) => category_list_key(state, *page),
        }
    }
}

fn category_name(body: &JsonObject, partial: bool) -> ApiResult<Option<String>> {
    let mut fields = Fields::new(&body.0, partial);
    let name = fields.text("name", true, false, NAME_MAX_CHARS);
    fields.finish()?;
    Ok(name)
}

fn name_required() -> ApiError {
    ApiError::field("name", "This field is required.")
}

async fn write_category(
    state: &AppState,
    command: Command,
    status: StatusCode,
) -> ApiResult<Response> {
    match state.submit(command).await? {
        CommandOutcome::Category(category) => Ok(send_json(
            status,
            json_bytes(&CategoryJson::from(&category)),
        )),
        other => Err(ApiError::unexpected(other)),
    }
}

pub async fn create_category(
    State(state): State<Arc<AppState>>,
    _staff: Staff,
    body: JsonObject,
) -> ApiResult<Response> {
    let name = category_name(&body, false)?.ok_or_else(name_required)?;
    write_category(
        &state,
        Command::CreateCategory { name },
        StatusCode::CREATED,
    )
    .await
}

pub async fn put_category(
    State(state): State<Arc<AppState>>,
    _staff: Staff,
    IdPath(id): IdPath,
    body: JsonObject,
) -> ApiResult<Response> {
    let name = category_name(&body, false)?.ok_or_else(name_required)?;
    write_category(&state, Command::UpdateCategory { id, name }, StatusCode::OK).await
}

pub async fn patch_category(
    State(state): State<Arc<AppState>>,
    _staff: Staff,
    IdPath(id): IdPath,
    body: JsonObject,
) -> ApiResult<Response> {
    match category_name(&body, true)? {
        Some(name) => {
            write_category(&state, Command::UpdateCategory { id, name }, StatusCode::OK).await
        }
        None => get_category(State(state), IdPath(id)).await,
    }
}

pub async fn delete_category(
    State(state): State<Arc<AppState>>,
    _staff: Staff,
    IdPath(id): IdPath,
) -> ApiResult<Response> {
    state.submit(Command::DeleteCategory { id }).await?;
    Ok(no_content())
}

/// The product list's `ordering` values (Django REST framework's `OrderingFilter`
/// spelling: a leading `-` is descending; `-id` is newest first).
const ORDERINGS: [(&str, ProductSort); 8] = [
    ("id", ProductSort::Id),
    ("-id", ProductSort::IdDesc),
    ("name", ProductSort::NameAsc),
    ("-name", ProductSort::NameDesc),
    ("price", ProductSort::PriceAsc),
    ("-price", ProductSort::PriceDesc),
    ("stock", ProductSort::StockAsc),
    ("-stock", ProductSort::StockDesc),
];

fn ordering(raw: &str) -> Option<ProductSort> {
    ORDERINGS
        .iter()
        .find(|(name, _)| *name == raw)
        .map(|&(_, sort)| sort)
}

/// Parses the product list's filters; bad values are 400s, never 500s.
fn product_query(params: &QueryParams, page_size: usize) -> ApiResult<ProductQuery> {
    let page = PageRequest::parse(params, page_size)?;
    let category = match params.get("category").map(String::as_str) {
        None | Some("") => None,
        Some(raw) => Some(raw.parse::<u64>().map_err(|_| {
            ApiError::field(
                "category",
                "Select a valid choice. That choice is not one of the available choices.",
            )
        })?),
    };
    let name_contains = match params.get("name").map(|n| n.trim()) {
        None | Some("") => None,
        Some(name) if name.chars().count() > NAME_FILTER_MAX_CHARS => {
            return Err(ApiError::field(
                "name",
                format!("Ensure this value has no more than {NAME_FILTER_MAX_CHARS} characters."),
            ));
        }
        Some(name) => Some(name.to_lowercase()),
    };
    let by_name = match params.get("order_by_name").map(String::as_str) {
        None | Some("") => None,
        Some("asc") => Some(ProductSort::NameAsc),
        Some("desc") => Some(ProductSort::NameDesc),
        Some(_) => {
            return Err(ApiError::field(
                "order_by_name",
                "Select a valid choice: asc or desc.",
            ));
        }
    };
    let ordering = match params.get("ordering").map(String::as_str) {
        None | Some("") => None,
        Some(raw) => Some(ordering(raw).ok_or_else(|| {
            ApiError::field(
                "ordering",
                format!(
                    "Select a valid choice: {}.",
                    ORDERINGS.map(|(n, _)| n).join(", ")
                ),
            )
        })?),
    };
    let sort = match (by_name, ordering) {
        (Some(_), Some(_)) => {
            return Err(ApiError::field(
                "ordering",
                "Give either ordering or order_by_name, not both.",
            ));
        }
        (Some(sort), None) | (None, Some(sort)) => sort,
        (None, None) => ProductSort::Id,
    };
    let stock = StockFilter {
        in_stock: match params.get("in_stock").map(String::as_str) {
            None | Some("") | Some("false") | Some("0") => false,
            Some("true") | Some("1") => true,
            Some(_) => {
                return Err(ApiError::field(
                    "in_stock",
                    "Must be a valid boolean: true or false.",
                ));
            }
        },
        at_most: match params.get("max_stock").map(String::as_str) {
            None | Some("") => None,
            Some(raw) => Some(raw.parse::<u32>().map_err(|_| {
                ApiError::field(
                    "max_stock",
                    "Ensure this value is an integer greater than or equal to 0.",
                )
            })?),
        },
    };
    Ok(ProductQuery {
        category,
        name_contains,
        stock,
        sort,
        limit: page.limit,
        offset: page.offset,
    })
}

pub async fn list_products(
    State(state): State<Arc<AppState>>,
    params: QueryParams,
) -> ApiResult<Response> {
    let query = product_query(&params, state.limits.page_size)?;
    let key = product_list_key(&state, &query);
    cached(&state, key, || {
        let (body, total) = state.cache.product_list(&state.store, &query)?;
        let request = PageRequest {
            limit: query.limit,
            offset: query.offset,
        };
        Ok(CachedBody::list(
            body,
            Some(total),
            request.next_link("/api/products/", &params, total),
        ))
    })
}

pub async fn get_product(
    State(state): State<Arc<AppState>>,
    IdPath(id): IdPath,
) -> ApiResult<Response> {
    let key = state.cache.product_key(id);
    cached(&state, key, || {
        let reader = state.read()?;
        let product = reader
            .product(id)?
            .filter(|p| !p.archived)
            .ok_or(ApiError::NotFound)?;
        let images = reader.product_images(id)?;
        Ok(CachedBody::new(json_bytes(&ProductJson::new(
            &product, &images,
        ))))
    })
}

/// The product fields of a body; in `partial` mode (PATCH) only those present. An unknown
/// category is reported with the other field errors (apply checks it again).
fn product_changes(
    state: &AppState,
    body: &JsonObject,
    partial: bool,
) -> ApiResult<ProductChanges> {
    let mut fields = Fields::new(&body.0, partial);
    let changes = ProductChanges {
        name: fields.text("name", true, false, NAME_MAX_CHARS),
        stock: fields
            .integer("stock", true, 0, STOCK_MAX)
            .map(|s| s as u32),
        price: fields.money("price", true),
        description: fields.text("description", false, true, DESCRIPTION_MAX_CHARS),
        category: fields.reference("category", true),
    };
    if let Some(category) = changes.category
        && state.read()?.category(category)?.is_none()
    {
        fields.error(
            "category",
            format!("Invalid pk \"{category}\" - object does not exist."),
        );
    }
    fields.finish()?;
    Ok(changes)
}

async fn write_product(
    state: &AppState,
    command: Command,
    status: StatusCode,
) -> ApiResult<Response> {
    match state.submit(command).await? {
        CommandOutcome::Product(product) => {
            let images = state.read()?.product_images(product.id)?;
            Ok(send_json(
                status,
                json_bytes(&ProductJson::new(&product, &images)),
            ))
        }
        other => Err(ApiError::unexpected(other)),
    }
}

pub async fn create_product(
    State(state): State<Arc<AppState>>,
    _staff: Staff,
    body: JsonObject,
) -> ApiResult<Response> {
    let changes = product_changes(&state, &body, false)?;
    let (Some(name), Some(stock), Some(price), Some(category)) =
        (changes.name, changes.stock, changes.price, changes.category)
    else {
        return Err(ApiError::BadRequest("Missing product fields.".into()));
    };
    let new = NewProduct {
        name,
        stock,
        price,
        description: changes.description.unwrap_or_default(),
        category,
    };
    write_product(&state, Command::CreateProduct(new), StatusCode::CREATED).await
}

pub async fn put_product(
    State(state): State<Arc<AppState>>,
    _staff: Staff,
    IdPath(id): IdPath,
    body: JsonObject,
) -> ApiResult<Response> {
    let mut changes = product_changes(&state, &body, false)?;
    // A full update that leaves out the description clears it, as a PUT should.
    changes.description.get_or_insert_with(String::new);
    write_product(
        &state,
        Command::UpdateProduct { id, changes },
        StatusCode::OK,
    )
    .await
}

pub async fn patch_product(
    State(state): State<Arc<AppState>>,
    _staff: Staff,
    IdPath(id): IdPath,
    body: JsonObject,
) -> ApiResult<Response> {
    let changes = product_changes(&state, &body, true)?;
    write_product(
        &state,
        Command::UpdateProduct { id, changes },
        StatusCode::OK,
    )
    .await
}

pub async fn delete_product(
    State(state): State<Arc<AppState>>,
    _staff: Staff,
    IdPath(id): IdPath,
) -> ApiResult<Response> {
    state.submit(Command::DeleteProduct { id }).await?;
    Ok(no_content())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(path: &str, query: Option<&str>) -> Option<CatalogRead> {
        CatalogRead::parse(path, query, 100)
    }

    #[test]
    fn catalog_reads_are_recognised_with_and_without_the_trailing_slash() {
        for path in ["/api/products/12/", "/api/products/12"] {
            assert_eq!(parse(path, None), Some(CatalogRead::Product(12)));
        }
        assert_eq!(
            parse("/api/categories/3/", Some("x=1")),
            Some(CatalogRead::Category(3))
        );
        let Some(CatalogRead::Products(query)) = parse(
            "/api/products",
            Some("limit=20&name=Red&order_by_name=desc"),
        ) else {
            panic!("a product list");
        };
        assert_eq!(query.limit, 20);
        assert_eq!(query.name_contains.as_deref(), Some("red"));
        assert_eq!(query.sort, ProductSort::NameDesc);
        assert_eq!(
            parse("/api/categories/", Some("limit=500&offset=2")),
            Some(CatalogRead::Categories(PageRequest {
                limit: 100,
                offset: 2
            }))
        );
        assert_eq!(
            parse("/api/products/1/", None).map(|r| r.route()),
            Some("/api/products/{id}")
        );
        assert_eq!(
            parse("/api/categories", None).map(|r| r.route()),
            Some("/api/categories")
        );
    }

    #[test]
    fn anything_the_handlers_would_refuse_or_another_route_goes_to_the_router() {
        for (path, query) in [
            ("/api/products/0/", None),
            ("/api/products/%31/", None),
            ("/api/products/-1/", None),
            ("/api/products/1/x/", None),
            ("/api/products/99999999999999999999999/", None),
            ("/api/products//", None),
            ("/api/products/", Some("limit=0")),
            ("/api/products/", Some("category=abc")),
            ("/api/products/", Some("order_by_name=up")),
            ("/api/categories/", Some("offset=-1")),
            ("/api/orders/1/", None),
            ("/api/orderitems/", None),
            ("/api/users/me/", None),
            ("/health/", None),
            ("/", None),
            ("/api/productsx/", None),
        ] {
            assert_eq!(parse(path, query), None, "{path} {query:?}");
        }
    }
}
