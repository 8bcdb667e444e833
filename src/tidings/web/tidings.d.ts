// Types of tidings.js, the browser client of tidings (wire contract 1.1, docs/protocol.md).
// Served by every node at /tidings.d.ts next to /tidings.js; checked with `tsc --noEmit`
// against a sample that uses every export (tests/web/sample.ts).

/** One notification, as every frame and answer carries it. */
export interface Notification {
  notification_id: string;
  user_id: string;
  /** whatever JSON the service sent */
  data: unknown;
  /** ISO 8601, UTC */
  creation_date: string;
  seen_date: string | null;
  category: string | null;
  read_date: string | null;
  archived_date: string | null;
}

/** A state of the history: "all" is everything not archived. */
export type HistoryState = "all" | "unseen" | "unread" | "archived";

/** A page of the history, newest first; ask again with `cursor: next_cursor` until null. */
export interface NotificationPage {
  notifications: Notification[];
  next_cursor: string | null;
}

export interface Counts {
  /** unseen notifications */
  count: number;
  /** rises with every change of the user's inbox; older ones are never emitted */
  version: number;
  /** notifications not read (unread >= count) */
  unread: number;
  /** unseen notifications per category that has any */
  categories: Record<string, number>;
  /** true for the counts that come with a (re)connection */
  initial: boolean;
}

export interface Welcome {
  type: "welcome";
  connection_id: string;
  session_id: string;
  user_id: string;
  node: string;
}

export interface TopicMessage {
  type: "topicMessage";
  topic: string;
  seq: number;
  data: unknown;
  creation_date: string;
}

export interface QueueGap {
  type: "queueGap";
  reason: "max_length" | "max_age" | "retention";
  skipped: number;
}

export interface TidingsError {
  code: string;
  message?: string;
  topic?: string;
}

export type InboxChangeKind = "seen" | "read" | "archive" | "unarchive";

export interface InboxChange {
  change: InboxChangeKind;
  /** null for the mark-alls */
  ids: string[] | null;
  marked: number;
  /** what this client's feeds held of them */
  notifications: Notification[];
}

export interface TidingsEventMap {
  open: CustomEvent<Welcome>;
  welcome: CustomEvent<Welcome>;
  count: CustomEvent<Counts>;
  notification: CustomEvent<{ type: "notification"; notification: Notification }>;
  inboxChange: CustomEvent<InboxChange>;
  topicMessage: CustomEvent<TopicMessage>;
  queueGap: CustomEvent<QueueGap>;
  error: CustomEvent<TidingsError>;
  close: CustomEvent<{ code: number; reason: string }>;
  unauthorized: CustomEvent<{ code: number }>;
}

export interface TidingsOptions {
  /** a device JWT, sent in the `authenticate` frame (never in the URL) */
  token?: string;
  /** called for a fresh token before each connection */
  getToken?: () => Promise<string>;
  /** default: one per browser tab, kept across reloads */
  sessionId?: string;
  /** deliver mode: notifications pushed, acknowledged and de-duplicated */
  deliver?: boolean;
  /** ms, the first reconnection delay (default 500) */
  backoffBase?: number;
  /** ms, the longest reconnection delay (default 30000) */
  backoffMax?: number;
  /** ms (default 10000) */
  requestTimeout?: number;
  /** fall back to Server-Sent Events when WebSockets do not get through (default true) */
  fallback?: boolean;
  /** ms between tries of a WebSocket while on Server-Sent Events (default 60000) */
  webSocketRetry?: number;
}

export interface ReplayAnswer {
  recovered: boolean;
  last_seq: number;
}

export class Tidings extends EventTarget {
  constructor(url?: string, options?: TidingsOptions);
  readonly url: URL;
  readonly deliver: boolean;
  /** the latest counts (null before the first) */
  count: number | null;
  unread: number | null;
  categories: Record<string, number>;
  version: number;
  connectionId: string | null;
  userId: string | null;
  node: string | null;
  connected: boolean;
  topics: Set<string>;
  fallback: boolean;
  webSocketRetry: number;
  /** how the client is connected, or tries to be */
  readonly transport: "websocket" | "sse";

  connect(): this;
  close(): void;
  /** any frame of the protocol; resolves with its answer */
  request(frame: { type: string; [key: string]: unknown }): Promise<Record<string, any>>;
  getUnseen(limit?: number): Promise<Notification[]>;
  markSeen(ids: string[]): Promise<number>;
  markAllSeen(): Promise<number>;
  markRead(ids: string[]): Promise<number>;
  markAllRead(): Promise<number>;
  archive(ids: string[]): Promise<number>;
  unarchive(ids: string[]): Promise<number>;
  getNotifications(options?: {
    state?: HistoryState;
    category?: string;
    cursor?: string;
    limit?: number;
  }): Promise<NotificationPage>;
  feed(options?: FeedOptions): Feed;
  subscribe(...topics: string[]): Promise<string[]>;
  unsubscribe(...topics: string[]): Promise<string[]>;
  readNotifications(topic: string, since?: number): Promise<ReplayAnswer>;
  /** log this device out: its queue is deleted and the connection closed */
  forget(): Promise<void>;

  addEventListener<K extends keyof TidingsEventMap>(
    type: K,
    listener: (event: TidingsEventMap[K]) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof TidingsEventMap>(
    type: K,
    listener: (event: TidingsEventMap[K]) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject,
    options?: boolean | EventListenerOptions,
  ): void;
}

export interface FeedOptions {
  state?: HistoryState;
  category?: string | null;
  pageSize?: number;
}

export interface FeedEventMap {
  change: CustomEvent<{ items: Notification[]; reason: string }>;
  error: CustomEvent<{ message: string }>;
}

/** The inbox as a list kept up to date, newest first, a page at a time. */
export class Feed extends EventTarget {
  constructor(tidings: Tidings, options?: FeedOptions);
  readonly tidings: Tidings;
  readonly state: HistoryState;
  readonly category: string | null;
  readonly pageSize: number;
  items: Notification[];
  hasMore: boolean;
  loaded: boolean;
  /** the next page; resolves with the items it added */
  loadMore(): Promise<Notification[]>;
  /** read the first page again and merge it */
  refresh(): Promise<void>;
  close(): void;

  addEventListener<K extends keyof FeedEventMap>(
    type: K,
    listener: (event: FeedEventMap[K]) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof FeedEventMap>(
    type: K,
    listener: (event: FeedEventMap[K]) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject,
    options?: boolean | EventListenerOptions,
  ): void;
}

export default Tidings;
