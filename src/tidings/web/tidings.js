// tidings.js — the browser client of tidings. A dependency-free ES module.
//
//   import { Tidings } from "/tidings.js";
//   const t = new Tidings("/ws", { token });          // or no token: the cookie authenticates
//   t.addEventListener("count", (e) => badge.textContent = e.detail.count);
//   t.connect();
//   const notes = await t.getUnseen();  await t.markSeen(notes.map((n) => n.notification_id));
//   const feed = t.feed({ state: "unread" });          // the inbox, page by page, kept live
//   feed.addEventListener("change", () => render(feed.items));  feed.loadMore();
//
// Events (CustomEvent, data in `detail`): open, welcome, count {count, version, unread,
// categories, initial}, notification {notification} (deliver mode, once per id), inboxChange
// {change, ids, marked, notifications} (after this client's markSeen, markRead, archive, …
// succeeded; ids null for the mark-alls), topicMessage {topic, seq, data, creation_date},
// queueGap {reason, skipped}, error {code, message}, close {code, reason}, unauthorized {code}.

const SESSION_KEY = "tidings.session_id";
const CONNECTION_KEY = "tidings.connection_id";
const DEDUPE_WINDOW = 10000;

function randomId() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return btoa(String.fromCharCode(...bytes)).replace(/[+/=]/g, (c) => ({ "+": "-", "/": "_", "=": "" })[c]);
}

function sessionIdOfThisTab() {
  try {
    let id = sessionStorage.getItem(SESSION_KEY);
    if (!id) {
      id = randomId();
      sessionStorage.setItem(SESSION_KEY, id);
    }
    return id;
  } catch {
    return randomId(); // storage disabled: one session per page load
  }
}

function storedConnectionId() {
  try {
    return localStorage.getItem(CONNECTION_KEY);
  } catch {
    return null;
  }
}

export class Tidings extends EventTarget {
  /**
   * @param {string} url  WebSocket URL; relative ("/ws") resolves against the page.
   * @param {object} [options]
   * @param {string} [options.token]  device JWT (sent in an `authenticate` frame, never in the URL)
   * @param {() => Promise<string>} [options.getToken]  called for a fresh token on each connect
   * @param {string} [options.sessionId]  default: one per browser tab, kept across reloads
   * @param {boolean} [options.deliver]  deliver mode: notifications pushed, acked, de-duplicated
   * @param {number} [options.backoffBase]  ms, first reconnection delay (default 500)
   * @param {number} [options.backoffMax]  ms, longest reconnection delay (default 30000)
   * @param {number} [options.requestTimeout]  ms (default 10000)
   */
  constructor(url = "/ws", options = {}) {
    super();
    this.url = new URL(url, location.href);
    this.url.protocol = this.url.protocol.replace("http", "ws");
    this.token = options.token ?? null;
    this.getToken = options.getToken ?? null;
    this.sessionId = options.sessionId ?? sessionIdOfThisTab();
    this.deliver = Boolean(options.deliver);
    this.backoffBase = options.backoffBase ?? 500;
    this.backoffMax = options.backoffMax ?? 30000;
    this.requestTimeout = options.requestTimeout ?? 10000;
    this.count = null;
    this.unread = null;
    this.categories = {};
    this.version = -1;
    this.connectionId = null;
    this.userId = null;
    this.node = null;
    this.connected = false;
    this.topics = new Set();
    this.lastSeq = new Map(); // topic -> highest seq seen
    this._link = null; // the connection: a WebSocket, or an event stream (see _openStream)
    this._streaming = false; // WebSockets do not get through: use Server-Sent Events
    this._failures = 0; // WebSockets in a row that never opened
    this.fallback = options.fallback ?? true;
    this.webSocketRetry = options.webSocketRetry ?? 60000;
    this._nextId = 1;
    this._waiting = new Map();
    this._seen = new Set();
    this._toAck = [];
    this._ackTimer = null;
    this._attempt = 0;
    this._timer = null;
    this._stopped = true;
    this._feeds = new Set();
    this._welcomes = 0; // connections made
    this._initial = false; // the next counts are those that come with the welcome
  }

