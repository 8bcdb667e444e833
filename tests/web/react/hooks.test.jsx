// The React hooks of tidings-react.js against a live node (see live.js), in jsdom, whose
// WebSocket is a real one.
import { act, render, renderHook, screen, waitFor } from "@testing-library/react";

import {
  Tidings,
  TidingsProvider,
  useFeed,
  useTidings,
  useTopic,
  useUnseenCount,
} from "../../../src/tidings/web/tidings-react.js";
import { post, USERS, WS_URL } from "./live.js";

const clients = [];
afterEach(() => {
  for (const client of clients.splice(0)) client.close();
});

/** A connected client of `user`, as another device (its own session and connection ids). */
function device(user) {
  localStorage.clear(); // no connection id of an earlier client: this is a device of its own
  const tidings = new Tidings(WS_URL, {
    token: USERS[user].token,
    sessionId: `react-${user}-${clients.length}-${Math.random()}`,
  });
  clients.push(tidings.connect());
  return tidings;
}

const notify = (user, text, extra = {}) => post("/notify", { user_id: USERS[user].user_id, data: { text }, ...extra });
const texts = (items) => items.map((n) => n.data.text);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

test("useUnseenCount follows a notification sent over HTTP and another device's mark-all", async () => {
  const tidings = device("count");
  const { result } = renderHook(() => useUnseenCount(tidings));
  expect(result.current).toEqual({ count: null, unread: null, categories: {}, version: -1 });

  await waitFor(() => expect(result.current.count).toBe(0));
  const first = result.current.version;
  await notify("count", "order shipped", { category: "orders" });
  await notify("count", "hello");
  await waitFor(() => expect(result.current).toMatchObject({ count: 2, unread: 2, categories: { orders: 1 } }));
  expect(result.current.version).toBeGreaterThan(first);

  const phone = device("count");
  await waitFor(() => expect(phone.connected).toBe(true));
  await phone.markAllRead();
  await waitFor(() => expect(result.current).toMatchObject({ count: 0, unread: 0, categories: {} }));
});

test("useFeed pages, takes a new notification live, applies markRead and closes on unmount", async () => {
  for (const text of ["one", "two", "three"]) await notify("feed", text);
  const tidings = device("feed");
  const { result, unmount } = renderHook(() => useFeed(tidings, { state: "unread", pageSize: 2 }));
  expect(result.current.loading).toBe(true);

  await waitFor(() => expect(texts(result.current.items)).toEqual(["three", "two"]));
  expect(result.current).toMatchObject({ hasMore: true, loading: false, error: null });

  let added;
  await act(async () => {
    added = await result.current.loadMore();
  });
  expect(texts(added)).toEqual(["one"]);
  expect(texts(result.current.items)).toEqual(["three", "two", "one"]);
  expect(result.current.hasMore).toBe(false);

  await notify("feed", "four");
  await waitFor(() => expect(texts(result.current.items)).toEqual(["four", "three", "two", "one"]));

  const two = result.current.items[2].notification_id;
  await act(() => tidings.markRead([two]));
  await waitFor(() => expect(texts(result.current.items)).toEqual(["four", "three", "one"]));

  expect(tidings._feeds.size).toBe(1);
  unmount();
  expect(tidings._feeds.size).toBe(0); // the feed was closed
});

test("useFeed makes a new feed when its options change", async () => {
  await notify("feed", "an order", { category: "orders" });
  const tidings = device("feed");
  const { result, rerender } = renderHook((options) => useFeed(tidings, options), {
    initialProps: { category: "orders" },
  });
  await waitFor(() => expect(texts(result.current.items)).toEqual(["an order"]));
  rerender({ state: "all", pageSize: 100 });
  await waitFor(() => expect(result.current.items.length).toBe(5));
  expect(result.current.hasMore).toBe(false);
  expect(tidings._feeds.size).toBe(1); // the first one was closed
});

test("useTopic receives what is published and unsubscribes on unmount", async () => {
  const topic = `react-topic-${Math.random().toString(36).slice(2)}`;
  const tidings = device("topic");
  const first = renderHook(() => useTopic(tidings, topic, { limit: 2 }));
  const second = renderHook(() => useTopic(tidings, topic));
  await waitFor(() => expect(first.result.current.subscribed).toBe(true));
  expect(tidings.topics.has(topic)).toBe(true);

  for (const name of ["Rex", "Fido", "Tom"]) await post("/publish", { topic, data: { name } });
  await waitFor(() => expect(second.result.current.messages.length).toBe(3));
  expect(second.result.current.messages.map((m) => m.data.name)).toEqual(["Rex", "Fido", "Tom"]);
  expect(first.result.current.messages.map((m) => m.data.name)).toEqual(["Fido", "Tom"]); // the last 2
  expect(first.result.current.messages[1]).toMatchObject({ topic, seq: expect.any(Number) });

  first.unmount(); // the other one still holds the topic
  await sleep(200);
  expect(tidings.topics.has(topic)).toBe(true);

  second.unmount();
  await waitFor(() => expect(tidings.topics.has(topic)).toBe(false));
  const arrived = [];
  tidings.addEventListener("topicMessage", (e) => arrived.push(e.detail));
  await post("/publish", { topic, data: { name: "Late" } });
  await sleep(500);
  expect(arrived).toEqual([]); // the server sends it no more
});

test("useTopic reports a topic the server refuses", async () => {
  const tidings = device("topic");
  const { result } = renderHook(() => useTopic(tidings, "user:somebody-else"));
  await waitFor(() => expect(result.current.error?.code).toBe("forbidden_topic"));
  expect(result.current.subscribed).toBe(false);
});

test("the hooks hold in StrictMode, whose effects run twice", async () => {
  const topic = `react-strict-${Math.random().toString(36).slice(2)}`;
  const tidings = device("topic");
  const strict = { reactStrictMode: true };
  const feed = renderHook(() => useFeed(tidings, { pageSize: 5 }), strict);
  const messages = renderHook(() => useTopic(tidings, topic), strict);
  await waitFor(() => expect(messages.result.current.subscribed).toBe(true));
  await waitFor(() => expect(feed.result.current.loading).toBe(false));
  expect(tidings._feeds.size).toBe(1);
  await post("/publish", { topic, data: { name: "Rex" } });
  await waitFor(() => expect(messages.result.current.messages.map((m) => m.data.name)).toEqual(["Rex"]));
  messages.unmount();
  feed.unmount();
  await waitFor(() => expect(tidings.topics.has(topic)).toBe(false));
  expect(tidings._feeds.size).toBe(0);
});

function Bell() {
  const { count } = useUnseenCount(useTidings());
  return <span>{count == null ? "connecting" : `${count} unseen`}</span>;
}

test("TidingsProvider gives the client to useTidings", async () => {
  const tidings = device("provider");
  render(
    <TidingsProvider tidings={tidings}>
      <Bell />
    </TidingsProvider>,
  );
  await screen.findByText("0 unseen");
  await notify("provider", "ring");
  await screen.findByText("1 unseen");
});

test("useTidings without a provider says so", () => {
  const quiet = vi.spyOn(console, "error").mockImplementation(() => {});
  expect(() => renderHook(() => useTidings())).toThrow(/TidingsProvider/);
  quiet.mockRestore();
});
