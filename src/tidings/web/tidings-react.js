// tidings-react.js — React hooks over tidings.js, the browser client of tidings.
//
//   import { Tidings, TidingsProvider, useTidings, useUnseenCount, useFeed, useTopic } from "./tidings-react.js";
//
//   const tidings = new Tidings("/ws", { getToken }).connect();
//   <TidingsProvider tidings={tidings}><App /></TidingsProvider>
//
//   const { count } = useUnseenCount(useTidings());                      // follows `count` events
//   const { items, hasMore, loadMore, loading, error } = useFeed(tidings, { state: "unread" });
//   const { messages } = useTopic(tidings, "pet", { limit: 20 });         // subscribed while mounted
//
// React is a peer dependency, imported as the bare specifier "react": a bundler, or an import
// map in the page (`{"imports": {"react": "…/react.js"}}`), resolves it. Hooks take the client
// as their first argument; `useTidings()` reads the one a `TidingsProvider` gives. The module
// re-exports tidings.js (Tidings, Feed), which must sit next to it.

import { createContext, createElement, useCallback, useContext, useEffect, useMemo, useRef, useState, useSyncExternalStore } from "react";

export * from "./tidings.js";

const TidingsContext = createContext(null);

/** Gives `tidings` (a Tidings client) to the components below, for `useTidings()`. */
export function TidingsProvider({ tidings, children }) {
  return createElement(TidingsContext.Provider, { value: tidings }, children);
}

/** The client of the nearest TidingsProvider (throws without one). */
export function useTidings() {
  const tidings = useContext(TidingsContext);
  if (!tidings) throw new Error("useTidings() needs a <TidingsProvider tidings={…}> above it");
  return tidings;
}

function listen(target, type, listener) {
  target.addEventListener(type, listener);
  return () => target.removeEventListener(type, listener);
}

/** Resolves once the client is connected (at once if it is). */
function whenOpen(tidings) {
  if (tidings.connected) return Promise.resolve();
  return new Promise((resolve) => tidings.addEventListener("open", resolve, { once: true }));
}

/**
 * The user's counts, following the client's `count` events: `{count, unread, categories,
 * version}` (`count` and `unread` are null and `version` -1 before the first).
 */
export function useUnseenCount(tidings) {
  const subscribe = useCallback((onChange) => listen(tidings, "count", onChange), [tidings]);
  const version = useSyncExternalStore(subscribe, () => tidings.version, () => tidings.version);
  return useMemo(
    () => ({ count: tidings.count, unread: tidings.unread, categories: tidings.categories, version }),
    [tidings, version],
  );
}

/**
 * A live page of the inbox over `tidings.feed({state, category, pageSize})`, made on mount (and
 * when an option changes), its first page loaded, closed on unmount. Returns `{items, hasMore,
 * loadMore, loading, error}`: `loadMore()` fetches the next page and resolves with the items it
 * added (with [] when it failed: `error` then has the Error); `loading` is true while a page is
 * on its way; `error` is the latest failure (a background refresh's too), cleared by the next
 * change. `markRead`, `archive`, … of the same client apply to `items` by themselves.
 */
export function useFeed(tidings, { state = "all", category = null, pageSize = 20 } = {}) {
  const [view, setView] = useState({ items: [], hasMore: true, loading: true, error: null });
  const load = useRef(() => Promise.resolve([]));

  useEffect(() => {
    const feed = tidings.feed({ state, category, pageSize });
    let pending = 0;
    let closed = false;
    const update = (change) => {
      if (!closed) setView((view) => ({ ...view, items: feed.items, hasMore: feed.hasMore, ...change }));
    };
    load.current = async () => {
      pending += 1;
      update({ loading: true });
      try {
        return await feed.loadMore();
      } catch (error) {
        update({ error });
        return [];
      } finally {
        pending -= 1;
        update({ loading: pending > 0 });
      }
    };
    const stopChange = listen(feed, "change", () => update({ error: null }));
    const stopError = listen(feed, "error", (e) => update({ error: new Error(e.detail.message) }));
    setView({ items: [], hasMore: true, loading: true, error: null });
    load.current();
    return () => {
      closed = true;
      stopChange();
      stopError();
      feed.close();
    };
  }, [tidings, state, category, pageSize]);

  const loadMore = useCallback(() => load.current(), []);
  return { ...view, loadMore };
}

// How many mounted hooks hold each topic of a client: it is subscribed while one does.
const holders = new WeakMap(); // tidings -> Map(topic -> {count, ready})

function hold(tidings, topic) {
  let topics = holders.get(tidings);
  if (!topics) holders.set(tidings, (topics = new Map()));
  let entry = topics.get(topic);
  if (!entry) {
    entry = { count: 0, ready: whenOpen(tidings).then(() => tidings.subscribe(topic)) };
    topics.set(topic, entry);
  }
  entry.count += 1;
  const release = () => {
    entry.count -= 1;
    // After the subscription settled, and only if no hook took the topic up again meanwhile.
    entry.ready.catch(() => {}).then(() => {
      if (entry.count > 0 || topics.get(topic) !== entry) return;
      topics.delete(topic);
      whenOpen(tidings).then(() => tidings.unsubscribe(topic)).catch(() => {});
    });
  };
  return { ready: entry.ready, release };
}

/**
 * A topic's messages while the component is mounted: subscribes on mount (shared by the hooks
 * of one client that name the same topic), unsubscribes when the last of them unmounts. Returns
 * `{messages, subscribed, error}`: the last `limit` (50) `topicMessage`s, oldest first, once each
 * by `seq`; `subscribed` once the server has answered; `error` if it refused (`forbidden_topic`).
 */
export function useTopic(tidings, topic, { limit = 50 } = {}) {
  const [view, setView] = useState({ messages: [], subscribed: false, error: null });

  useEffect(() => {
    if (!topic) return undefined;
    let live = true;
    setView({ messages: [], subscribed: false, error: null });
    const stop = listen(tidings, "topicMessage", ({ detail: message }) => {
      if (message.topic !== topic) return;
      setView((view) =>
        view.messages.some((m) => m.seq === message.seq)
          ? view
          : { ...view, messages: [...view.messages, message].slice(-limit) },
      );
    });
    const { ready, release } = hold(tidings, topic);
    ready.then(
      () => live && setView((view) => ({ ...view, subscribed: true })),
      (error) => live && setView((view) => ({ ...view, error })),
    );
    return () => {
      live = false;
      stop();
      release();
    };
  }, [tidings, topic, limit]);

  return view;
}
