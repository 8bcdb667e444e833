// Types of tidings-react.js, the React hooks over tidings.js, which it re-exports (React is a peer
// dependency: these need @types/react). Checked with `tsc --noEmit` against tests/web/react/sample.tsx.

import type { ReactElement, ReactNode } from "react";
import type { HistoryState, Notification, Tidings, TidingsError, TopicMessage } from "./tidings.js";

/** tidings.js, re-exported: the client and its types. */
export * from "./tidings.js";

/** Gives `tidings` to the components below, for `useTidings()`. */
export function TidingsProvider(props: { tidings: Tidings; children?: ReactNode }): ReactElement;

/** The client of the nearest TidingsProvider (throws without one). */
export function useTidings(): Tidings;

export interface UnseenCount {
  /** unseen notifications; null before the first counts */
  count: number | null;
  /** notifications not read; null before the first counts */
  unread: number | null;
  /** unseen notifications per category that has any */
  categories: Record<string, number>;
  /** -1 before the first counts */
  version: number;
}

/** The user's counts, following the client's `count` events. */
export function useUnseenCount(tidings: Tidings): UnseenCount;

export interface UseFeedOptions {
  /** default "all" */
  state?: HistoryState;
  /** default: every category */
  category?: string | null;
  /** 1 to 100, default 20 */
  pageSize?: number;
}

export interface FeedView {
  /** newest first; a new array on each change */
  items: Notification[];
  hasMore: boolean;
  /** the next page; resolves with the items it added ([] when it failed: see `error`) */
  loadMore(): Promise<Notification[]>;
  /** a page is on its way */
  loading: boolean;
  /** the latest failure (a page's or a background refresh's), cleared by the next change */
  error: Error | null;
}

/** A live feed of the inbox, made on mount (and when an option changes), closed on unmount. */
export function useFeed(tidings: Tidings, options?: UseFeedOptions): FeedView;

export interface UseTopicOptions {
  /** how many of the last messages to keep (default 50) */
  limit?: number;
}

export interface TopicView {
  /** the last `limit` messages, oldest first */
  messages: TopicMessage[];
  /** the server has answered the subscription */
  subscribed: boolean;
  /** the subscription failed: the server's error frame (`code` "forbidden_topic") or a lost connection */
  error: (Error & Partial<TidingsError>) | null;
}

/** A topic's messages while mounted: subscribed on mount, unsubscribed when the last hook of
 * the client holding it unmounts. No topic (null, "") subscribes to nothing. */
export function useTopic(tidings: Tidings, topic: string | null | undefined, options?: UseTopicOptions): TopicView;
