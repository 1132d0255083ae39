// Builds the chat page into ../src/aiboxctl/webui/static (committed: the wheel ships it, nothing is
// built at install time) and the test-only axe-core asset into ../tests/fixtures/web/.
//   npm ci && npm run build   — rebuild
//   npm ci && npm run check   — rebuild into a temporary folder and fail if it differs from what is committed
// Output names carry a content hash, so the server can let browsers cache them for a year.
import * as esbuild from "esbuild";
import { createHash } from "node:crypto";
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";

const here = new URL(".", import.meta.url).pathname;
const check = process.argv.includes("--check");
const target = join(here, "..", "src", "aiboxctl", "webui", "static");
const out = check ? mkdtempSync(join(tmpdir(), "aibox-web-")) : target;

rmSync(join(out, "assets"), { recursive: true, force: true });
mkdirSync(join(out, "assets"), { recursive: true });

const result = await esbuild.build({
  entryPoints: { app: join(here, "src", "main.js"), style: join(here, "src", "app.css") },
  bundle: true,
  minify: true,
  format: "iife",
  target: ["chrome90", "firefox91"], // Firefox ESR and the Chromium-based domestic browsers
  outdir: join(out, "assets"),
  entryNames: "[name]-[hash]",
  legalComments: "linked",
  charset: "utf8",
  metafile: true,
  logLevel: "warning",
});

const names = {};
for (const file of Object.keys(result.metafile.outputs)) {
  const name = basename(file);
  if (name.startsWith("app-") && name.endsWith(".js")) names.js = name;
  if (name.startsWith("style-") && name.endsWith(".css")) names.css = name;
}
const html = readFileSync(join(here, "src", "index.html"), "utf8")
  .replace("%APP_JS%", `/assets/${names.js}`)
  .replace("%APP_CSS%", `/assets/${names.css}`);
writeFileSync(join(out, "index.html"), html);

const axeDir = check ? join(out, "axe") : join(here, "..", "tests", "fixtures", "web");
mkdirSync(axeDir, { recursive: true });
copyFileSync(join(here, "node_modules", "axe-core", "axe.min.js"), join(axeDir, "axe.min.js"));

if (check) {
  const digest = (dir) => {
    const h = {};
    for (const f of readdirSync(dir, { recursive: true, withFileTypes: true })) {
      if (!f.isFile()) continue;
      const p = join(f.parentPath ?? f.path, f.name);
      h[p.slice(dir.length)] = createHash("sha256").update(readFileSync(p)).digest("hex");
    }
    return h;
  };
  const want = digest(out), have = digest(target);
  delete want["/axe/axe.min.js"];
  const diff = [...new Set([...Object.keys(want), ...Object.keys(have)])].filter((k) => want[k] !== have[k]);
  rmSync(out, { recursive: true, force: true });
  if (diff.length) {
    console.error(`the committed build differs from the sources: ${diff.join(", ")}\nrun: cd web && npm ci && npm run build`);
    process.exit(1);
  }
  console.log("the committed build matches the sources");
} else {
  console.log(`built ${names.js}, ${names.css}`);
}
