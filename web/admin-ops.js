// The admin's operations: orders (filters, detail, statuses, CSV export), users (search,
// staff, deactivate) and sales (orders and revenue per day as an inline SVG chart, top
// products). admin.js shows the tabs and says which one opened ("admin:tab").
"use strict";

(() => {
  const { h, money, cents } = SW;
  const PAGE = 50;
  const $ = (id) => document.getElementById(id);
  const notice = (text, kind) => SW.notify($("notice"), text, kind);

  const STATUS_NAMES = {
    placed: "Placed", paid: "Paid", shipped: "Shipped", delivered: "Delivered", cancelled: "Cancelled",
  };
  // The moves staff can make from each status, as buttons: [status, label, danger].
  const MOVES = {
    placed: [["paid", "Mark paid"], ["cancelled", "Cancel order", true]],
    paid: [["shipped", "Mark shipped"], ["cancelled", "Cancel order", true]],
    shipped: [["delivered", "Mark delivered"]],
    delivered: [],
    cancelled: [],
  };

  const state = {
    orders: { offset: 0, total: 0, status: "", user: "", from: "", to: "", open: null },
    users: { offset: 0, total: 0, search: "" },
    me: null,
  };

  // Runs a change, says how it went, and reloads what it touched.
  const change = (action, success, reload) => SW.change($("notice"), action, success, reload);

  const statusBadge = (status) => h("span", { class: `status ${status}` }, STATUS_NAMES[status] || status);

  // ---- orders ----

  function orderParams() {
    const o = state.orders;
    const params = new URLSearchParams();
    if (o.status) params.set("status", o.status);
    if (o.user) params.set("user", o.user);
    if (o.from) params.set("date_from", o.from);
    if (o.to) params.set("date_to", o.to);
    return params;
  }

  async function loadOrders() {
    const o = state.orders;
    const params = orderParams();
    params.set("limit", PAGE);
    params.set("offset", o.offset);
    try {
      const res = await SW.call("GET", "/api/orders/?" + params);
      o.total = res.total || 0;
      $("order-rows").replaceChildren(...res.body.map(orderRow));
      const filtered = o.status || o.user || o.from || o.to;
      $("order-range").textContent = res.body.length
        ? `${o.offset + 1}–${o.offset + res.body.length} of ${o.total}`
        : filtered ? "No orders match these filters" : "No orders yet";
      $("order-prev").disabled = o.offset === 0;
      $("order-next").disabled = o.offset + res.body.length >= o.total;
    } catch (err) {
      notice(SW.explain(err), "error");
    }
  }

  function moveButtons(order, reload) {
    return MOVES[order.status].map(([next, label, danger]) => {
      const button = h("button", { class: danger ? "btn btn-danger" : "btn", type: "button", "data-move": next }, label);
      const act = () => change(() => SW.post(`/api/orders/${order.id}/status/`, { status: next }),
        next === "cancelled" ? `Order #${order.id} is cancelled; its stock is back on the shelf.`
          : `Order #${order.id} is now ${STATUS_NAMES[next].toLowerCase()}.`, reload);
      if (danger) SW.confirmClick(button, `Cancel #${order.id}?`, act);
      else button.addEventListener("click", act);
      return button;
    });
  }

  function orderRow(order) {
    return h("tr", { "data-order": order.id },
      h("td", {}, h("button", { class: "link", type: "button", onclick: () => openOrder(order.id) }, `#${order.id}`)),
      h("td", {}, order.user),
      h("td", {}, SW.date(order.created_at)),
      h("td", {}, h("ul", { class: "plain" }, order.items.map((item) =>
        h("li", {}, `${item.quantity} × ${item.product_name} at ${money(cents(item.unit_price))}`)))),
      h("td", { class: "num" }, money(cents(order.total))),
      h("td", {}, statusBadge(order.status)),
      h("td", { class: "actions" }, moveButtons(order, loadOrders)));
  }

  async function openOrder(id) {
    state.orders.open = id;
    let order;
    try {
      order = await SW.get(`/api/orders/${id}/`);
    } catch (err) {
      notice(SW.explain(err), "error");
      return;
    }
    $("orders-list").hidden = true;
    $("order-detail").hidden = false;
    $("order-detail-title").replaceChildren(`Order #${order.id} `, statusBadge(order.status));
    $("order-detail-meta").textContent =
      `${order.user} · placed ${SW.date(order.created_at)} · total ${money(cents(order.total))}`;
    $("order-detail-items").replaceChildren(...order.items.map((item) => h("tr", {},
      h("td", {}, item.product_name),
      h("td", { class: "num" }, item.quantity),
      h("td", { class: "num" }, money(cents(item.unit_price))),
      h("td", { class: "num" }, money(cents(item.unit_price) * item.quantity)))));
    $("order-history").replaceChildren(...(order.status_history || []).map((c) =>
      h("li", { "data-status": c.status }, statusBadge(c.status), ` ${SW.date(c.at)} by ${c.by || "—"}`)));
    $("order-detail-actions").replaceChildren(...moveButtons(order, () => openOrder(id)));
  }

  function closeOrder() {
    state.orders.open = null;
    $("order-detail").hidden = true;
    $("orders-list").hidden = false;
    loadOrders();
  }

  $("order-back").addEventListener("click", closeOrder);
  $("order-filters").addEventListener("submit", (event) => {
    event.preventDefault();
    Object.assign(state.orders, {
      status: $("order-status").value,
      user: $("order-customer").value.trim(),
      from: $("order-from").value,
      to: $("order-to").value,
      offset: 0,
    });
    loadOrders();
  });
  $("order-status").addEventListener("change", () => $("order-filters").requestSubmit());
  $("order-export").addEventListener("click", async () => {
    try {
      const blob = await SW.download("/api/orders/export/?" + orderParams());
      const link = h("a", { href: URL.createObjectURL(blob), download: "orders.csv" });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(link.href), 10000);
      notice("The orders are exported as orders.csv.", "success");
    } catch (err) {
      notice(SW.explain(err), "error");
    }
  });
  $("order-prev").addEventListener("click", () => {
    state.orders.offset = Math.max(0, state.orders.offset - PAGE);
    loadOrders();
  });
  $("order-next").addEventListener("click", () => {
    state.orders.offset += PAGE;
    loadOrders();
  });

  // ---- users ----

  async function loadUsers() {
    const u = state.users;
    const params = new URLSearchParams({ limit: PAGE, offset: u.offset });
    if (u.search) params.set("search", u.search);
    try {
      if (!state.me) state.me = await SW.get("/api/users/me/");
      const res = await SW.call("GET", "/api/users/?" + params);
      u.total = res.total || 0;
      $("user-rows").replaceChildren(...res.body.map(userRow));
      $("user-range").textContent = res.body.length
        ? `${u.offset + 1}–${u.offset + res.body.length} of ${u.total}` : "No users match";
      $("user-prev").disabled = u.offset === 0;
      $("user-next").disabled = u.offset + res.body.length >= u.total;
    } catch (err) {
      notice(SW.explain(err), "error");
    }
  }

  function userRow(user) {
    const self = state.me && state.me.id === user.id;
    const actions = [];
    if (!self) {
      actions.push(h("button", {
        class: "btn", type: "button", "data-action": "staff",
        onclick: () => change(() => SW.patch(`/api/users/${user.id}/`, { is_staff: !user.is_staff }),
          user.is_staff ? `${user.username} is no longer staff.` : `${user.username} is now staff.`, loadUsers),
      }, user.is_staff ? "Remove staff" : "Make staff"));
      const toggle = h("button", { class: user.is_active ? "btn btn-danger" : "btn", type: "button", "data-action": "active" },
        user.is_active ? "Deactivate" : "Reactivate");
      const act = () => change(() => SW.patch(`/api/users/${user.id}/`, { is_active: !user.is_active }),
        user.is_active ? `${user.username} is deactivated and logged out everywhere.` : `${user.username} can log in again.`,
        loadUsers);
      if (user.is_active) SW.confirmClick(toggle, `Deactivate ${user.username}?`, act);
      else toggle.addEventListener("click", act);
      actions.push(toggle);
    }
    return h("tr", { "data-user": user.id },
      h("td", {}, user.id),
      h("td", {}, user.username, self ? " (you)" : ""),
      h("td", {}, user.email || "—"),
      h("td", {}, SW.date(user.date_joined)),
      h("td", {}, user.is_staff ? "Staff" : "Customer"),
      h("td", {}, h("span", { class: `status ${user.is_active ? "placed" : "cancelled"}` }, user.is_active ? "Active" : "Deactivated")),
      h("td", { class: "actions" }, actions));
  }

  $("user-filters").addEventListener("submit", (event) => {
    event.preventDefault();
    state.users.search = $("user-search").value.trim();
    state.users.offset = 0;
    loadUsers();
  });
  $("user-prev").addEventListener("click", () => {
    state.users.offset = Math.max(0, state.users.offset - PAGE);
    loadUsers();
  });
  $("user-next").addEventListener("click", () => {
    state.users.offset += PAGE;
    loadUsers();
  });

  // ---- sales ----

  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    for (const c of children) node.append(c);
    return node;
  }

  // Revenue per day as bars, orders per day as numbers over them; sized by the viewBox.
  function chart(days) {
    const width = 720;
    const height = 240;
    const top = 24;
    const bottom = 28;
    const max = Math.max(1, ...days.map((d) => cents(d.revenue)));
    const step = width / days.length;
    const bar = Math.max(2, step * 0.7);
    const labelEvery = Math.ceil(days.length / 10);
    const parts = [svg("line", { x1: 0, y1: height - bottom, x2: width, y2: height - bottom, class: "axis" })];
    days.forEach((d, i) => {
      const value = cents(d.revenue);
      const barHeight = ((height - top - bottom) * value) / max;
      const x = i * step + (step - bar) / 2;
      const y = height - bottom - barHeight;
      parts.push(svg("rect", { x, y, width: bar, height: Math.max(barHeight, value > 0 ? 1 : 0), class: "bar", "data-date": d.date },
        svg("title", {}, `${d.date}: ${d.orders} orders, ${money(value)}`)));
      if (d.orders > 0 && days.length <= 31) {
        parts.push(svg("text", { x: x + bar / 2, y: y - 4, "text-anchor": "middle", class: "count" }, String(d.orders)));
      }
      if (i % labelEvery === 0) {
        parts.push(svg("text", { x: x + bar / 2, y: height - 8, "text-anchor": "middle", class: "day" }, d.date.slice(5)));
      }
    });
    // Room at both sides for the first and last day's labels.
    return svg("svg", { viewBox: `-24 0 ${width + 48} ${height}`, role: "img", "aria-label": "Revenue per day" }, ...parts);
  }

  async function loadSales() {
    try {
      const report = await SW.get(`/api/stats/sales/?days=${$("sales-days").value}`);
      $("sales-summary").textContent = `${report.orders} orders, ${money(cents(report.revenue))} revenue` +
        (report.cancelled ? `; ${report.cancelled} cancelled` : "") +
        (report.truncated ? " (older orders left out: the report's bound was reached)" : "");
      $("sales-chart").replaceChildren(chart(report.days));
      $("sales-top").replaceChildren(...(report.top_products.length ? report.top_products.map((p) =>
        h("tr", { "data-product": p.product },
          h("td", {}, p.name),
          h("td", { class: "num" }, p.quantity),
          h("td", { class: "num" }, money(cents(p.revenue)))))
        : [h("tr", {}, h("td", { colspan: 3 }, "No sales in this period"))]));
    } catch (err) {
      notice(SW.explain(err), "error");
    }
  }

  $("sales-days").addEventListener("change", loadSales);

  document.addEventListener("admin:tab", (event) => {
    if (event.detail === "orders") {
      if (state.orders.open) openOrder(state.orders.open);
      else loadOrders();
    }
    if (event.detail === "users") loadUsers();
    if (event.detail === "sales") loadSales();
  });
  SW.onLogout.push(() => {
    state.me = null;
  });
})();
