// vitest for the React hooks (tests/web/react/test_react_hooks.py runs it against a live node).
// The packages are in tests/support/node_modules, not above these files: aliases point at them,
// so that the hooks' module (in src/) and the tests import one and the same React.
import { tmpdir } from "node:os";
import { fileURLToPath } from "node:url";

const modules = fileURLToPath(new URL("../../support/node_modules/", import.meta.url));
const packages = ["react", "react-dom", "@testing-library/react"];

export default {
  cacheDir: `${modules}.vite-react`, // not a node_modules/ of its own here
  resolve: {
    alias: packages.map((name) => ({
      find: new RegExp(`^${name.replace("/", "\\/")}(/.*)?$`),
      replacement: `${modules}${name}$1`,
    })),
  },
  esbuild: { jsx: "automatic" },
  // The checkout, and the temporary folder where docs.test.jsx writes the docs' example.
  server: { fs: { allow: [fileURLToPath(new URL("../../../", import.meta.url)), tmpdir()] } },
  test: {
    environment: "jsdom",
    globals: true,
    include: ["*.test.{js,jsx}"],
    testTimeout: 15_000,
    hookTimeout: 15_000,
    fileParallelism: false,
  },
};
