// The storefront: catalog, product pages, account, cart, checkout and orders, over the
// public JSON API. Views are switched by the URL hash (#/, #/product/7, #/cart, ...); the
// catalog's category, search, sort, stock filter and pages are in the hash's query
// (#/?category=2&q=amp&sort=-price&stock=in&pages=2), so a search can be shared and Back
// returns to the same list at the same scroll place.
"use strict";

(() => {
  const { h, money, cents } = SW;
  const PAGE = 24;
  const $ = (id) => document.getElementById(id);

  const state = {
    user: null,
    categories: new Map(), // id -> name
    category: "",
    name: "",
    sort: "",
    inStock: false,
    pages: 1, // pages of PAGE products shown
    listed: null, // the shop URL whose products are shown
    products: [],
    total: 0,
    known: new Map(), // product id -> product (or null when gone)
    cart: [], // open order items (order === null)
    shortages: new Map(), // product id -> available, after a refused checkout
    confirmation: null, // the order just placed
    checkoutKey: null,
    after: null, // where to go after logging in
    loads: 0,
  };

  // ---- messages ----

  function notice(text, kind) {
    SW.notify($("notice"), text, kind);
  }

  const names = () => Object.fromEntries([...state.known].map(([id, p]) => [id, p ? p.name : `product #${id}`]));

  // ---- views ----

  const VIEWS = ["shop", "product", "cart", "orders", "login", "signup", "account"];

  function viewOf(hash) {
    const [, view, arg] = (hash || "#/").match(/^#\/([a-z]*)\/?(\d*)/) || [];
    return [VIEWS.includes(view) ? view : "shop", arg];
  }

  function route() {
    const [name, arg] = viewOf(location.hash);
    state.cameFromShop = state.view === "shop";
    state.view = name;
    for (const v of VIEWS) $("view-" + v).hidden = v !== name;
    if (name === "shop") showShop();
    if (name === "product") showProduct(Number(arg));
    if (name === "cart") showCart();
    if (name === "orders") showOrders();
    if (name === "login") $("login-username").focus();
    if (name === "signup") $("signup-username").focus();
    if (name === "account") showAccount();
  }

  // Shows a view, then the message (if any) about how we got there.
  let pending = null;
  function go(hash, text, kind) {
    pending = text ? [text, kind] : null;
    if ((location.hash || "#/") === hash) arrive();
    else location.hash = hash;
  }

  function arrive() {
    const message = pending || ["", ""];
    pending = null;
    notice(message[0], message[1]);
    $("main").focus({ preventScroll: true });
    route();
  }

  // ---- account ----

  function renderAccount() {
    const user = state.user;
    $("who").hidden = !user;
    $("who").textContent = user ? `Hi, ${user.username}` : "";
    $("nav-orders").hidden = !user;
    $("nav-account").hidden = !user;
    $("nav-admin").hidden = !(user && user.is_staff);
    $("logout").hidden = !user;
    $("nav-login").hidden = !!user;
    $("nav-signup").hidden = !!user;
  }

  async function loadUser() {
    await SW.ready; // a new tab of a signed-in browser gets its tokens first
    if (!SW.signedIn()) return;
    try {
      state.user = await SW.get("/api/users/me/");
    } catch (_) {
      SW.logout();
    }
    renderAccount();
  }

  // `message(user)` is the notice to show, made once the user is loaded.
  async function afterLogin(message) {
    await loadUser();
    await loadCart();
    const next = state.after || "#/";
    state.after = null;
    go(next, message(state.user || { username: "" }), "success");
  }

  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.target;
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      await SW.login(form.username.value.trim(), form.password.value);
      form.reset();
      await afterLogin((user) => `Welcome back, ${user.username}!`);
    } catch (err) {
      notice(SW.explain(err), "error");
    } finally {
      button.disabled = false;
    }
  });

  $("signup-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.target;
    const button = form.querySelector("button[type=submit]");
    const body = { username: form.username.value.trim(), password: form.password.value };
    if (form.email.value.trim()) body.email = form.email.value.trim();
    if (form.phone_number.value.trim()) body.phone_number = form.phone_number.value.trim();
    button.disabled = true;
    try {
      await SW.post("/api/users/", body, { auth: false });
      await SW.login(body.username, body.password);
      form.reset();
      await afterLogin(() => `Welcome to Soundwave, ${body.username}! Your account is ready.`);
    } catch (err) {
      notice(SW.explain(err), "error");
    } finally {
      button.disabled = false;
    }
  });

  let leaving = false;
  $("logout").addEventListener("click", () => {
    leaving = true;
    SW.signOut();
  });

  SW.onLogout.push(() => {
    state.user = null;
    state.cart = [];
    state.confirmation = null;
    renderAccount();
    renderBadge();
    go("#/", leaving ? "You are logged out. See you soon!" : "Your session has ended. Please log in again.", "info");
    leaving = false;
  });

  // ---- catalog ----

  const initials = (name) =>
    name.split(/\s+/).filter(Boolean).slice(0, 2).map((w) => w[0].toUpperCase()).join("");

  // The product's picture (the thumbnail in lists, the image itself on its page), or its
  // initials on a coloured tile when it has none.
  const thumb = (p, size) => {
    const src = size === "big" ? p.image : p.thumbnail;
    if (src) return h("img", { class: `thumb photo ${size || ""}`, src, alt: "", loading: "lazy", decoding: "async" });
    return h("div", { class: `thumb ${size || ""} tone${p.category % 6}`, "aria-hidden": "true" }, initials(p.name));
  };

  function stockLabel(p) {
    if (p.stock === 0) return h("p", { class: "stock out" }, "Sold out");
    if (p.stock <= 5) return h("p", { class: "stock low" }, `Only ${p.stock} left`);
    return h("p", { class: "stock in" }, `In stock (${p.stock})`);
  }

  function buyForm(p, where) {
    const id = `${where}-qty-${p.id}`;
    const input = h("input", {
      id, name: "quantity", type: "number", min: 1, max: 1000, value: 1, inputmode: "numeric", required: true,
    });
    const button = h("button", { class: "btn btn-primary", type: "submit", disabled: p.stock === 0 },
      p.stock === 0 ? "Sold out" : "Add to cart");
    return h("form", {
      class: "buy",
      "data-product": p.id,
      onsubmit: (event) => {
        event.preventDefault();
        addToCart(p, Number(input.value), button);
      },
    }, h("label", { for: id }, "Qty"), input, button);
  }

  function card(p) {
    return h("li", { class: "card", "data-product": p.id },
      thumb(p),
      h("div", { class: "card-body" },
        h("p", { class: "card-cat" }, state.categories.get(p.category) || ""),
        h("h2", { class: "card-title" }, h("a", { href: `#/product/${p.id}` }, p.name)),
        h("p", { class: "price" }, money(cents(p.price))),
        stockLabel(p),
        buyForm(p, "card")));
  }

  // ---- the catalog's place in the URL ----

  // The shop URL of the current filters: "#/" plus a query of what is not the default.
  function shopUrl() {
    const params = new URLSearchParams();
    if (state.category) params.set("category", state.category);
    if (state.name) params.set("q", state.name);
    if (state.sort) params.set("sort", state.sort);
    if (state.inStock) params.set("stock", "in");
    if (state.pages > 1) params.set("pages", state.pages);
    const query = params.toString();
    return query ? `#/?${query}` : "#/";
  }

  const SORTS = ["", "-id", "price", "-price", "name", "-name"];

  // Reads the filters from a shop URL; anything unknown falls back to the default.
  function readShopUrl() {
    const hash = location.hash || "#/";
    const at = hash.indexOf("?");
    const params = new URLSearchParams(at >= 0 ? hash.slice(at + 1) : "");
    state.category = /^\d+$/.test(params.get("category") || "") ? params.get("category") : "";
    state.name = (params.get("q") || "").trim().slice(0, 200);
    state.sort = SORTS.includes(params.get("sort")) ? params.get("sort") : "";
    state.inStock = params.get("stock") === "in";
    state.pages = Math.min(Math.max(parseInt(params.get("pages"), 10) || 1, 1), 40);
    $("search").value = state.name;
    $("sort").value = state.sort;
    $("in-stock").checked = state.inStock;
    renderCategories();
  }

  // A new list (a filter changed): a new history entry, so Back returns to the last list.
  function newList() {
    state.pages = 1;
    history.pushState({ scroll: 0 }, "", shopUrl());
    route(); // the catalog, also from another view (a search typed on a product page)
  }

  // Shows the catalog the URL asks for: loads it if it is not the one shown, then goes
  // back to where the shopper was on it (kept in the history entry).
  async function showShop() {
    readShopUrl();
    const url = shopUrl();
    if (state.listed !== url) {
      state.listed = url;
      await loadProducts(false);
    }
    const saved = history.state && history.state.scroll;
    window.scrollTo(0, typeof saved === "number" ? saved : 0);
  }

  // Keeps the scroll place of the shop in its history entry.
  let scrollTimer = null;
  window.addEventListener("scroll", () => {
    if ($("view-shop").hidden || scrollTimer) return;
    scrollTimer = setTimeout(() => {
      scrollTimer = null;
      if (!$("view-shop").hidden) history.replaceState({ ...(history.state || {}), scroll: window.scrollY }, "");
    }, 150);
  }, { passive: true });
  if ("scrollRestoration" in history) history.scrollRestoration = "manual";

  function renderCategories() {
    const chip = (id, label) =>
      h("button", {
        type: "button",
        class: "chip",
        "aria-pressed": String(state.category === id),
        onclick: () => {
          state.category = id;
          newList();
        },
      }, label);
    $("categories").replaceChildren(chip("", "All"), ...[...state.categories].map(([id, name]) => chip(String(id), name)));
  }

  async function loadCategories() {
    const list = await SW.all("/api/categories/");
    state.categories = new Map(list.map((c) => [c.id, c.name]));
    renderCategories();
  }

  async function loadProducts(append) {
    // A fresh list loads every page the URL names at once.
    const params = new URLSearchParams(append
      ? { limit: PAGE, offset: state.products.length }
      : { limit: PAGE * state.pages, offset: 0 });
    if (state.category) params.set("category", state.category);
    if (state.name) params.set("name", state.name);
    if (state.sort) params.set("ordering", state.sort);
    if (state.inStock) params.set("in_stock", "true");
    const load = ++state.loads;
    $("products").setAttribute("aria-busy", "true");
    try {
      const res = await SW.call("GET", "/api/products/?" + params, undefined, { auth: false });
      if (load !== state.loads) return; // a newer search is on its way
      res.body.forEach((p) => state.known.set(p.id, p));
      state.products = append ? state.products.concat(res.body) : res.body;
      state.total = res.total || state.products.length;
      const cards = res.body.map(card);
      if (append) $("products").append(...cards);
      else $("products").replaceChildren(...cards);
      renderCount();
      if (!performance.getEntriesByName("sw:products").length) performance.mark("sw:products");
    } catch (err) {
      notice(SW.explain(err), "error");
    } finally {
      $("products").removeAttribute("aria-busy");
    }
  }

  function renderCount() {
    const shown = state.products.length;
    const what = state.name ? ` matching “${state.name}”` : "";
    $("result-count").textContent = shown === 0
      ? `No products${what}. Try another search or category.`
      : `Showing ${shown} of ${state.total.toLocaleString("en-US")} products${what}`;
    $("more").hidden = shown >= state.total;
  }

  let searchTimer = null;
  function search(now) {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => {
      const name = $("search").value.trim();
      const inShop = !$("view-shop").hidden;
      if (name === state.name && inShop && !now) return;
      state.name = name;
      notice("", "");
      newList();
    }, now ? 0 : 400);
  }

  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    search(true);
  });
  $("search").addEventListener("input", () => search(false));
  $("sort").addEventListener("change", (event) => {
    state.sort = event.target.value;
    newList();
  });
  $("in-stock").addEventListener("change", (event) => {
    state.inStock = event.target.checked;
    newList();
  });
  $("more").addEventListener("click", async () => {
    await loadProducts(true);
    state.pages = Math.ceil(state.products.length / PAGE);
    state.listed = shopUrl();
    history.replaceState({ ...(history.state || {}), scroll: window.scrollY }, "", state.listed);
  });

  // Back to the list the shopper came from, at the same place (a step back in history),
  // or to the list the URL last showed.
  function backLink() {
    return h("a", {
      href: state.listed || "#/",
      class: "back",
      onclick: (event) => {
        if (state.cameFromShop) {
          event.preventDefault();
          history.back();
        }
      },
    }, "← Back to products");
  }

  async function showProduct(id) {
    const view = $("view-product");
    view.replaceChildren(h("p", { class: "muted" }, "Loading…"));
    try {
      const p = await SW.get(`/api/products/${id}/`);
      state.known.set(p.id, p);
      view.replaceChildren(
        h("p", {}, backLink()),
        h("article", { class: "detail panel" },
          productPictures(p),
          h("div", { class: "detail-body" },
            h("p", { class: "card-cat" }, state.categories.get(p.category) || ""),
            h("h1", {}, p.name),
            h("p", { class: "price big" }, money(cents(p.price))),
            stockLabel(p),
            h("p", { class: "description" }, p.description || "No description yet."),
            buyForm(p, "detail"))));
    } catch (err) {
      view.replaceChildren(
        h("p", {}, backLink()),
        h("p", { class: "panel" }, err.status === 404 ? "This product is no longer available." : SW.explain(err)));
    }
  }

  // ---- cart ----

  function renderBadge() {
    const count = state.cart.reduce((n, line) => n + line.quantity, 0);
    $("cart-count").textContent = String(count);
  }

  async function loadCart() {
    if (!SW.signedIn()) {
      state.cart = [];
      renderBadge();
      return;
    }
    const lines = await SW.all("/api/orderitems/");
    state.cart = lines.filter((line) => line.order === null);
    // Current prices and stock of what is in the cart.
    const ids = [...new Set(state.cart.map((line) => line.product))];
    await Promise.all(ids.map((id) =>
      SW.get(`/api/products/${id}/`)
        .then((p) => state.known.set(id, p))
        .catch((err) => {
          if (err.status === 404) state.known.set(id, null);
        })));
    renderBadge();
  }

  async function addToCart(p, quantity, button) {
    if (!SW.signedIn()) {
      state.after = location.hash || "#/";
      go("#/login", "Log in or create an account to add items to your cart.", "info");
      return;
    }
    // The cart never holds more than the stock: say so before asking the server (which
    // checks too, against the stock of that moment).
    const held = state.cart.filter((l) => l.product === p.id).reduce((n, l) => n + l.quantity, 0);
    if (held + quantity > p.stock) {
      const room = Math.max(p.stock - held, 0);
      notice(p.stock === 0 ? `${p.name} is sold out.`
        : `Only ${p.stock} left of ${p.name}` + (held ? `, and ${held} ${held === 1 ? "is" : "are"} already in your cart` : "") +
          (room ? `: you can add ${room} more.` : "."), "error");
      return;
    }
    button.disabled = true;
    try {
      const line = state.cart.find((l) => l.product === p.id);
      if (line) await SW.patch(`/api/orderitems/${line.id}/`, { quantity: line.quantity + quantity });
      else await SW.post("/api/orderitems/", { product: p.id, quantity });
      state.confirmation = null;
      await loadCart();
      notice(`Added ${quantity} × ${p.name} to your cart.`, "success");
    } catch (err) {
      notice(SW.explain(err, names()), "error");
    } finally {
      button.disabled = p.stock === 0;
    }
  }

  async function showCart() {
    const body = $("cart-body");
    if (!SW.signedIn()) {
      body.replaceChildren(h("div", { class: "panel empty" },
        h("p", {}, "Log in to see your cart."),
        h("p", {}, h("a", { class: "btn btn-primary", href: "#/login" }, "Log in"), " ",
          h("a", { class: "btn", href: "#/signup" }, "Create an account"))));
      return;
    }
    try {
      await loadCart();
    } catch (err) {
      notice(SW.explain(err), "error");
    }
    renderCart();
  }

  function renderConfirmation(order) {
    return h("div", { id: "order-confirmation", class: "panel success-panel", "data-order": order.id, tabindex: "-1" },
      h("h2", {}, "Order placed successfully"),
      h("p", { class: "order-meta" }, `Order number #${order.id} · Total ${money(cents(order.total))}`),
      h("ul", { class: "plain" }, order.items.map((item) =>
        h("li", {}, `${item.quantity} × ${item.product_name} at ${money(cents(item.unit_price))}`))),
      h("p", {}, h("a", { class: "btn", href: "#/orders" }, "See my orders"), " ",
        h("a", { class: "btn btn-light", href: "#/" }, "Keep shopping")));
  }

  function cartLine(line) {
    const p = state.known.get(line.product);
    const id = `cart-qty-${line.id}`;
    const short = state.shortages.get(line.product);
    const input = h("input", {
      id, type: "number", min: 1, max: 1000, value: line.quantity, inputmode: "numeric", name: "quantity",
      onchange: () => changeQuantity(line, Number(input.value)),
    });
    const remove = h("button", { class: "btn btn-ghost", type: "button", onclick: () => removeLine(line) }, "Remove");
    return h("li", { class: "line", "data-item": line.id, "data-product": line.product },
      thumb(p || { name: line.product_name, category: 0 }, "small"),
      h("div", { class: "line-main" },
        h("p", { class: "line-name" }, p ? h("a", { href: `#/product/${p.id}` }, line.product_name) : line.product_name),
        p ? h("p", { class: "muted" }, `${money(cents(p.price))} each`) : h("p", { class: "warn" }, "No longer available"),
        short !== undefined ? h("p", { class: "warn" }, short === 0 ? "Sold out" : `Only ${short} left`) : null),
      h("div", { class: "line-qty" }, h("label", { for: id }, "Quantity"), input),
      h("p", { class: "line-total" }, p ? money(cents(p.price) * line.quantity) : "—"),
      remove);
  }

  function renderCart() {
    const body = $("cart-body");
    const parts = [];
    if (state.confirmation) parts.push(renderConfirmation(state.confirmation));
    if (state.cart.length === 0) {
      if (!state.confirmation) {
        parts.push(h("div", { class: "panel empty" },
          h("p", {}, "Your cart is empty."),
          h("p", {}, h("a", { class: "btn btn-primary", href: "#/" }, "Browse products"))));
      }
      body.replaceChildren(...parts);
      return;
    }
    const subtotal = state.cart.reduce((sum, line) => {
      const p = state.known.get(line.product);
      return sum + (p ? cents(p.price) * line.quantity : 0);
    }, 0);
    const checkout = h("button", { id: "checkout", class: "btn btn-primary btn-big", type: "button" }, "Place order");
    checkout.addEventListener("click", () => placeOrder(checkout));
    parts.push(
      h("ul", { class: "lines panel" }, state.cart.map(cartLine)),
      h("div", { class: "summary panel" },
        h("p", {}, "Subtotal ", h("strong", { id: "subtotal" }, money(subtotal))),
        h("p", { class: "muted" }, "Prices are checked again when you place the order."),
        checkout));
    body.replaceChildren(...parts);
  }

  async function changeQuantity(line, quantity) {
    if (!Number.isInteger(quantity) || quantity < 1) {
      notice("Quantity must be a whole number of at least 1. Use Remove to take it out.", "error");
      renderCart();
      return;
    }
    try {
      await SW.patch(`/api/orderitems/${line.id}/`, { quantity });
      state.shortages.delete(line.product);
      notice("", "");
    } catch (err) {
      notice(SW.explain(err, names()), "error");
    }
    await showCart();
  }

  async function removeLine(line) {
    try {
      await SW.del(`/api/orderitems/${line.id}/`);
      state.shortages.delete(line.product);
      notice(`Removed ${line.product_name} from your cart.`, "info");
    } catch (err) {
      notice(SW.explain(err, names()), "error");
    }
    await showCart();
  }

  async function placeOrder(button) {
    button.disabled = true;
    state.checkoutKey = state.checkoutKey || SW.idempotencyKey();
    try {
      const order = await SW.post("/api/orders/", { order_items: state.cart.map((l) => l.id) },
        { headers: { "Idempotency-Key": state.checkoutKey } });
      state.checkoutKey = null;
      state.shortages.clear();
      state.confirmation = order;
      notice("", "");
      await showCart();
      $("order-confirmation").focus();
    } catch (err) {
      // Only a lost answer may be retried with the same key; any answer settles it.
      if (err.status !== 0) state.checkoutKey = null;
      state.shortages.clear();
      if (err.status === 409 && Array.isArray(err.body.items)) {
        err.body.items.forEach((s) => state.shortages.set(s.product, s.available));
      }
      notice(SW.explain(err, names()), "error");
      await showCart();
    }
  }

  // ---- orders ----

  async function showOrders() {
    const body = $("orders-body");
    if (!SW.signedIn()) {
      body.replaceChildren(h("p", { class: "panel" }, "Log in to see your orders. ",
        h("a", { href: "#/login" }, "Log in")));
      return;
    }
    body.replaceChildren(h("p", { class: "muted" }, "Loading…"));
    try {
      const orders = await SW.get("/api/orders/?limit=50");
      body.replaceChildren(...(orders.length ? orders.map(orderCard)
        : [h("p", { class: "panel empty" }, "No orders yet. ", h("a", { href: "#/" }, "Start shopping"))]));
    } catch (err) {
      body.replaceChildren();
      notice(SW.explain(err), "error");
    }
  }

  const ORDER_STATUS = {
    placed: "Placed", paid: "Paid", shipped: "Shipped", delivered: "Delivered", cancelled: "Cancelled",
  };

  function orderCard(order) {
    const actions = [];
    if (order.status === "placed") {
      const cancel = h("button", { class: "btn btn-danger", type: "button" }, "Cancel order");
      SW.confirmClick(cancel, `Yes, cancel order #${order.id}`, () => cancelOrder(order));
      actions.push(cancel);
    }
    return h("article", { class: "order panel", "data-order": order.id },
      h("header", { class: "order-head" },
        h("h2", {}, `Order #${order.id}`),
        h("span", { class: `status ${order.status}` }, ORDER_STATUS[order.status] || order.status)),
      h("p", { class: "muted" }, SW.date(order.created_at)),
      h("ul", { class: "plain" }, order.items.map((item) =>
        h("li", {}, `${item.quantity} × ${item.product_name}`,
          h("span", { class: "muted" }, ` at ${money(cents(item.unit_price))}`)))),
      h("footer", { class: "order-foot" }, h("p", {}, "Total ", h("strong", {}, money(cents(order.total)))), ...actions));
  }

  async function cancelOrder(order) {
    try {
      await SW.post(`/api/orders/${order.id}/cancel/`);
      notice(`Order #${order.id} is cancelled. Nothing will be charged or shipped.`, "success");
    } catch (err) {
      notice(SW.explain(err), "error");
    }
    await showOrders();
  }

  // ---- product pictures: the main image, and the others to choose from ----

  function productPictures(p) {
    const main = thumb(p, "big");
    const box = h("div", { class: "pictures" }, main);
    if (!p.image) return box;
    SW.get(`/api/products/${p.id}/images/`).then((images) => {
      if (images.length < 2) return;
      const buttons = images.map((image, n) => {
        const button = h("button", {
          type: "button", class: "picture-choice", "aria-pressed": String(n === 0),
          "aria-label": `Show picture ${n + 1} of ${images.length}`,
        }, h("img", { src: image.thumbnail, alt: "" }));
        button.addEventListener("click", () => {
          main.src = image.url;
          buttons.forEach((b) => b.setAttribute("aria-pressed", String(b === button)));
        });
        return button;
      });
      box.append(h("ul", { class: "image-list" }, buttons.map((b) => h("li", {}, b))));
    }).catch(() => {});
    return box;
  }

  // ---- my account: details, phone, password change, logout ----

  async function showAccount() {
    const body = $("account-body");
    await SW.ready;
    if (!SW.signedIn()) {
      state.after = "#/account";
      body.replaceChildren(h("p", { class: "panel" }, "Log in to see your account. ",
        h("a", { href: "#/login" }, "Log in")));
      return;
    }
    try {
      state.user = await SW.get("/api/users/me/");
    } catch (err) {
      notice(SW.explain(err), "error");
      return;
    }
    renderAccount();
    body.replaceChildren(accountDetails(state.user), passwordForm(),
      h("div", { class: "panel" },
        h("h2", {}, "Log out"),
        h("p", { class: "muted" }, "Logging out ends this session on every tab of this browser."),
        h("button", { id: "account-logout", class: "btn", type: "button", onclick: () => { leaving = true; SW.signOut(); } },
          "Log out")));
  }

  function accountDetails(user) {
    const row = (label, value, id) => [h("dt", {}, label), h("dd", { id }, value || "—")];
    return h("div", { class: "panel" },
      h("h2", {}, "Your details"),
      h("dl", { class: "details" },
        row("Username", user.username, "account-username"),
        row("Email", user.email, "account-email"),
        row("Phone", user.phone_number, "account-phone"),
        row("Member since", SW.date(user.date_joined), "account-joined"),
        row("Account", user.is_staff ? "Staff" : "Shopper", "account-kind")));
  }

  function passwordForm() {
    const field = (id, label, autocomplete, hint) => [
      h("label", { for: id }, label),
      h("input", { id, name: id.replace("account-", "").replace(/-/g, "_"), type: "password", autocomplete, required: true,
        minlength: id === "account-current-password" ? 1 : 8, maxlength: 128, "aria-describedby": hint ? `${id}-hint` : null }),
      hint ? h("p", { id: `${id}-hint`, class: "hint" }, hint) : null,
    ];
    const form = h("form", { id: "password-form", class: "form" },
      h("h2", {}, "Change your password"),
      ...field("account-current-password", "Current password", "current-password"),
      ...field("account-new-password", "New password", "new-password",
        "At least 8 characters. Other browsers and devices are logged out."),
      h("button", { class: "btn btn-primary", type: "submit" }, "Change password"));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const button = form.querySelector("button[type=submit]");
      button.disabled = true;
      try {
        const pair = await SW.post("/api/users/me/password/", {
          current_password: form.current_password.value,
          new_password: form.new_password.value,
        });
        SW.keep(pair);
        form.reset();
        notice("Your password is changed. Other sessions are logged out; this one goes on.", "success");
      } catch (err) {
        notice(SW.explain(err), "error");
      } finally {
        button.disabled = false;
      }
    });
    return h("div", { class: "panel" }, form);
  }

  // ---- start ----

  // Back and Forward: popstate comes first, and a hashchange after it when the hash
  // differs; each entry is handled once.
  let traversed = null;
  window.addEventListener("popstate", () => {
    traversed = location.href;
    arrive();
  });
  window.addEventListener("hashchange", () => {
    if (traversed === location.href) {
      traversed = null;
      return;
    }
    traversed = null;
    arrive();
  });
  $("products").addEventListener("click", () => {
    history.replaceState({ ...(history.state || {}), scroll: window.scrollY }, "");
  });

  (async () => {
    renderAccount();
    // The catalog waits for the category names its cards show; other views need not.
    const shop = viewOf(location.hash)[0] === "shop";
    if (!shop) route();
    await Promise.all([
      loadCategories().catch((err) => notice(SW.explain(err), "error")),
      loadUser().then(() => loadCart()).catch(() => {}),
    ]);
    if (shop || location.hash.startsWith("#/product/")) {
      route(); // the product page again, now with category names
    } else {
      // The catalog of the default list, ready for when the shopper goes there.
      readShopUrl();
      state.listed = "#/";
      await loadProducts(false);
    }
  })();
})();