  /** Connect, and keep reconnecting with jittered exponential backoff until close(). */
  connect() {
    this._stopped = false;
    this._open();
    return this;
  }

  /** Disconnect for good. */
  close() {
    this._stopped = true;
    clearTimeout(this._timer);
    clearTimeout(this._probeTimer);
    if (this._link) this._link.close();
  }

  /** "websocket" or "sse": how the client is connected (or tries to). */
  get transport() {
    return this._streaming ? "sse" : "websocket";
  }

  async _open() {
    clearTimeout(this._timer);
    const attempt = (this._attemptId = (this._attemptId ?? 0) + 1);
    if (this._link) this._link.close();
    this._link = null; // what it reports as it ends is no longer news
    let token = this.token;
    if (this.getToken) {
      try {
        token = await this.getToken();
      } catch (error) {
        this._emit("error", { code: "token", message: String(error) });
        return this._retry();
      }
    }
    if (this._stopped || attempt !== this._attemptId) return; // closed or superseded meanwhile
    if (this._streaming) return this._openStream(token);
    const url = new URL(this.url);
    if (!token) {
      url.searchParams.set("session_id", this.sessionId);
      if (this.deliver) url.searchParams.set("deliver", "1");
    }
    // The device id, for servers that cannot set the cookie (a socket accepted by the app).
    const known = this.connectionId ?? storedConnectionId();
    if (known) url.searchParams.set("connection_id", known);
    const ws = new WebSocket(url);
    let opened = false;
    const link = { send: (text) => ws.send(text), close: () => ws.close(1000), isOpen: () => ws.readyState === WebSocket.OPEN };
    this._link = link;
    this._ws = ws; // the socket itself (a test drops it to act out a network failure)
    ws.onopen = () => {
      opened = true;
      this._failures = 0;
      if (token) {
        ws.send(JSON.stringify({ type: "authenticate", token, session_id: this.sessionId, deliver: this.deliver }));
      }
    };
    ws.onmessage = (event) => { if (this._link === link) this._frame(JSON.parse(event.data)); };
    ws.onclose = (event) => {
      // A socket that never opened, twice in a row: something on the way refuses WebSockets.
      if (!opened && this.fallback && ++this._failures >= 2) this._streaming = true;
      this._closed(link, event.code, event.reason);
    };
  }

  /** The connection ``link`` ended with ``code``: fail what waits, reconnect unless final. */
  _closed(link, code, reason) {
    if (this._link !== link) return;
    this.connected = false;
    for (const { reject, timer } of this._waiting.values()) {
      clearTimeout(timer);
      reject(new Error("connection closed"));
    }
    this._waiting.clear();
    this._emit("close", { code, reason });
    if (code === 4401) {
      // Without getToken the same token would be refused again; with it, a fresh one is
      // tried once more before giving up (as the Python client does).
      this._refusals = (this._refusals ?? 0) + 1;
      if (!this.getToken || this._refusals >= 2) {
        this._emit("unauthorized", { code });
        return;
      }
    }
    if (code === 4429) {
      // The user holds the most sockets allowed: another device must close first.
      this._emit("error", { code: "too_many_connections", message: reason });
      return;
    }
    if (!this._stopped && code !== 1000) this._retry();
  }

