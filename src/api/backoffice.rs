//! The staff's endpoints: moving orders through their statuses, the order list's filters
//! and its CSV export, user management and the sales dashboard. Every one needs staff
//! (checked against the current user record); the writes are commands like any other.
//! These reads are not cached: they are few, staff-only and filtered many ways.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;
use serde_json::Value;
use store::{
    Command, CommandOutcome, DAY, OrderFilter, OrderStatus, OrderView, SalesReport, Timestamp,
};

use super::orders::order_response;
use super::request::{IdPath, PageRequest, QueryParams};
use super::response::send_json;
use crate::auth::{Principal, Staff};
use crate::cache::CachedBody;
use crate::clock::unix_micros;
use crate::error::{ApiError, ApiResult};
use crate::input::JsonObject;
use crate::output::{Money, OrderJson, Rfc3339, UserJson, json_bytes};
use crate::state::AppState;

/// Most orders one CSV export holds (newest first); `X-Total-Count` tells how many matched.
pub const MAX_EXPORT_ORDERS: usize = 10_000;
/// Longest sales report, in days.
pub const MAX_REPORT_DAYS: u32 = 366;
/// Most orders a sales report walks.
pub const MAX_REPORT_ORDERS: usize = 200_000;
/// Products in a sales report's top list.
const TOP_PRODUCTS: usize = 10;
const SEARCH_MAX_CHARS: usize = 150;

fn status_choice(name: &str, raw: &str) -> ApiResult<OrderStatus> {
    OrderStatus::parse(raw).ok_or_else(|| {
        let choices: Vec<&str> = OrderStatus::ALL.iter().map(|s| s.as_str()).collect();
        ApiError::field(
            name,
            format!("\"{raw}\" is not a valid choice: {}.", choices.join(", ")),
        )
    })
}

/// `POST /api/orders/{id}/status/` `{"status": "paid"}`: staff move an order one step on
/// (placed → paid → shipped → delivered) or cancel it from placed or paid.
pub async fn set_order_status(
    State(state): State<Arc<AppState>>,
    Staff(staff): Staff,
    IdPath(id): IdPath,
    body: JsonObject,
) -> ApiResult<Response> {
    let status = match body.0.get("status") {
        Some(Value::String(raw)) => status_choice("status", raw)?,
        Some(_) => return Err(ApiError::field("status", "Expected a status name.")),
        None => return Err(ApiError::field("status", "This field is required.")),
    };
    let command = Command::SetOrderStatus {
        actor: staff.id,
        id,
        status,
        at: unix_micros(),
    };
    match state.submit(command).await? {
        CommandOutcome::Order { order, .. } => {
            order_response(&state, &staff, order.id, StatusCode::OK)
        }
        other => Err(ApiError::unexpected(other)),
    }
}

/// A `YYYY-MM-DD` date's first microsecond (UTC).
fn day_start(name: &str, raw: &str) -> ApiResult<Timestamp> {
    let parts: Vec<&str> = raw.split('-').collect();
    let date = match parts[..] {
        [y, m, d] if y.len() == 4 && m.len() == 2 && d.len() == 2 => {
            let (Ok(y), Ok(m), Ok(d)) = (y.parse::<i32>(), m.parse::<u8>(), d.parse::<u8>()) else {
                return Err(ApiError::field(
                    name,
                    "Date has wrong format. Use YYYY-MM-DD.",
                ));
            };
            time::Month::try_from(m)
                .ok()
                .and_then(|m| time::Date::from_calendar_date(y, m, d).ok())
        }
        _ => None,
    };
    date.map(|date| date.midnight().assume_utc().unix_timestamp() * 1_000_000)
        .ok_or_else(|| ApiError::field(name, "Date has wrong format. Use YYYY-MM-DD."))
}

/// The order list's filters: `status`, `user` (a username; staff only, others see their
/// own orders whatever they ask), `date_from` and `date_to` (`YYYY-MM-DD`, both
/// inclusive, UTC). `None` when the request names none.
pub fn order_filter(
    state: &AppState,
    principal: &Principal,
    params: &QueryParams,
) -> ApiResult<Option<OrderFilter>> {
    let given = |name: &str| params.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
    let mut filter = OrderFilter::default();
    if let Some(raw) = given("status") {
        filter.status = Some(status_choice("status", raw)?);
    }
    if let Some(raw) = given("date_from") {
        filter.created_from = Some(day_start("date_from", raw)?);
    }
    if let Some(raw) = given("date_to") {
        filter.created_before = Some(day_start("date_to", raw)? + DAY);
    }
    if let (Some(from), Some(before)) = (filter.created_from, filter.created_before)
        && from >= before
    {
        return Err(ApiError::field(
            "date_to",
            "date_to must not be before date_from.",
        ));
    }
    let named = given("user");
    if let Some(name) = named
        && name.chars().count() > SEARCH_MAX_CHARS
    {
        return Err(ApiError::field(
            "user",
            format!("Ensure this value has no more than {SEARCH_MAX_CHARS} characters."),
        ));
    }
    if filter.is_empty() && named.is_none() {
        return Ok(None);
    }
    filter.user = if principal.is_staff {
        match named {
            // An unknown customer has no orders: user 0 is never given out.
            Some(name) => Some(state.read()?.user_by_username(name)?.map_or(0, |u| u.id)),
            None => None,
        }
    } else {
        Some(principal.id)
    };
    Ok(Some(filter))
}

