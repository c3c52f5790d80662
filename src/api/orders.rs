//! Order items (cart lines) and orders. Users see only their own; staff see everyone's.
//! Reads come from the response cache keyed by the viewer's generation.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::Value;
use store::{
    Command, CommandOutcome, MAX_LINE_QUANTITY, MAX_ORDER_LINES, OrderItemView, OrderLine,
    OrderLines, OrderStatus, OrderView,
};

use super::request::{IdPath, PageRequest, QueryParams};
use super::response::{cached, no_content, send_json};
use crate::auth::Principal;
use crate::cache::{CacheKey, CachedBody};
use crate::clock::unix_micros;
use crate::error::{ApiError, ApiResult, FieldErrors};
use crate::input::{Fields, JsonObject};
use crate::output::{OrderItemJson, OrderJson, json_bytes};
use crate::state::AppState;

const IDEMPOTENCY_KEY_MAX_CHARS: usize = 255;

/// Who may see a record owned by `owner`.
fn visible_to(principal: &Principal, owner: u64) -> bool {
    principal.is_staff || principal.id == owner
}

/// The owner filter for list reads: staff see all.
fn owner_filter(principal: &Principal) -> Option<u64> {
    (!principal.is_staff).then_some(principal.id)
}

pub async fn list_order_items(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    params: QueryParams,
) -> ApiResult<Response> {
    let page = PageRequest::parse(&params, state.limits.page_size)?;
    let key = CacheKey::OrderItemList {
        viewer: state.cache.viewer(&principal),
        names: state.cache.product_names_generation(),
        limit: page.limit,
        offset: page.offset,
    };
    cached(&state, key, || {
        let items = state
            .read()?
            .order_items(owner_filter(&principal), page.offset, page.limit)?;
        let json: Vec<OrderItemJson> = items.items.iter().map(OrderItemJson::from).collect();
        Ok(CachedBody::list(
            json_bytes(&json),
            Some(items.total),
            page.next_link("/api/orderitems/", &params, items.total),
        ))
    })
}

fn visible_item(state: &AppState, principal: &Principal, id: u64) -> ApiResult<OrderItemView> {
    state
        .read()?
        .order_item(id)?
        .filter(|view| visible_to(principal, view.item.user))
        .ok_or(ApiError::NotFound)
}

pub async fn get_order_item(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    IdPath(id): IdPath,
) -> ApiResult<Response> {
    let key = CacheKey::OrderItem {
        viewer: state.cache.viewer(&principal),
        names: state.cache.product_names_generation(),
        id,
    };
    cached(&state, key, || {
        let view = visible_item(&state, &principal, id)?;
        Ok(CachedBody::new(json_bytes(&OrderItemJson::from(&view))))
    })
}

/// Answers with an order item as it is after a write.
fn item_response(
    state: &AppState,
    principal: &Principal,
    id: u64,
    status: StatusCode,
) -> ApiResult<Response> {
    let view = visible_item(state, principal, id)?;
    Ok(send_json(status, json_bytes(&OrderItemJson::from(&view))))
}

pub async fn create_order_item(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    body: JsonObject,
) -> ApiResult<Response> {
    let mut fields = Fields::new(&body.0, false);
    let product = fields.reference("product", true);
    let quantity = fields.integer("quantity", true, 1, i64::from(MAX_LINE_QUANTITY));
    fields.finish()?;
    let (Some(product), Some(quantity)) = (product, quantity) else {
        return Err(ApiError::BadRequest("Missing product or quantity.".into()));
    };
    let command = Command::AddOrderItem {
        user: principal.id,
        product,
        quantity: quantity as u32,
        at: unix_micros(),
    };
    match state.submit(command).await? {
        CommandOutcome::OrderItem(item) => {
            item_response(&state, &principal, item.id, StatusCode::CREATED)
        }
        other => Err(ApiError::unexpected(other)),
    }
}

pub async fn patch_order_item(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    IdPath(id): IdPath,
    body: JsonObject,
) -> ApiResult<Response> {
    let mut fields = Fields::new(&body.0, true);
    let quantity = fields.integer("quantity", true, 1, i64::from(MAX_LINE_QUANTITY));
    fields.finish()?;
    let Some(quantity) = quantity else {
        return item_response(&state, &principal, id, StatusCode::OK);
    };
    let command = Command::UpdateOrderItem {
        actor: principal.id,
        id,
        quantity: quantity as u32,
    };
    match state.submit(command).await? {
        CommandOutcome::OrderItem(item) => {
            item_response(&state, &principal, item.id, StatusCode::OK)
        }
        other => Err(ApiError::unexpected(other)),
    }
}

pub async fn delete_order_item(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    IdPath(id): IdPath,
) -> ApiResult<Response> {
    state
        .submit(Command::DeleteOrderItem {
            actor: principal.id,
            id,
        })
        .await?;
    Ok(no_content())
}

pub async fn list_orders(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    params: QueryParams,
) -> ApiResult<Response> {
    let page = PageRequest::parse(&params, state.limits.page_size)?;
    if let Some(filter) = super::backoffice::order_filter(&state, &principal, &params)? {
        return super::backoffice::filtered_orders(&state, &filter, page, &params);
    }
    let key = CacheKey::OrderList {
        viewer: state.cache.viewer(&principal),
        limit: page.limit,
        offset: page.offset,
    };
    cached(&state, key, || {
        let orders = state
            .read()?
            .orders(owner_filter(&principal), page.offset, page.limit)?;
        let json: Vec<OrderJson> = orders.items.iter().map(OrderJson::from).collect();
        Ok(CachedBody::list(
            json_bytes(&json),
            Some(orders.total),
            page.next_link("/api/orders/", &params, orders.total),
        ))
    })
}

