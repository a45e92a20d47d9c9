// An MCP client for Sluice's end-to-end test of tool changes
// (test/mcp_linux_test.go, TestMCPToolChangeAck): the real SDK's Client
// over Streamable HTTP (TRANSPORT http, URL the endpoint) or the older
// HTTP+SSE transport (TRANSPORT sse, URL the GET /sse stream).
//
//   node client_ack.mjs URL TRANSPORT [BEARER]
//
// Prints one JSON object per line on stdout as it goes:
//   {"step":"listed", tools, echo, denied, weather, slow, slowMs, progress}
//                                       before any change; slow reports progress
//   {"step":"denied", flip, toolsAfter, weather}  weather changed: its call's error
//   {"step":"done", weather, attempts}  weather called again until it answers
//                                       (the test acknowledges the change meanwhile)
//   {"step":"token", error}             with BEARER: a client sending it, refused
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { SSEClientTransport } from '@modelcontextprotocol/sdk/client/sse.js';

const [urlArg, transport, bearer] = process.argv.slice(2);
const url = new URL(urlArg);
const open = async (headers) => {
  const c = new Client({ name: 'sluice-e2e-ack', version: '1.0.0' });
  const opts = headers ? { requestInit: { headers } } : undefined;
  await c.connect(transport === 'sse' ? new SSEClientTransport(url, opts) : new StreamableHTTPClientTransport(url, opts));
  return c;
};
const err = (e) => ({ code: e.code, message: e.message });
const textOf = (r) => r.content.map((c) => c.text).join('');
const print = (o) => console.log(JSON.stringify(o));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const client = await open();
const call = async (name, args) => {
  try {
    return { text: textOf(await client.callTool({ name, arguments: args })) };
  } catch (e) {
    return { error: err(e) };
  }
};
const list = async () => Object.fromEntries((await client.listTools()).tools.map((t) => [t.name, t.description]));

const start = Date.now();
const progress = [];
const slow = await (async () => {
  try {
    return { text: textOf(await client.callTool({ name: 'slow', arguments: {} }, undefined, { onprogress: (p) => progress.push({ progress: p.progress, ms: Date.now() - start }) })) };
  } catch (e) {
    return { error: err(e) };
  }
})();
const slowMs = Date.now() - start;
print({ step: 'listed', tools: await list(), echo: await call('echo', { message: 'hi' }), denied: await call('delete_repo', { repo: 'prod' }), weather: await call('weather', {}), slow, slowMs, progress });
const flip = await call('flip', {});
const toolsAfter = await list();
print({ step: 'denied', flip, toolsAfter, weather: await call('weather', {}) });

let weather;
let attempts = 0;
for (const deadline = Date.now() + 30000; Date.now() < deadline;) {
  attempts++;
  weather = await call('weather', {});
  if (!weather.error) break;
  await sleep(250);
}
print({ step: 'done', weather, attempts });
await client.close();

if (bearer) {
  try {
    const c = await open({ Authorization: `Bearer ${bearer}` });
    print({ step: 'token', text: textOf(await c.callTool({ name: 'echo', arguments: { message: 'token' } })) });
    await c.close();
  } catch (e) {
    print({ step: 'token', error: err(e) });
  }
}
