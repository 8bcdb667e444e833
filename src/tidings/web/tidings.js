// tidings.js — the browser client of tidings. A dependency-free ES module.
//
//   import { Tidings } from "/tidings.js";
//   const t = new Tidings("/ws", { token });          // or no token: the cookie authenticates
//   t.addEventListener("count", (e) => badge.textContent = e.detail.count);
//   t.connect();
//   const notes = await t.getUnseen();  await t.markSeen(notes.map((n) => n.notification_id));
//
// Events (CustomEvent, data in `detail`): open, welcome, count {count, version},
// notification {notification} (deliver mode, once per id), topicMessage {topic, seq, data,
// creation_date}, queueGap {reason, skipped}, error {code, message}, close {code, reason},
// unauthorized {code}.

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
    this.version = -1;
    this.connectionId = null;
    this.userId = null;
    this.node = null;
    this.connected = false;
    this.topics = new Set();
    this.lastSeq = new Map(); // topic -> highest seq seen
    this._ws = null;
    this._nextId = 1;
    this._waiting = new Map();
    this._seen = new Set();
    this._toAck = [];
    this._ackTimer = null;
    this._attempt = 0;
    this._timer = null;
    this._stopped = true;
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
    if (this._ws) this._ws.close(1000);
  }

  async _open() {
    clearTimeout(this._timer);
    const attempt = (this._attemptId = (this._attemptId ?? 0) + 1);
    if (this._ws && this._ws.readyState <= WebSocket.OPEN) this._ws.close(1000);
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
    const url = new URL(this.url);
    if (!token) {
      url.searchParams.set("session_id", this.sessionId);
      if (this.deliver) url.searchParams.set("deliver", "1");
    }
    // The device id, for servers that cannot set the cookie (a socket accepted by the app).
    const known = this.connectionId ?? storedConnectionId();
    if (known) url.searchParams.set("connection_id", known);
    const ws = new WebSocket(url);
    this._ws = ws;
    ws.onopen = () => {
      if (token) {
        ws.send(JSON.stringify({ type: "authenticate", token, session_id: this.sessionId, deliver: this.deliver }));
      }
    };
    ws.onmessage = (event) => { if (this._ws === ws) this._frame(JSON.parse(event.data)); };
    ws.onclose = (event) => {
      if (this._ws !== ws) return;
      this.connected = false;
      for (const { reject, timer } of this._waiting.values()) {
        clearTimeout(timer);
        reject(new Error("connection closed"));
      }
      this._waiting.clear();
      this._emit("close", { code: event.code, reason: event.reason });
      if (event.code === 4401 && !this.getToken) {
        this._emit("unauthorized", { code: event.code });
        return; // the same token would be refused again
      }
      if (!this._stopped && event.code !== 1000) this._retry();
    };
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
        this.connectionId = frame.connection_id;
        try { localStorage.setItem(CONNECTION_KEY, frame.connection_id); } catch { /* disabled */ }
        this.userId = frame.user_id;
        this.node = frame.node;
        this.sessionId = frame.session_id;
        this._emit("welcome", frame);
        this._emit("open", frame);
        this._recoverTopics();
        return;
      case "newNotificationCountChanged":
        if (frame.version > this.version) {
          this.version = frame.version;
          this.count = frame.count;
          this._emit("count", { count: frame.count, version: frame.version });
        }
        return;
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
    if (!this._ws || this._ws.readyState !== WebSocket.OPEN || !this.connected) {
      return Promise.reject(new Error("not connected"));
    }
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._waiting.delete(id);
        reject(new Error("request timed out"));
      }, this.requestTimeout);
      this._waiting.set(id, { resolve, reject, timer });
      this._ws.send(JSON.stringify({ ...frame, id }));
    });
  }

  /** The oldest unseen notifications (they stay unseen until markSeen). */
  async getUnseen(limit = 100) {
    return (await this.request({ type: "getUnseen", limit })).notifications;
  }

  /** Mark notifications seen; every device of the user gets the new count. */
  async markSeen(ids) {
    if (!ids.length) return 0;
    return (await this.request({ type: "markSeen", notification_ids: ids })).marked;
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

export default Tidings;
