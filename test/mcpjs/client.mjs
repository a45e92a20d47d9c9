// An MCP client for Sluice's end-to-end tests (test/mcp_linux_test.go):
// the real SDK's Client over StreamableHTTPClientTransport, run under
// `sluice run` (it trusts Sluice's CA through NODE_EXTRA_CA_CERTS).
//
//   node client.mjs URL
//
// Prints one JSON object on stdout: what each step got back.
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';

const url = new URL(process.argv[2]);
const out = {};
const client = new Client({ name: 'sluice-e2e-client', version: '1.0.0' });
await client.connect(new StreamableHTTPClientTransport(url));

// err is what the SDK surfaces for a JSON-RPC error (an McpError).
const err = (e) => ({ code: e.code, message: e.message });
const textOf = (r) => r.content.map((c) => c.text).join('');
const call = async (name, args, opts) => {
  try {
    return { text: textOf(await client.callTool({ name, arguments: args }, undefined, opts)) };
  } catch (e) {
    return { error: err(e) };
  }
};
const list = async () => Object.fromEntries((await client.listTools()).tools.map((t) => [t.name, t.description]));

out.tools = await list();
out.echo = await call('echo', { message: 'hi' });
out.denied = await call('delete_repo', { repo: 'prod' });
out.search = [];
for (let i = 0; i < 3; i++) out.search.push(await call('search', { q: `q${i}` }));

const start = Date.now();
out.progress = [];
out.slow = await call('slow', {}, {
  onprogress: (p) => out.progress.push({ progress: p.progress, total: p.total, ms: Date.now() - start }),
});
out.slowMs = Date.now() - start;

out.flip = await call('flip', {});
out.toolsAfter = await list();

await client.close();
console.log(JSON.stringify(out));