  /**
   * The same session over Server-Sent Events (GET /sse; the client's frames by POST
   * /sse/frames), for networks that do not let WebSockets through. The token goes in an
   * Authorization header (fetch, not EventSource, which cannot send one). WebSocket is tried
   * again every `webSocketRetry` ms, and taken back when it opens.
   */
  _openStream(token) {
    const base = new URL(this.url);
    base.protocol = base.protocol === "wss:" ? "https:" : "http:";
    const url = new URL(base.pathname.replace(/ws$/, "sse"), base);
    url.searchParams.set("session_id", this.sessionId);
    if (this.deliver) url.searchParams.set("deliver", "1");
    const known = this.connectionId ?? storedConnectionId();
    if (known) url.searchParams.set("connection_id", known);
    const frames = new URL(`${url.pathname}/frames`, base);
    const auth = token ? { Authorization: `Bearer ${token}` } : {};
    const stopped = new AbortController();
    const waiting = [];
    const link = {
      open: false,
      close: () => stopped.abort(),
      isOpen: () => link.open,
      send: (text) => {
        waiting.push(JSON.parse(text));
        if (waiting.length === 1) setTimeout(post, 0); // frames sent together go in one POST
      },
    };
    const post = () => {
      const body = JSON.stringify({ connection_id: this.connectionId, frames: waiting.splice(0, 100) });
      if (waiting.length) setTimeout(post, 0);
      fetch(frames, { method: "POST", headers: { "content-type": "application/json", ...auth }, body, credentials: "include" })
        .then((answer) => { if (!answer.ok) this._emit("error", { code: "frames_refused", message: `HTTP ${answer.status}` }); })
        .catch((error) => this._emit("error", { code: "frames_failed", message: String(error) }));
    };
    this._link = link;
    (async () => {
      const answer = await fetch(url, { headers: auth, signal: stopped.signal, credentials: "include", cache: "no-store" });
      if (answer.status === 401) return this._closed(link, 4401, "unauthorized");
      if (!answer.ok || !answer.body) return this._closed(link, 1006, `HTTP ${answer.status}`);
      link.open = true;
      this._probe();
      const reader = answer.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      let ended = { code: 1006, reason: "stream ended" };
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        for (let at = buffer.indexOf("\n\n"); at >= 0; at = buffer.indexOf("\n\n")) {
          const lines = buffer.slice(0, at).split("\n");
          buffer = buffer.slice(at + 2);
          const data = lines.filter((line) => line.startsWith("data: ")).map((line) => line.slice(6)).join("\n");
          if (!data) continue; // a comment: the stream's keep-alive
          if (lines.includes("event: close")) ended = JSON.parse(data);
          else if (this._link === link) this._frame(JSON.parse(data));
        }
      }
      this._closed(link, ended.code, ended.reason);
    })().catch((error) => this._closed(link, 1006, String(error)));
  }

  /** On an event stream: try a WebSocket now and then, and go back to it once one opens. */
  _probe() {
    clearTimeout(this._probeTimer);
    this._probeTimer = setTimeout(() => {
      if (this._stopped || !this._streaming) return;
      const probe = new WebSocket(this.url);
      probe.onopen = () => {
        probe.close(1000);
        if (this._stopped || !this._streaming) return;
        this._streaming = false;
        this._failures = 0;
        this._open(); // the session and the device carry over: nothing is lost
      };
      probe.onerror = () => this._probe();
    }, this.webSocketRetry);
  }

  _retry() {
    if (this._stopped) return;
    const ceiling = Math.min(this.backoffMax, this.backoffBase * 2 ** this._attempt);
    const delay = ceiling * (0.5 + Math.random() / 2);
    this._attempt += 1;
    this._timer = setTimeout(() => this._open(), delay);
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _frame(frame) {
    const waiting = frame.id != null ? this._waiting.get(frame.id) : undefined;
    switch (frame.type) {
      case "welcome":
        this.connected = true;
        this._attempt = 0;
        this._refusals = 0;
        this.connectionId = frame.connection_id;
        try { localStorage.setItem(CONNECTION_KEY, frame.connection_id); } catch { /* disabled */ }
        this.userId = frame.user_id;
        this.node = frame.node;
        this.sessionId = frame.session_id;
        this._welcomes += 1;
        this._initial = true;
        this._emit("welcome", frame);
        this._emit("open", frame);
        this._recoverTopics();
        return;
      case "newNotificationCountChanged": {
        const initial = this._initial; // the state as the connection opened
        this._initial = false;
        if (frame.version > this.version) {
          this.version = frame.version;
          this.count = frame.count;
          this.unread = frame.unread ?? 0; // servers before protocol 1.1 leave these out
          this.categories = frame.categories ?? {};
          const { count, version, unread, categories } = this;
          this._emit("count", { count, version, unread, categories, initial });
        }
        return;
      }
      case "notification": {
        const id = frame.notification.notification_id;
        this._queueAck(id); // repeats are acknowledged too: only acks empty the queue
        if (this._seen.has(id)) return;
        this._seen.add(id);
        if (this._seen.size > DEDUPE_WINDOW) this._seen.delete(this._seen.values().next().value);
        this._emit("notification", frame);
        return;
      }
      case "topicMessage":
        this.lastSeq.set(frame.topic, Math.max(this.lastSeq.get(frame.topic) ?? 0, frame.seq));
        this._emit("topicMessage", frame);
        return;
      case "queueGap":
        this._emit("queueGap", frame);
        return;
      default:
        if (waiting) {
          this._waiting.delete(frame.id);
          clearTimeout(waiting.timer);
          if (frame.type === "error") {
            const error = new Error(frame.message);
            Object.assign(error, frame);
            waiting.reject(error);
          } else {
            waiting.resolve(frame);
          }
        } else if (frame.type === "error") {
          this._emit("error", frame);
        }
    }
  }

  /** Send a frame and resolve with the server's direct answer (reject on an error frame). */
  request(frame) {
    if (!this._link || !this._link.isOpen() || !this.connected) {
      return Promise.reject(new Error("not connected"));
    }
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._waiting.delete(id);
        reject(new Error("request timed out"));
      }, this.requestTimeout);
      this._waiting.set(id, { resolve, reject, timer });
      this._link.send(JSON.stringify({ ...frame, id }));
    });
  }

  /** The oldest unseen notifications (they stay unseen until markSeen). */
  async getUnseen(limit = 100) {
    return (await this.request({ type: "getUnseen", limit })).notifications;
  }

  /** Mark notifications seen; every device of the user gets the new count. */
  markSeen(ids) {
    return this._change("markSeen", "seen", ids);
  }

  /** Everything unseen now, seen (the count falls to 0 on every device). */
  markAllSeen() {
    return this._change("markAllSeen", "seen", null);
  }

  /** Read notifications (reading is seeing). Resolves with how many changed. */
  markRead(ids) {
    return this._change("markRead", "read", ids);
  }

  /** Everything of the user, read. */
  markAllRead() {
    return this._change("markAllRead", "read", null);
  }

  /** Take notifications out of the inbox into the archive (archiving reads them). */
  archive(ids) {
    return this._change("archive", "archive", ids);
  }

  /** Bring archived notifications back to the inbox (they stay read). */
  unarchive(ids) {
    return this._change("unarchive", "unarchive", ids);
  }

  async _change(type, change, ids) {
    if (ids && !ids.length) return 0;
    const { marked } = await this.request(ids ? { type, notification_ids: ids } : { type });
    // What the feeds hold of them, for a feed they move into (archive, unarchive).
    const wanted = new Set(ids ?? []);
    const known = new Map();
    for (const feed of this._feeds) {
      for (const n of feed.items) if (wanted.has(n.notification_id)) known.set(n.notification_id, n);
    }
    this._emit("inboxChange", { change, ids, marked, notifications: [...known.values()] });
    return marked;
  }

  /**
   * A page of the history, newest first: resolves with {notifications, next_cursor}; ask again
   * with `cursor: next_cursor` until it is null. state: "all" (not archived), "unseen",
   * "unread" or "archived"; limit 1 to 100.
   */
  async getNotifications({ state, category, cursor, limit } = {}) {
    const frame = { type: "getNotifications" };
    for (const [key, value] of Object.entries({ state, category, cursor, limit })) {
      if (value != null) frame[key] = value;
    }
    const { notifications, next_cursor } = await this.request(frame);
    return { notifications, next_cursor };
  }

  /** A live, paged view of the inbox: see Feed. */
  feed(options) {
    return new Feed(this, options);
  }

  /** Subscribe this tab's session to topics (they come back by themselves on reconnection). */
  async subscribe(...topics) {
    const answer = await this.request({ type: "subscribe", topics });
    for (const topic of answer.topics) {
      this.topics.add(topic);
      if (!this.lastSeq.has(topic)) {
        // Where the topic stands now: a replay after a reconnection starts from here.
        const end = await this.request({ type: "readNotifications", topic, since: Number.MAX_SAFE_INTEGER });
        this.lastSeq.set(topic, Math.max(this.lastSeq.get(topic) ?? 0, end.last_seq));
      }
    }
    return answer.topics;
  }

  async unsubscribe(...topics) {
    const answer = await this.request({ type: "unsubscribe", topics });
    for (const topic of answer.topics) this.topics.delete(topic);
    return answer.topics;
  }

  /** Replay what was missed on a topic; resolves with {recovered, last_seq}. */
  async readNotifications(topic, since = this.lastSeq.get(topic) ?? 0) {
    return this.request({ type: "readNotifications", topic, since });
  }

  _recoverTopics() {
    for (const topic of this.topics) {
      this.readNotifications(topic).then(
        (answer) => { if (!answer.recovered) this._emit("error", { code: "replay_incomplete", topic }); },
        (error) => this._emit("error", { code: "replay_failed", topic, message: error.message }),
      );
    }
  }

  _queueAck(id) {
    this._toAck.push(id);
    if (this._ackTimer == null) this._ackTimer = setTimeout(() => this._flushAcks(), 20);
  }

  _flushAcks() {
    this._ackTimer = null;
    while (this._toAck.length) {
      const ids = this._toAck.splice(0, 1000);
      // Unacknowledged ones come again on the next connection: nothing is lost on failure.
      this.request({ type: "ack", notification_ids: ids }).catch(() => {});
    }
  }

  /** Log this device out: its queue is deleted and the connection closed. */
  async forget() {
    await this.request({ type: "forgetDevice" });
    this._stopped = true;
  }
}

