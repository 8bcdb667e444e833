// @vitest-environment node
// What tidings-react.d.ts declares is what tidings-react.js exports: its hooks, and tidings.js.
import { readFileSync } from "node:fs";

import * as client from "../../../src/tidings/web/tidings.js";
import * as hooks from "../../../src/tidings/web/tidings-react.js";

test("the declarations name every hook of the module, and it re-exports tidings.js", () => {
  const types = readFileSync(new URL("../../../src/tidings/web/tidings-react.d.ts", import.meta.url), "utf8");
  const declared = [...types.matchAll(/^export (?:declare )?(?:function|const|class) (\w+)/gm)].map((m) => m[1]);
  expect(types).toMatch(/^export \* from "\.\/tidings\.js";$/m);
  const named = Object.keys(client).filter((name) => name !== "default");
  expect(named).toEqual(expect.arrayContaining(["Tidings", "Feed"]));
  expect(Object.keys(hooks).sort()).toEqual([...declared, ...named].sort());
  for (const name of named) expect(hooks[name]).toBe(client[name]);
  for (const name of declared) expect(typeof hooks[name]).toBe("function");
});
