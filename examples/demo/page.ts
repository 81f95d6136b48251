/** The demo's small HTML pages. */

export function escapeHtml (text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`)
}

export function page (title: string, body: string): string {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${escapeHtml(title)}</title>
<style>
body{font-family:system-ui,sans-serif;background:#f4f6f8;margin:0;display:flex;justify-content:center;padding-top:10vh;color:#1d2733}
main{background:#fff;padding:2em 3em;border-radius:8px;box-shadow:0 2px 10px #0002;min-width:380px}
h1{font-size:1.4em;margin-top:0}dl{display:grid;grid-template-columns:auto 1fr;gap:.5em 1.5em}dt{color:#667}dd{margin:0;font-weight:600}
.button{display:inline-block;background:#14aa8c;color:#fff;padding:.6em 1.2em;border-radius:4px;text-decoration:none}
.group{background:#e6f4f1;border-radius:3px;padding:.1em .5em;margin-right:.3em}.error{color:#b00020}
</style></head><body><main>${body}</main></body></html>`
}
