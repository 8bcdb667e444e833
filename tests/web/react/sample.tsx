// A sample React application using every export of tidings-react.js through its types:
// `tsc --noEmit -p tests/web/react` (test_react_hooks.py) fails when they stop agreeing.
import { useState } from "react";
import {
  Feed,
  Tidings,
  TidingsProvider,
  type Notification,
  type TopicMessage,
  useFeed,
  useTidings,
  useTopic,
  useUnseenCount,
  type FeedView,
  type TopicView,
  type UnseenCount,
  type UseFeedOptions,
  type UseTopicOptions,
} from "../../../src/tidings/web/tidings-react.js";

function Bell() {
  const counts: UnseenCount = useUnseenCount(useTidings());
  const orders: number = counts.categories["orders"] ?? 0;
  if (counts.count == null) return <span>…</span>;
  return <span title={`v${counts.version}`}>{counts.count} unseen, {counts.unread ?? 0} unread, {orders} orders</span>;
}

function Inbox({ category }: { category: string | null }) {
  const tidings = useTidings();
  const options: UseFeedOptions = { state: "unread", category, pageSize: 20 };
  const feed: FeedView = useFeed(tidings, options);
  const open = (note: Notification) => void tidings.markRead([note.notification_id]);
  return (
    <>
      {feed.error && <p role="alert">{feed.error.message}</p>}
      <ul>
        {feed.items.map((note) => (
          <li key={note.notification_id} onClick={() => open(note)}>{String(note.data)}</li>
        ))}
      </ul>
      {feed.hasMore && (
        <button disabled={feed.loading} onClick={() => feed.loadMore().then((added) => console.log(added.length))}>
          Older
        </button>
      )}
    </>
  );
}

function Pets() {
  const [topic, setTopic] = useState<string | null>("pet");
  const options: UseTopicOptions = { limit: 10 };
  const pets: TopicView = useTopic(useTidings(), topic, options);
  const last: TopicMessage | undefined = pets.messages.at(-1);
  if (pets.error) return <p>{pets.error.code ?? pets.error.message}</p>;
  return (
    <p onClick={() => setTopic(null)}>
      {pets.subscribed ? "live" : "…"} {last ? `#${last.seq} ${JSON.stringify(last.data)}` : ""}
    </p>
  );
}

export function App({ token }: { token: string }) {
  const [tidings] = useState(() => new Tidings("/ws", { token }).connect());
  const feed: Feed = tidings.feed(); // tidings.js's classes come along
  feed.close();
  return (
    <TidingsProvider tidings={tidings}>
      <Bell />
      <Inbox category={null} />
      <Pets />
    </TidingsProvider>
  );
}