// Which notifications each state of a feed holds (as the server's getNotifications does).
const IN_STATE = {
  all: (n) => !n.archived_date,
  unseen: (n) => !n.seen_date && !n.archived_date,
  unread: (n) => !n.read_date && !n.archived_date,
  archived: (n) => Boolean(n.archived_date),
};

// What a change does to a notification, applied locally once the server has answered.
const APPLY = {
  seen: (n, now) => ({ ...n, seen_date: n.seen_date ?? now }),
  read: (n, now) => ({ ...n, seen_date: n.seen_date ?? now, read_date: n.read_date ?? now }),
  archive: (n, now) => ({ ...APPLY.read(n, now), archived_date: n.archived_date ?? now }),
  unarchive: (n) => ({ ...n, archived_date: null }),
};

// The feed a change may bring notifications into.
const ENTERS = { archive: "archived", unarchive: "all" };

/**
 * The inbox as a list kept up to date: `items`, newest first and without duplicates, grows a
 * page at a time with loadMore() (while `hasMore`). New notifications come in at the top: in
 * deliver mode from `notification` frames, otherwise by reading the first page again when the
 * count's version rises. This client's markRead, archive, … apply to the items once the server
 * has answered. Fires `change` {items, reason} and `error` {message} (a background refresh
 * failed). Items beyond the first page are not checked again against other devices' changes.
 */
