// Every member tidings.d.ts declares on Tidings and Feed exists on instances of tidings.js's
// classes, and every public method of those classes is declared: the declarations are read
// with the TypeScript compiler's own parser. Usage: node check_members.mjs <typescript> <web>
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";

const [typescriptDir, webDir] = process.argv.slice(2);
const ts = createRequire(import.meta.url)(typescriptDir);

// What a browser gives the module, enough to construct its classes here.
globalThis.location = { href: "http://localhost/" };
globalThis.sessionStorage = globalThis.localStorage = {
  getItem: () => null,
  setItem: () => {},
};

const source = ts.createSourceFile(
  "tidings.d.ts",
  readFileSync(`${webDir}/tidings.d.ts`, "utf8"),
  ts.ScriptTarget.Latest,
);
const declared = {};
for (const statement of source.statements) {
  if (ts.isClassDeclaration(statement) && statement.name) {
    declared[statement.name.text] = new Set(
      statement.members.filter((m) => m.name && !ts.isConstructorDeclaration(m)).map((m) => m.name.text),
    );
  }
}

const module = await import(pathToFileURL(`${webDir}/tidings.js`).href);
const tidings = new module.Tidings("ws://localhost/ws");
const instances = { Tidings: tidings, Feed: new module.Feed(tidings) };
const problems = [];
for (const [name, members] of Object.entries(declared)) {
  const instance = instances[name];
  if (!instance) {
    problems.push(`tidings.d.ts declares class ${name}, tidings.js has none`);
    continue;
  }
  for (const member of members) {
    if (!(member in instance)) problems.push(`${name}.${member} is declared but missing`);
  }
  const methods = Object.getOwnPropertyNames(Object.getPrototypeOf(instance)).filter(
    (m) => m !== "constructor" && !m.startsWith("_"),
  );
  for (const method of methods) {
    if (!members.has(method)) problems.push(`${name}.${method} exists but is not declared`);
  }
}
if (module.default !== module.Tidings) problems.push("the default export is not Tidings");
if (problems.length) {
  console.error(problems.join("\n"));
  process.exit(1);
}
console.log(`checked ${Object.values(declared).reduce((n, s) => n + s.size, 0)} members`);
