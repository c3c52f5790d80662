// Soundwave pages: what the storefront and the admin share. Tokens, calls to the JSON API,
// errors in plain words, money, and a small helper to build DOM nodes. No framework.
"use strict";

const SW = (() => {
  const ACCESS = "sw.access";
  const EXPIRES = "sw.expires"; // local time (ms) when the access token runs out
  // localStorage: this browser has a session, so a new tab asks the refresh cookie for
  // tokens. The refresh token itself is only in that HttpOnly cookie: no script reads it.
  const SESSION = "sw.session";
  const REFRESH_MARGIN_MS = 30000;
  let refreshing = null;
  let timer = null;
  const onLogout = [];

  // ---- tokens: the access token in sessionStorage (per tab); the refresh token in the
  // HttpOnly cookie the API sets (Path=/api/token/, SameSite=Strict), shared by the tabs ----

  function claims(token) {
    try {
      const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(atob(part));
    } catch (_) {
      return null;
    }
  }

  function signedIn() {
    return sessionStorage.getItem(ACCESS) !== null;
  }

  function keep(pair) {
    const c = claims(pair.access) || {};
    // The lifetime from the token itself, counted on this clock (the server's may differ).
    const lifetime = c.exp && c.iat ? (c.exp - c.iat) * 1000 : 300000;
    sessionStorage.setItem(ACCESS, pair.access);
    sessionStorage.setItem(EXPIRES, String(Date.now() + lifetime));
    localStorage.setItem(SESSION, "1");
    schedule();
  }

  function forget() {
    clearTimeout(timer);
    [ACCESS, EXPIRES, "sw.refresh"].forEach((k) => sessionStorage.removeItem(k));
  }

  function msLeft() {
    return Number(sessionStorage.getItem(EXPIRES) || 0) - Date.now();
  }

  // Refresh shortly before the access token expires, so a shopper never sees it lapse.
  function schedule() {
    clearTimeout(timer);
    if (!signedIn()) return;
    const wait = Math.max(msLeft() - REFRESH_MARGIN_MS, 1000);
    timer = setTimeout(() => refresh().catch(() => {}), wait);
  }

  // One refresh at a time: the refresh token rotates, so two at once would log us out.
  // The cookie carries it; another tab may have rotated it a moment before ours was sent,
  // so a refused refresh is tried once more (with the cookie that tab received).
  function refresh() {
    if (!refreshing) {
      refreshing = (async () => {
        let res = await send("POST", "/api/token/refresh/", {}, null);
        if (res.status === 401) {
          await new Promise((resolve) => setTimeout(resolve, 300));
          res = await send("POST", "/api/token/refresh/", {}, null);
        }
        // 401: the cookie's token is no longer good; 400: there is no cookie (another tab
        // logged out). Either way this session has ended.
        if (res.status === 401 || res.status === 400) {
          logout();
        }
        if (!res.ok) throw new ApiError(res.status, res.body, res.headers);
        keep(res.body);
      })().finally(() => {
        refreshing = null;
      });
    }
    return refreshing;
  }

  // Ends the session here: tokens forgotten, the pages told.
  function logout() {
    forget();
    localStorage.removeItem(SESSION);
    onLogout.forEach((fn) => fn());
  }

  // Logging out on purpose also revokes the refresh token (the server blacklists it and
  // clears the cookie), so no other tab or stolen copy can use it again.
  async function signOut() {
    await send("POST", "/api/token/blacklist/", {}, null).catch(() => {});
    logout();
  }

  // A new tab of a browser with a session: tokens from the refresh cookie. Resolves once
  // known either way; pages wait for it before asking who is signed in.
  const ready = (async () => {
    if (signedIn() || localStorage.getItem(SESSION) === null) return;
    const res = await send("POST", "/api/token/refresh/", {}, null).catch(() => null);
    if (res && res.ok) keep(res.body);
    else localStorage.removeItem(SESSION);
  })();

  async function login(username, password) {
    const res = await send("POST", "/api/token/", { username, password }, null);
    if (!res.ok) throw new ApiError(res.status, res.body, res.headers);
    keep(res.body);
  }

  // ---- calls ----

  class ApiError extends Error {
    constructor(status, body, headers) {
      super((body && body.detail) || "HTTP " + status);
      this.status = status;
      this.body = body || {};
      this.headers = headers;
    }
  }

  async function send(method, path, body, token, extraHeaders) {
    const headers = Object.assign({ Accept: "application/json" }, extraHeaders || {});
    if (body !== undefined && body !== null) headers["Content-Type"] = "application/json";
    if (token) headers.Authorization = "Bearer " + token;
    let res;
    try {
      res = await fetch(path, {
        method,
        headers,
        body: body === undefined || body === null ? undefined : JSON.stringify(body),
      });
    } catch (_) {
      throw new ApiError(0, { detail: "Network error" });
    }
    let data = null;
    if (res.status !== 204) data = await res.json().catch(() => null);
    return { ok: res.ok, status: res.status, body: data, headers: res.headers };
  }

  // Calls the API; signed-in calls carry the access token, refreshed first when it is about
  // to expire and once more if the server says it is no longer valid.
  // Returns { body, total } (total from X-Total-Count on lists).
  async function call(method, path, body, options) {
    const opts = options || {};
    const auth = signedIn() && opts.auth !== false;
    if (auth && msLeft() < 5000) await refresh();
    let res = await send(method, path, body, auth ? sessionStorage.getItem(ACCESS) : null, opts.headers);
    if (res.status === 401 && auth) {
      await refresh();
      res = await send(method, path, body, sessionStorage.getItem(ACCESS), opts.headers);
    }
    if (!res.ok) throw new ApiError(res.status, res.body, res.headers);
    const total = res.headers.get("X-Total-Count");
    return { body: res.body, total: total === null ? null : Number(total) };
  }

  // Sends a file as the raw body (its own content type), signed in like `call`.
  async function upload(path, file) {
    const headers = { Accept: "application/json", "Content-Type": file.type || "application/octet-stream" };
    const attempt = async () => {
      if (msLeft() < 5000) await refresh();
      const res = await fetch(path, {
        method: "POST",
        headers: Object.assign({ Authorization: "Bearer " + sessionStorage.getItem(ACCESS) }, headers),
        body: file,
      }).catch(() => null);
      if (!res) throw new ApiError(0, { detail: "Network error" });
      return { status: res.status, ok: res.ok, headers: res.headers, body: await res.json().catch(() => null) };
    };
    let res = await attempt();
    if (res.status === 401) {
      await refresh();
      res = await attempt();
    }
    if (!res.ok) throw new ApiError(res.status, res.body, res.headers);
    return res.body;
  }

  // A signed-in answer that is not JSON (a CSV export), as a Blob.
  async function download(path) {
    const fetchIt = () => fetch(path, { headers: { Authorization: "Bearer " + sessionStorage.getItem(ACCESS) } });
    if (msLeft() < 5000) await refresh();
    let res = await fetchIt().catch(() => null);
    if (res && res.status === 401) {
      await refresh();
      res = await fetchIt().catch(() => null);
    }
    if (!res) throw new ApiError(0, { detail: "Network error" });
    if (!res.ok) throw new ApiError(res.status, await res.json().catch(() => null), res.headers);
    return res.blob();
  }

  // Runs a change (a staff page's action), says in `box` how it went, and reloads what it
  // touched, whatever happened; true when the change went through.
  async function change(box, action, success, reload) {
    try {
      await action();
      notify(box, success, "success");
    } catch (err) {
      notify(box, explain(err), "error");
      return false;
    } finally {
      await reload();
    }
    return true;
  }

  const get = async (path) => (await call("GET", path)).body;
  const post = async (path, body, opts) => (await call("POST", path, body || {}, opts)).body;
  const patch = async (path, body) => (await call("PATCH", path, body)).body;
  const del = async (path) => (await call("DELETE", path)).body;

  // Every page of a list (bounded: the API caps a page at 1000 entries).
  async function all(path) {
    const out = [];
    const sep = path.includes("?") ? "&" : "?";
    for (let page = 0; page < 50; page++) {
      const res = await call("GET", `${path}${sep}limit=1000&offset=${out.length}`);
      out.push(...res.body);
      if (res.body.length === 0 || res.total === null || out.length >= res.total) break;
    }
    return out;
  }

  // A key that makes retrying the same checkout safe (works on plain http too).
  function idempotencyKey() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // ---- words ----

  const FIELDS = {
    username: "Username",
    password: "Password",
    email: "Email",
    phone_number: "Phone number",
    quantity: "Quantity",
    product: "Product",
    items: "Your cart",
    order_items: "Your cart",
    name: "Name",
    price: "Price",
    stock: "Stock",
    description: "Description",
    category: "Category",
    current_password: "Current password",
    new_password: "New password",
    image: "Image",
  };

  // What went wrong, in words for people, from the API's answer. `names` maps product ids
  // to names, for stock problems.
  function explain(err, names) {
    if (!(err instanceof ApiError)) return "Something went wrong. Please try again.";
    const b = err.body || {};
    switch (err.status) {
      case 0:
        return "We can't reach the shop right now. Check your connection and try again.";
      case 401:
        if (b.detail === "No active account found with the given credentials") {
          return "That username and password don't match an account.";
        }
        return "Your session has ended. Please log in again.";
      case 403:
        return "Your account isn't allowed to do that.";
      case 404:
        return "That item is no longer available.";
      case 409:
        if (Array.isArray(b.items)) {
          const lines = b.items.map((s) => {
            const name = (names && names[s.product]) || `product #${s.product}`;
            return s.available === 0 ? `${name} is sold out` : `Only ${s.available} left of ${name}`;
          });
          return lines.join(". ") + ". Please lower the quantity and try again.";
        }
        return b.detail || "That conflicts with the current state. Please reload and try again.";
      case 413:
        return "That is too much to send at once.";
      case 415:
        return "That kind of file is not accepted here.";
      case 429: {
        const wait = err.headers && err.headers.get("Retry-After");
        return wait
          ? `Too many attempts. Please wait ${wait} seconds and try again.`
          : "Too many attempts. Please wait a moment and try again.";
      }
      case 400: {
        if (typeof b.detail === "string") return b.detail;
        const parts = Object.entries(b).map(([field, msgs]) => {
          const text = Array.isArray(msgs) ? msgs.join(" ") : String(msgs);
          return FIELDS[field] ? `${FIELDS[field]}: ${text}` : text;
        });
        return parts.join(" ") || "Please check what you entered.";
      }
      default:
        return "Something went wrong on our side. Please try again in a moment.";
    }
  }

  // ---- money: decimal strings in, cents inside, formatted out ----

  const CURRENCY = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD" });
  const cents = (price) => Math.round(Number(price) * 100);
  const money = (c) => CURRENCY.format(c / 100);

  // ---- DOM ----

  // h("button", {class: "btn", onclick: fn}, "text", child...) — text is never parsed as HTML.
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === false || value === null || value === undefined) continue;
      if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else if (key === "class") el.className = value;
      else el.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : String(child));
    }
    return el;
  }

  // Shows a message in a live region; errors are announced at once.
  function notify(el, text, kind) {
    el.replaceChildren(text ? h("p", {}, text) : "");
    el.className = "notice" + (text ? " " + (kind || "info") : "");
    el.setAttribute("role", kind === "error" ? "alert" : "status");
    if (text) el.scrollIntoView({ block: "nearest" });
  }

  // A destructive button asks once more before acting (no blocking confirm() dialogs).
  function confirmClick(button, question, action) {
    const label = button.textContent;
    button.addEventListener("click", () => {
      if (button.dataset.armed) {
        delete button.dataset.armed;
        button.textContent = label;
        action();
      } else {
        button.dataset.armed = "1";
        button.textContent = question;
      }
    });
    button.addEventListener("blur", () => {
      delete button.dataset.armed;
      button.textContent = label;
    });
  }

  const date = (iso) =>
    new Date(iso).toLocaleString("en-US", { dateStyle: "medium", timeStyle: "short" });

  schedule();

  return {
    ApiError, signedIn, ready, login, logout, signOut, keep, onLogout, refresh, call, upload,
    get, post, patch, del, all,
    idempotencyKey, explain, cents, money, h, notify, confirmClick, date,
    download, change,
  };
})();