export class Feed extends EventTarget {
  constructor(tidings, { state = "all", category = null, pageSize = 20 } = {}) {
    super();
    if (!IN_STATE[state]) throw new Error(`unknown state: ${state}`);
    this.tidings = tidings;
    this.state = state;
    this.category = category;
    this.pageSize = pageSize;
    this.items = [];
    this.hasMore = true;
    this.loaded = false; // the first page is in
    this._cursor = null;
    this._last = Promise.resolve(); // pages and refreshes run one after the other
    this._pendingRefresh = null;
    this._lastCount = null;
    this._askedOn = null; // the connection the first page was last asked on
    this._closed = false;
    this._listeners = {
      count: ({ detail: { count, initial } }) => {
        const rose = this._lastCount != null && count > this._lastCount;
        this._lastCount = count;
        // The counts of a new connection are news only to a first page asked before it; in
        // deliver mode a higher count is new notifications, which come as frames.
        const news = initial ? this._askedOn !== tidings._welcomes : !(tidings.deliver && rose);
        if (news) this._background();
      },
      notification: (e) => this._serial(() => this._insert(e.detail.notification)),
      inboxChange: (e) => this._apply(e.detail),
    };
    for (const [type, listener] of Object.entries(this._listeners)) tidings.addEventListener(type, listener);
    tidings._feeds.add(this);
  }

