// The admin: categories and products, for staff users, over the public JSON API (orders,
// users and sales are in admin-ops.js).
"use strict";

(() => {
  const { h, money, cents } = SW;
  const PAGE = 50;
  // At or below this many units a product shows in the low-stock view.
  const LOW_STOCK = 5;
  const $ = (id) => document.getElementById(id);

  const state = {
    user: null,
    tab: "products",
    categories: [],
    products: { offset: 0, total: 0, name: "", category: "", sort: "", lowStock: false, highlight: null },
    editingProduct: null,
    editingCategory: null,
  };

  const notice = (text, kind) => SW.notify($("notice"), text, kind);
  const categoryName = (id) => (state.categories.find((c) => c.id === id) || {}).name || `#${id}`;

  // ---- who may be here ----

  function show(view) {
    for (const v of ["login", "refused", "panel"]) $("view-" + v).hidden = v !== view;
  }

  function renderAccount() {
    $("who").hidden = !state.user;
    $("who").textContent = state.user ? `Signed in as ${state.user.username}` : "";
    $("logout").hidden = !state.user;
  }

  async function start() {
    await SW.ready; // a new tab of a signed-in browser gets its tokens first
    if (!SW.signedIn()) {
      show("login");
      $("login-username").focus();
      return;
    }
    try {
      state.user = await SW.get("/api/users/me/");
    } catch (err) {
      notice(SW.explain(err), "error");
      return;
    }
    renderAccount();
    if (!state.user.is_staff) {
      $("refusal-text").textContent = `You are signed in as ${state.user.username}, a shopper account. ` +
        "This area is only for Soundwave staff, so nothing here is available to you.";
      show("refused");
      return;
    }
    show("panel");
    await loadCategories();
    selectTab(state.tab);
  }

  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.target;
    try {
      await SW.login(form.username.value.trim(), form.password.value);
      form.reset();
      notice("", "");
      await start();
    } catch (err) {
      notice(SW.explain(err), "error");
    }
  });

  let leaving = false;
  const logout = () => {
    leaving = true;
    SW.signOut();
  };
  $("logout").addEventListener("click", logout);
  $("refused-logout").addEventListener("click", logout);
  SW.onLogout.push(() => {
    state.user = null;
    renderAccount();
    show("login");
    notice(leaving ? "You are logged out." : "Your session has ended. Please log in again.", "info");
    leaving = false;
  });

  // ---- tabs ----

  function selectTab(tab) {
    state.tab = tab;
    for (const button of document.querySelectorAll("[data-tab]")) {
      const on = button.dataset.tab === tab;
      button.setAttribute("aria-pressed", String(on));
      $("tab-" + button.dataset.tab).hidden = !on;
    }
    if (tab === "products") loadProducts();
    if (tab === "categories") renderCategories();
    // Orders, users and sales live in admin-ops.js.
    document.dispatchEvent(new CustomEvent("admin:tab", { detail: tab }));
  }

  for (const button of document.querySelectorAll("[data-tab]")) {
    button.addEventListener("click", () => {
      notice("", "");
      selectTab(button.dataset.tab);
    });
  }

  // Runs a change, says how it went, and reloads what it touched.
  const change = (action, success, reload) => SW.change($("notice"), action, success, reload);

  function deleteButton(what, action) {
    const button = h("button", { class: "btn btn-danger", type: "button" }, "Delete");
    SW.confirmClick(button, `Really delete ${what}?`, action);
    return button;
  }

  // ---- categories ----

  async function loadCategories() {
    try {
      state.categories = await SW.all("/api/categories/");
    } catch (err) {
      notice(SW.explain(err), "error");
    }
    const options = state.categories.map((c) => h("option", { value: c.id }, c.name));
    const chosen = $("product-category").value;
    $("product-category").replaceChildren(h("option", { value: "" }, "Choose a category…"), ...options);
    $("product-category").value = chosen;
    $("product-filter-category").replaceChildren(h("option", { value: "" }, "All categories"),
      ...state.categories.map((c) => h("option", { value: c.id }, c.name)));
    $("product-filter-category").value = state.products.category;
    renderCategories();
  }

  function renderCategories() {
    $("category-rows").replaceChildren(...state.categories.map((c) =>
      h("tr", { "data-category": c.id },
        h("td", {}, c.id),
        h("td", {}, c.name),
        h("td", { class: "actions" },
          h("button", { class: "btn", type: "button", onclick: () => editCategory(c) }, "Rename"),
          deleteButton(c.name, () => change(() => SW.del(`/api/categories/${c.id}/`),
            `Deleted the category ${c.name}.`, loadCategories))))));
  }

  function editCategory(c) {
    state.editingCategory = c;
    $("category-form-title").textContent = `Rename category #${c.id}`;
    $("category-submit").textContent = "Save name";
    $("category-cancel").hidden = false;
    $("category-name").value = c.name;
    $("category-name").focus();
  }

  function resetCategoryForm() {
    state.editingCategory = null;
    $("category-form").reset();
    $("category-form-title").textContent = "Add a category";
    $("category-submit").textContent = "Add category";
    $("category-cancel").hidden = true;
  }

  $("category-cancel").addEventListener("click", resetCategoryForm);
  $("category-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = $("category-name").value.trim();
    const editing = state.editingCategory;
    const ok = await change(
      () => (editing ? SW.patch(`/api/categories/${editing.id}/`, { name }) : SW.post("/api/categories/", { name })),
      editing ? `Renamed the category to ${name}.` : `Added the category ${name}.`,
      loadCategories);
    if (ok) resetCategoryForm();
  });

  // ---- products ----

  async function loadProducts() {
    const p = state.products;
    const params = new URLSearchParams({ limit: PAGE, offset: p.offset });
    if (p.name) params.set("name", p.name);
    if (p.category) params.set("category", p.category);
    if (p.sort) params.set("ordering", p.sort);
    if (p.lowStock) params.set("max_stock", LOW_STOCK);
    renderSortHeaders();
    try {
      const res = await SW.call("GET", "/api/products/?" + params);
      p.total = res.total || 0;
      if (res.body.length === 0 && p.offset > 0) {
        p.offset = Math.max(0, p.offset - PAGE);
        return loadProducts();
      }
      $("product-rows").replaceChildren(...res.body.map(productRow));
      const added = p.highlight && document.querySelector(`[data-product="${p.highlight}"]`);
      if (added) {
        added.classList.add("just-added");
        added.scrollIntoView({ block: "nearest" });
      }
      p.highlight = null;
      $("product-range").textContent = res.body.length
        ? `${p.offset + 1}–${p.offset + res.body.length} of ${p.total}` : "No products";
      $("product-prev").disabled = p.offset === 0;
      $("product-next").disabled = p.offset + res.body.length >= p.total;
    } catch (err) {
      notice(SW.explain(err), "error");
    }
  }

  // Sortable columns: a header click sorts by it, a second click reverses; the select
  // and the headers show the same order.
  function renderSortHeaders() {
    const sort = state.products.sort;
    $("product-sort").value = sort;
    for (const th of document.querySelectorAll("th[data-sort]")) {
      const key = th.dataset.sort;
      th.setAttribute("aria-sort", sort === key ? "ascending" : sort === "-" + key ? "descending" : "none");
    }
  }

  for (const th of document.querySelectorAll("th[data-sort]")) {
    th.querySelector("button").addEventListener("click", () => {
      const key = th.dataset.sort;
      const p = state.products;
      p.sort = p.sort === key ? "-" + key : key;
      p.offset = 0;
      loadProducts();
    });
  }

  function productRow(p) {
    const low = p.stock <= LOW_STOCK;
    return h("tr", { "data-product": p.id, class: low ? "low-stock" : "" },
      h("td", {}, p.id),
      h("td", {}, p.name),
      h("td", {}, categoryName(p.category)),
      h("td", { class: "num" }, money(cents(p.price))),
      h("td", { class: "num" }, p.stock === 0 ? "Sold out" : p.stock),
      h("td", { class: "actions" },
        h("button", { class: "btn", type: "button", onclick: () => editProduct(p) }, "Edit"),
        deleteButton(p.name, () => change(() => SW.del(`/api/products/${p.id}/`),
          `Deleted ${p.name}.`, loadProducts))));
  }

  function editProduct(p) {
    state.editingProduct = p;
    $("product-form-title").textContent = `Edit product #${p.id}`;
    $("product-submit").textContent = "Save changes";
    $("product-cancel").hidden = false;
    $("product-name").value = p.name;
    $("product-category").value = String(p.category);
    $("product-price").value = p.price;
    $("product-stock").value = p.stock;
    $("product-description").value = p.description;
    showImages(p);
    $("product-name").focus();
  }

  function resetProductForm() {
    state.editingProduct = null;
    $("product-form").reset();
    $("product-form-title").textContent = "Add a product";
    $("product-submit").textContent = "Add product";
    $("product-cancel").hidden = true;
    $("product-images").hidden = true;
  }

  $("product-cancel").addEventListener("click", resetProductForm);
  $("product-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = {
      name: $("product-name").value.trim(),
      category: Number($("product-category").value),
      price: $("product-price").value.trim(),
      stock: Number($("product-stock").value),
      description: $("product-description").value,
    };
    const editing = state.editingProduct;
    const ok = await change(
      async () => {
        if (editing) return SW.patch(`/api/products/${editing.id}/`, body);
        // A new product is shown at once: newest first, on the first page, marked.
        const created = await SW.post("/api/products/", body);
        Object.assign(state.products, { sort: "-id", offset: 0, name: "", category: "", lowStock: false,
          highlight: created.id });
        $("product-filter").value = "";
        $("product-filter-category").value = "";
        $("product-low-stock").checked = false;
        return created;
      },
      editing ? `Saved ${body.name}.` : `Added ${body.name} to the catalog.`,
      loadProducts);
    if (ok) resetProductForm();
  });

  $("product-filters").addEventListener("submit", (event) => {
    event.preventDefault();
    state.products.name = $("product-filter").value.trim();
    state.products.category = $("product-filter-category").value;
    state.products.sort = $("product-sort").value;
    state.products.lowStock = $("product-low-stock").checked;
    state.products.offset = 0;
    loadProducts();
  });
  for (const id of ["product-sort", "product-low-stock"]) {
    $(id).addEventListener("change", () => $("product-filters").requestSubmit());
  }
  $("product-prev").addEventListener("click", () => {
    state.products.offset = Math.max(0, state.products.offset - PAGE);
    loadProducts();
  });
  $("product-next").addEventListener("click", () => {
    state.products.offset += PAGE;
    loadProducts();
  });

  // ---- product images (in the edit form) ----

  async function showImages(p) {
    $("product-images").hidden = false;
    const list = $("product-image-list");
    list.replaceChildren(h("li", { class: "muted" }, "Loading images…"));
    let images = [];
    try {
      images = await SW.get(`/api/products/${p.id}/images/`);
    } catch (err) {
      notice(SW.explain(err), "error");
    }
    if (!state.editingProduct || state.editingProduct.id !== p.id) return; // another product since
    list.replaceChildren(...images.map((image, n) =>
      h("li", { "data-image": image.hash },
        h("img", { src: image.thumbnail, alt: `${p.name}, image ${n + 1}${n === 0 ? " (main)" : ""}` }),
        deleteButton(`image ${n + 1}`, () => change(() => SW.del(`/api/products/${p.id}/images/${image.hash}/`),
          `Deleted image ${n + 1} of ${p.name}.`, () => reloadImages(p))))));
    if (!images.length) list.replaceChildren(h("li", { class: "muted" }, "No images yet."));
  }

  async function reloadImages(p) {
    if (state.editingProduct && state.editingProduct.id === p.id) await showImages(p);
    await loadProducts();
  }

  $("product-image-upload").addEventListener("click", async () => {
    const p = state.editingProduct;
    const file = $("product-image-file").files[0];
    if (!p) return;
    if (!file) {
      notice("Choose an image file first.", "error");
      return;
    }
    const button = $("product-image-upload");
    button.disabled = true;
    try {
      await SW.upload(`/api/products/${p.id}/images/`, file);
      $("product-image-file").value = "";
      notice(`Added an image to ${p.name}.`, "success");
      await reloadImages(p);
    } catch (err) {
      notice(SW.explain(err), "error");
    } finally {
      button.disabled = false;
    }
  });

  start();
})();