fn visible_order(state: &AppState, principal: &Principal, id: u64) -> ApiResult<OrderView> {
    state
        .read()?
        .order(id)?
        .filter(|view| visible_to(principal, view.order.user))
        .ok_or(ApiError::NotFound)
}

pub async fn get_order(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    IdPath(id): IdPath,
) -> ApiResult<Response> {
    let key = CacheKey::Order {
        viewer: state.cache.viewer(&principal),
        id,
    };
    cached(&state, key, || {
        let view = visible_order(&state, &principal, id)?;
        Ok(CachedBody::new(json_bytes(&OrderJson::from(&view))))
    })
}

/// Reads `{"items": [{"product", "quantity"}, ...]}` or `{"order_items": [ids]}`.
fn order_lines(body: &JsonObject) -> ApiResult<OrderLines> {
    let items = body.0.get("items").filter(|v| !v.is_null());
    let cart = body.0.get("order_items").filter(|v| !v.is_null());
    let list = |name: &str, value: &Value| -> ApiResult<Vec<Value>> {
        let Value::Array(entries) = value else {
            return Err(ApiError::field(name, "Expected a list of items."));
        };
        if entries.is_empty() {
            return Err(ApiError::field(name, "This list may not be empty."));
        }
        if entries.len() > MAX_ORDER_LINES {
            return Err(ApiError::field(
                name,
                format!("Ensure this list has no more than {MAX_ORDER_LINES} elements."),
            ));
        }
        Ok(entries.clone())
    };
    match (items, cart) {
        (Some(items), None) => {
            let mut lines = Vec::new();
            let mut errors = FieldErrors::new();
            for (index, entry) in list("items", items)?.iter().enumerate() {
                let Value::Object(object) = entry else {
                    errors.entry("items".into()).or_default().push(format!(
                        "Item {index}: expected an object with product and quantity."
                    ));
                    continue;
                };
                let mut fields = Fields::new(object, false);
                let product = fields.reference("product", true);
                let quantity = fields.integer("quantity", true, 1, i64::from(MAX_LINE_QUANTITY));
                match (fields.finish(), product, quantity) {
                    (Ok(()), Some(product), Some(quantity)) => lines.push(OrderLine {
                        product,
                        quantity: quantity as u32,
                    }),
                    (Err(ApiError::Fields(item_errors)), _, _) => {
                        for (field, messages) in item_errors {
                            for message in messages {
                                errors
                                    .entry("items".into())
                                    .or_default()
                                    .push(format!("Item {index}: {field}: {message}"));
                            }
                        }
                    }
                    _ => {}
                }
            }
            if errors.is_empty() {
                Ok(OrderLines::Products(lines))
            } else {
                Err(ApiError::Fields(errors))
            }
        }
        (None, Some(cart)) => {
            let mut ids = Vec::new();
            for entry in list("order_items", cart)? {
                match entry.as_u64().filter(|&id| id > 0) {
                    Some(id) => ids.push(id),
                    None => {
                        return Err(ApiError::field(
                            "order_items",
                            format!("Incorrect type. Expected pk value, received {entry}."),
                        ));
                    }
                }
            }
            Ok(OrderLines::CartItems(ids))
        }
        (Some(_), Some(_)) => Err(ApiError::field(
            "non_field_errors",
            "Give either items or order_items, not both.",
        )),
        (None, None) => Err(ApiError::field(
            "items",
            "This field is required (or give order_items).",
        )),
    }
}

fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= IDEMPOTENCY_KEY_MAX_CHARS)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX_CHARS} visible ASCII characters."
            ))
        })?;
    Ok(Some(key.to_owned()))
}

pub(super) fn order_response(
    state: &AppState,
    principal: &Principal,
    id: u64,
    status: StatusCode,
) -> ApiResult<Response> {
    let view = visible_order(state, principal, id)?;
    Ok(send_json(status, json_bytes(&OrderJson::from(&view))))
}

pub async fn create_order(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    headers: HeaderMap,
    body: JsonObject,
) -> ApiResult<Response> {
    let lines = order_lines(&body)?;
    let command = Command::PlaceOrder {
        user: principal.id,
        lines,
        idempotency_key: idempotency_key(&headers)?,
        at: unix_micros(),
    };
    match state.submit(command).await? {
        CommandOutcome::Order { order, replayed } => {
            if !replayed {
                metrics::counter!("soundwave_orders_placed_total").increment(1);
            }
            let mut response = order_response(&state, &principal, order.id, StatusCode::CREATED)?;
            if replayed {
                response
                    .headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
            }
            Ok(response)
        }
        other => Err(ApiError::unexpected(other)),
    }
}

pub async fn cancel_order(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    IdPath(id): IdPath,
) -> ApiResult<Response> {
    let command = Command::SetOrderStatus {
        actor: principal.id,
        id,
        status: OrderStatus::Cancelled,
        at: unix_micros(),
    };
    match state.submit(command).await? {
        CommandOutcome::Order { order, .. } => {
            metrics::counter!("soundwave_orders_cancelled_total").increment(1);
            order_response(&state, &principal, order.id, StatusCode::OK)
        }
        other => Err(ApiError::unexpected(other)),
    }
}
