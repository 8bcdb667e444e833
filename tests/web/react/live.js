// What the tests share: the live node test_react_hooks.py started, passed in the environment as
// TIDINGS_REACT_URL (the node), TIDINGS_REACT_SERVICE_TOKEN (scopes notify and publish) and
// TIDINGS_REACT_USERS ({"count": {"user_id", "token"}, …}: a user of its own per test).
import { configure } from "@testing-library/react";

export const BASE = process.env.TIDINGS_REACT_URL;
export const WS_URL = BASE && `${BASE.replace(/^http/, "ws")}/ws`;
export const USERS = JSON.parse(process.env.TIDINGS_REACT_USERS ?? "{}");
const SERVICE_TOKEN = process.env.TIDINGS_REACT_SERVICE_TOKEN;

configure({ asyncUtilTimeout: 5_000 });

beforeAll(() => {
  if (!BASE || !SERVICE_TOKEN) throw new Error("run me with test_react_hooks.py (it starts the node)");
  // The hooks' state changes come from a real socket, at moments no act() can wrap: tell React
  // so (after @testing-library/react's own beforeAll set it; its act() still wraps what it runs).
  globalThis.IS_REACT_ACT_ENVIRONMENT = false;
});

/** POST a JSON body to the node with the service token; resolves with the answer's JSON. */
export async function post(path, body) {
  const response = await fetch(`${BASE}${path}`, {
    method: "POST",
    headers: { authorization: `Bearer ${SERVICE_TOKEN}`, "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  if (response.status >= 300) throw new Error(`${path}: ${response.status} ${await response.text()}`);
  return response.json();
}
