// The React example of docs/browser.md runs as written, against the live node (see live.js):
// the block is written to a file of its own, with the node's URL for "/ws", and imported into a
// page with an element "app" and an answer for the token endpoint.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { fireEvent, screen, waitFor } from "@testing-library/react";

import { post, USERS, WS_URL } from "./live.js";

const WEB = join(__dirname, "../../../src/tidings/web");

function reactExample() {
  const doc = readFileSync(join(__dirname, "../../../docs/browser.md"), "utf8");
  const section = doc.slice(doc.indexOf("\n## React\n"));
  const [, block] = section.match(/```js\n(.*?)```/s);
  return block;
}

test("the React example of docs/browser.md works as it says", async () => {
  const block = reactExample();
  expect(block).toContain('from "./tidings-react.js"');
  const source = [
    block
      .replace('"./tidings-react.js"', JSON.stringify(join(WEB, "tidings-react.js")))
      .replace('"/ws"', JSON.stringify(WS_URL)),
    "export { root, tidings };",
  ].join("\n");
  const folder = mkdtempSync(join(tmpdir(), "tidings-react-docs-"));
  const file = join(folder, "example.jsx");
  writeFileSync(file, source);

  const realFetch = globalThis.fetch;
  vi.stubGlobal("fetch", (url, init) =>
    url === "/my-app/push-token" ? Promise.resolve(new Response(USERS.docs.token)) : realFetch(url, init),
  );
  localStorage.clear();
  document.body.innerHTML = '<div id="app"></div>';
  const { root, tidings } = await import(/* @vite-ignore */ `/@fs${file}`); // vite takes "/tmp/…" as a URL path
  try {
    await waitFor(() => expect(tidings.connected).toBe(true));
    await post("/notify", { user_id: USERS.docs.user_id, data: { text: "Your order shipped" } });
    await waitFor(() => expect(document.querySelector("span").textContent).toBe("1"));
    fireEvent.click(await screen.findByText("Your order shipped")); // markRead: it leaves the feed
    await waitFor(() => expect(screen.queryByText("Your order shipped")).toBeNull());
    await waitFor(() => expect(document.querySelector("span").hidden).toBe(true)); // read is seen

    await waitFor(() => expect(tidings.topics.has("pet")).toBe(true));
    await post("/publish", { topic: "pet", data: { name: "Rex" } });
    await screen.findByText("Rex");
  } finally {
    root.unmount();
    tidings.close();
    vi.unstubAllGlobals();
    rmSync(folder, { recursive: true });
  }
});