/// The order list with filters (see [`order_filter`]), newest first, paged as every list.
pub fn filtered_orders(
    state: &AppState,
    filter: &OrderFilter,
    page: PageRequest,
    params: &QueryParams,
) -> ApiResult<Response> {
    let orders = state
        .read()?
        .orders_matching(filter, page.offset, page.limit)?;
    let json: Vec<OrderJson> = orders.items.iter().map(OrderJson::from).collect();
    let body = CachedBody::list(
        json_bytes(&json),
        Some(orders.total),
        page.next_link("/api/orders/", params, orders.total),
    );
    Ok(super::response::send(StatusCode::OK, &body))
}

/// A CSV field: quoted when it holds a separator, a quote or a line break (quotes
/// doubled, RFC 4180), and a text that a spreadsheet would take for a formula (`=`, `+`,
/// `-`, `@`, tab, CR first) quoted with a `'` before it.
fn push_csv_field(out: &mut String, text: &str) {
    let formula = text.starts_with(['=', '+', '-', '@', '\t', '\r']);
    if !formula && !text.contains([',', '"', '\n', '\r']) {
        out.push_str(text);
        return;
    }
    out.push('"');
    if formula {
        out.push('\'');
    }
    for c in text.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
}

/// The export's rows: one per order.
fn orders_csv(orders: &[OrderView]) -> String {
    let mut out = String::with_capacity(64 + orders.len() * 128);
    out.push_str("id,created_at,user,status,total,lines,items\r\n");
    for view in orders {
        let order = &view.order;
        let items: Vec<String> = view
            .items
            .iter()
            .map(|i| format!("{} x {}", i.item.quantity, i.product_name))
            .collect();
        let _ = write!(out, "{},{},", order.id, Rfc3339(order.created_at).text());
        push_csv_field(&mut out, &view.username);
        let _ = write!(
            out,
            ",{},{:.2},{},",
            order.status.as_str(),
            order.total,
            view.items.len()
        );
        push_csv_field(&mut out, &items.join("; "));
        out.push_str("\r\n");
    }
    out
}

/// `GET /api/orders/export/`: the filtered orders as CSV (`text/csv`), newest first, at
/// most [`MAX_EXPORT_ORDERS`] of them; `X-Total-Count` says how many matched.
pub async fn export_orders(
    State(state): State<Arc<AppState>>,
    Staff(staff): Staff,
    params: QueryParams,
) -> ApiResult<Response> {
    let filter = order_filter(&state, &staff, &params)?.unwrap_or_default();
    let reading = state.clone();
    let (csv, total) = tokio::task::spawn_blocking(move || -> ApiResult<(String, usize)> {
        let page = reading
            .read()?
            .orders_matching(&filter, 0, MAX_EXPORT_ORDERS)?;
        Ok((orders_csv(&page.items), page.total))
    })
    .await
    .map_err(|e| ApiError::Internal(format!("the export task failed: {e}")))??;
    let mut response = (StatusCode::OK, Body::from(csv)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"orders.csv\""),
    );
    headers.insert("x-total-count", HeaderValue::from(total));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

#[derive(Serialize)]
struct ManagedUserJson<'a> {
    #[serde(flatten)]
    user: UserJson<'a>,
    is_active: bool,
}

/// `GET /api/users/?search=`: users by id whose username or email contains the search,
/// with `is_active`; paged as every list.
pub async fn list_users(
    State(state): State<Arc<AppState>>,
    _staff: Staff,
    params: QueryParams,
) -> ApiResult<Response> {
    let page = PageRequest::parse(&params, state.limits.page_size)?;
    let search = match params.get("search").map(|s| s.trim()) {
        None | Some("") => None,
        Some(s) if s.chars().count() > SEARCH_MAX_CHARS => {
            return Err(ApiError::field(
                "search",
                format!("Ensure this value has no more than {SEARCH_MAX_CHARS} characters."),
            ));
        }
        Some(s) => Some(s.to_lowercase()),
    };
    let users = state
        .read()?
        .users_matching(search.as_deref(), page.offset, page.limit)?;
    let json: Vec<ManagedUserJson> = users
        .items
        .iter()
        .map(|u| ManagedUserJson {
            user: UserJson::from(&u.user),
            is_active: u.active,
        })
        .collect();
    let body = CachedBody::list(
        json_bytes(&json),
        Some(users.total),
        page.next_link("/api/users/", &params, users.total),
    );
    Ok(super::response::send(StatusCode::OK, &body))
}

