// A sample application using every export of tidings.js through its types: `tsc --noEmit`
// (tests/web/test_types.py) fails when the declarations and such use stop agreeing.
import Tidings, {
  Feed,
  type Counts,
  type FeedOptions,
  type HistoryState,
  type InboxChange,
  type Notification,
  type NotificationPage,
  type QueueGap,
  type TidingsOptions,
  Tidings as Named,
} from "../../src/tidings/web/tidings.js";

const options: TidingsOptions = {
  getToken: async () => (await fetch("/my-app/push-token")).text(),
  deliver: true,
  backoffBase: 250,
  backoffMax: 10_000,
  requestTimeout: 5_000,
  fallback: true,
  webSocketRetry: 30_000,
};
const tidings: Named = new Tidings("/ws", options).connect();
const badge = document.createElement("span");

tidings.addEventListener("count", (event) => {
  const counts: Counts = event.detail;
  badge.hidden = counts.count === 0;
  badge.textContent = `${counts.count} (${counts.unread} unread, v${counts.version})`;
  for (const [category, unseen] of Object.entries(counts.categories)) console.log(category, unseen);
  if (counts.initial) console.log("connected as", tidings.userId, "on", tidings.node);
});
tidings.addEventListener("welcome", (event) => console.log(event.detail.connection_id));
tidings.addEventListener("open", (event) => console.log(event.detail.session_id));
tidings.addEventListener("notification", (event) => show(event.detail.notification));
tidings.addEventListener("topicMessage", (event) => console.log(event.detail.topic, event.detail.seq));
tidings.addEventListener("queueGap", (event) => {
  const gap: QueueGap = event.detail;
  console.warn(`${gap.skipped} dropped (${gap.reason})`);
});
tidings.addEventListener("inboxChange", (event) => {
  const change: InboxChange = event.detail;
  console.log(change.change, change.ids ?? "all", change.marked, change.notifications.length);
});
tidings.addEventListener("error", (event) => console.error(event.detail.code, event.detail.message));
tidings.addEventListener("close", (event) => console.log(event.detail.code, event.detail.reason));
tidings.addEventListener("unauthorized", (event) => console.log(event.detail.code));

function show(note: Notification): void {
  const when: Date = new Date(note.creation_date);
  const state = note.archived_date ? "archived" : note.read_date ? "read" : note.seen_date ? "seen" : "new";
  console.log(note.notification_id, note.user_id, note.category ?? "-", state, when, note.data);
}

async function inbox(): Promise<void> {
  const unseen: Notification[] = await tidings.getUnseen(50);
  const ids = unseen.map((n) => n.notification_id);
  const marked: number = await tidings.markSeen(ids);
  await tidings.markRead(ids.slice(0, 1));
  await tidings.archive(ids.slice(1, 2));
  await tidings.unarchive(ids.slice(1, 2));
  await tidings.markAllSeen();
  await tidings.markAllRead();
  const state: HistoryState = "unread";
  let page: NotificationPage = await tidings.getNotifications({ state, category: "orders", limit: 20 });
  while (page.next_cursor !== null) {
    page = await tidings.getNotifications({ state, cursor: page.next_cursor });
  }
  console.log(marked, page.notifications.length);

  const feedOptions: FeedOptions = { state: "all", category: null, pageSize: 20 };
  const feed: Feed = tidings.feed(feedOptions);
  feed.addEventListener("change", (event) => console.log(event.detail.reason, event.detail.items.length));
  feed.addEventListener("error", (event) => console.error(event.detail.message));
  const added: Notification[] = await feed.loadMore();
  if (feed.hasMore && feed.loaded) await feed.loadMore();
  await feed.refresh();
  console.log(added.length, feed.items.length, feed.state, feed.pageSize, feed.tidings === tidings);
  feed.close();
  const direct = new Feed(tidings, { state: "archived" });
  direct.close();
}

async function topics(): Promise<void> {
  const followed: string[] = await tidings.subscribe("news", "pets");
  const replay = await tidings.readNotifications("news", 0);
  console.log(followed, replay.recovered, replay.last_seq, [...tidings.topics]);
  await tidings.unsubscribe("pets");
  const answer = await tidings.request({ type: "getUnseen", limit: 1 });
  console.log(answer.notifications, tidings.connected, tidings.connectionId, tidings.count);
  console.log(tidings.unread, tidings.categories, tidings.version, tidings.url.href, tidings.deliver);
  const transport: "websocket" | "sse" = tidings.transport;
  console.log(transport, tidings.fallback, tidings.webSocketRetry);
  await tidings.forget();
  tidings.close();
}

void inbox();
void topics();