  /** Stop following the client. */
  close() {
    for (const [type, listener] of Object.entries(this._listeners)) this.tidings.removeEventListener(type, listener);
    this.tidings._feeds.delete(this);
    this._closed = true;
  }

  /** Load the next page (waits for the connection); resolves with the items it added. */
  loadMore() {
    return this._serial(async () => {
      if (!this.hasMore) return [];
      const page = await this._page(this._cursor);
      const known = new Set(this.items.map((n) => n.notification_id));
      const added = page.notifications.filter((n) => !known.has(n.notification_id));
      this._cursor = page.next_cursor;
      this.hasMore = page.next_cursor != null;
      this.loaded = true;
      this._set([...this.items, ...added], "page");
      return added;
    });
  }

  /** Read the first page again and merge it: new ones on top, changed ones updated (nothing
   * before the first loadMore). */
  refresh() {
    this._pendingRefresh ??= this._serial(async () => {
      this._pendingRefresh = null; // a change from now on needs another look
      if (!this.loaded) return; // the first loadMore will see it
      const page = await this._page(null);
      const fresh = page.notifications;
      const ids = new Set(fresh.map((n) => n.notification_id));
      // Below the deepest item held that the page has too, what was loaded stays: nothing can
      // be missing in between. When the page holds none of them (or is all there is), paging
      // starts again from it.
      const deepest = this.items.findLastIndex((n) => ids.has(n.notification_id));
      const joins = page.next_cursor != null && deepest >= 0;
      const below = joins ? this.items.slice(deepest + 1).filter((n) => !ids.has(n.notification_id)) : [];
      if (!joins) {
        this._cursor = page.next_cursor;
        this.hasMore = page.next_cursor != null;
      }
      this._set([...fresh, ...below], "refresh");
    });
    return this._pendingRefresh;
  }

  _background() {
    this.refresh().catch((error) => this._emit("error", { message: error.message }));
  }

  async _page(cursor) {
    if (!this.tidings.connected) {
      await new Promise((resolve) => this.tidings.addEventListener("open", resolve, { once: true }));
    }
    if (cursor == null) this._askedOn = this.tidings._welcomes;
    const { state, category, pageSize: limit } = this;
    return this.tidings.getNotifications({ state, category, cursor, limit });
  }

  _serial(task) {
    const run = this._last.then(task);
    this._last = run.catch(() => {});
    return run;
  }

  _matches(n) {
    return IN_STATE[this.state](n) && (this.category == null || n.category === this.category);
  }

  _insert(note) {
    if (this.loaded) this._set(this._place(this.items, note), "live"); // else the first page has it
  }

  /** `items` with `note` in its place by date, if it belongs to the feed and is not there. */
  _place(items, note) {
    if (!this._matches(note) || items.some((n) => n.notification_id === note.notification_id)) return items;
    // Pages keep the server's order (the log's); one placed here goes above those not created
    // after it (a batch's notifications share one creation_date).
    let at = items.findIndex((n) => n.creation_date <= note.creation_date);
    if (at < 0) {
      if (this.hasMore) return items; // older than what is loaded: a later page brings it
      at = items.length;
    }
    return items.toSpliced(at, 0, note);
  }

  _apply({ change, ids, notifications = [] }) {
    const now = new Date().toISOString();
    const hit = ids && new Set(ids);
    let items = this.items.map((n) => (!hit || hit.has(n.notification_id) ? APPLY[change](n, now) : n));
    items = items.filter((n) => this._matches(n));
    if (ENTERS[change] === this.state) {
      // They move into this feed: those another feed of the client held take their place;
      // for any other, the first page is read again.
      for (const note of notifications) items = this._place(items, APPLY[change](note, now));
      if (notifications.length < ids.length) this._background();
    }
    this._set(items, change);
  }

  _set(items, reason) {
    if (this._closed) return;
    this.items = items;
    this.dispatchEvent(new CustomEvent("change", { detail: { items, reason } }));
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

export default Tidings;
