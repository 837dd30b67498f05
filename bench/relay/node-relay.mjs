// node-relay.mjs: the usual hand-built relay, for make bench: a Node.js `ws` server that
// opens the upstream session with the key for each browser and pipes messages both ways
// (about 30 lines; no limits, no pacing, no metering). PORT, UPSTREAM (ws://host:port),
// ASSEMBLYAI_API_KEY.
import http from 'node:http';
import { WebSocket, WebSocketServer } from 'ws';

const upstream = process.env.UPSTREAM;
const key = process.env.ASSEMBLYAI_API_KEY;
const server = http.createServer((req, res) => res.writeHead(404).end());
const wss = new WebSocketServer({ server, path: '/v3/ws' });

wss.on('connection', (client, req) => {
  const query = new URL(req.url, 'http://x').search;
  const up = new WebSocket(`${upstream}/v3/ws${query}`, { headers: { Authorization: key } });
  const queued = [];
  client.on('message', (data, isBinary) => {
    if (up.readyState === WebSocket.OPEN) up.send(data, { binary: isBinary });
    else queued.push([data, isBinary]);
  });
  up.on('open', () => { for (const [d, b] of queued.splice(0)) up.send(d, { binary: b }); });
  up.on('message', (data, isBinary) => client.send(data, { binary: isBinary }));
  const codeOk = (c) => (c >= 1000 && c <= 1003) || (c >= 1007 && c <= 1013) || (c >= 3000 && c <= 4999);
  up.on('close', (code, reason) => client.close(codeOk(code) ? code : 1011, reason));
  client.on('close', () => up.close());
  up.on('error', () => client.close(1011));
  client.on('error', () => up.terminate());
});

server.listen(Number(process.env.PORT), '127.0.0.1', () => console.log(`listening ${process.env.PORT}`));