/// `PATCH /api/users/{id}/` `{"is_staff"?: bool, "is_active"?: bool}`: staff make another
/// user staff or not, deactivate or reactivate them (never themselves). Either ends the
/// user's sessions; a deactivated user cannot log in or refresh.
pub async fn patch_user(
    State(state): State<Arc<AppState>>,
    Staff(staff): Staff,
    IdPath(id): IdPath,
    body: JsonObject,
) -> ApiResult<Response> {
    let flag = |name: &str| -> ApiResult<Option<bool>> {
        match body.0.get(name) {
            None => Ok(None),
            Some(Value::Bool(value)) => Ok(Some(*value)),
            Some(_) => Err(ApiError::field(name, "Must be a valid boolean.")),
        }
    };
    let (is_staff, is_active) = (flag("is_staff")?, flag("is_active")?);
    if let Some(other) = body
        .0
        .keys()
        .find(|k| k.as_str() != "is_staff" && k.as_str() != "is_active")
    {
        return Err(ApiError::field(
            other,
            "Only is_staff and is_active can be changed here.",
        ));
    }
    let at = unix_micros();
    if let Some(is_staff) = is_staff {
        state
            .submit(Command::SetUserStaff {
                actor: staff.id,
                id,
                is_staff,
                at,
            })
            .await?;
    }
    if let Some(active) = is_active {
        state
            .submit(Command::SetUserActive {
                actor: staff.id,
                id,
                active,
                at,
            })
            .await?;
    }
    let reader = state.read()?;
    let user = reader.user(id)?.ok_or(ApiError::NotFound)?;
    let json = ManagedUserJson {
        user: UserJson::from(&user),
        is_active: reader.user_is_active(id)?,
    };
    Ok(send_json(StatusCode::OK, json_bytes(&json)))
}

#[derive(Serialize)]
struct DayJson {
    date: String,
    orders: u64,
    revenue: Money,
}

#[derive(Serialize)]
struct TopProductJson<'a> {
    product: u64,
    name: &'a str,
    quantity: u64,
    revenue: Money,
}

#[derive(Serialize)]
struct SalesJson<'a> {
    days: Vec<DayJson>,
    top_products: Vec<TopProductJson<'a>>,
    orders: u64,
    revenue: Money,
    cancelled: u64,
    truncated: bool,
}

fn sales_json(report: &SalesReport) -> SalesJson<'_> {
    let days: Vec<DayJson> = report
        .days
        .iter()
        .map(|d| DayJson {
            date: Rfc3339(d.start)
                .text()
                .get(..10)
                .unwrap_or_default()
                .to_owned(),
            orders: d.orders,
            revenue: Money(d.revenue),
        })
        .collect();
    SalesJson {
        orders: days.iter().map(|d| d.orders).sum(),
        revenue: Money(report.days.iter().map(|d| d.revenue).sum()),
        days,
        top_products: report
            .top_products
            .iter()
            .map(|p| TopProductJson {
                product: p.product,
                name: &p.name,
                quantity: p.quantity,
                revenue: Money(p.revenue),
            })
            .collect(),
        cancelled: report.cancelled,
        truncated: report.truncated,
    }
}

/// `GET /api/stats/sales/?days=N` (1 to [`MAX_REPORT_DAYS`], default 30): orders and
/// revenue (cancelled orders left out) per UTC day up to today, and the top products.
pub async fn sales(
    State(state): State<Arc<AppState>>,
    _staff: Staff,
    params: QueryParams,
) -> ApiResult<Response> {
    let days = match params.get("days").map(String::as_str) {
        None | Some("") => 30,
        Some(raw) => raw
            .parse::<u32>()
            .ok()
            .filter(|d| (1..=MAX_REPORT_DAYS).contains(d))
            .ok_or_else(|| {
                ApiError::field(
                    "days",
                    format!("Ensure this value is an integer from 1 to {MAX_REPORT_DAYS}."),
                )
            })?,
    };
    let today = unix_micros().div_euclid(DAY) * DAY;
    let start = today - DAY * i64::from(days - 1);
    let reading = state.clone();
    let report = tokio::task::spawn_blocking(move || -> ApiResult<SalesReport> {
        Ok(reading
            .read()?
            .sales(start, days, TOP_PRODUCTS, MAX_REPORT_ORDERS)?)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("the report task failed: {e}")))??;
    Ok(send_json(StatusCode::OK, json_bytes(&sales_json(&report))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_when_needed_and_formulas_defused() {
        let field = |text: &str| {
            let mut out = String::new();
            push_csv_field(&mut out, text);
            out
        };
        assert_eq!(field("alice"), "alice");
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(field("two\nlines"), "\"two\nlines\"");
        assert_eq!(field("=SUM(A1)"), "\"'=SUM(A1)\"");
        assert_eq!(field("+1-555"), "\"'+1-555\"");
        assert_eq!(field("@bob"), "\"'@bob\"");
    }

    #[test]
    fn days_are_parsed_as_utc_midnights() {
        assert_eq!(day_start("d", "1970-01-02").unwrap(), DAY);
        assert!(day_start("d", "2026-13-01").is_err());
        assert!(day_start("d", "yesterday").is_err());
    }
}
