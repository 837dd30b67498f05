// client.mjs: simulated streaming sessions for make bench's relay rows: each sends a
// 1,600-byte frame (50 ms of 16 kHz audio) every 50 ms at real time and a ForceEndpoint
// once a second, whose Turn comes back through the relay: its round trip is measured.
// Raw sockets with frames built once, so that the client costs little.
//   node client.mjs --url ws://127.0.0.1:9405/v3/ws?... --sessions 1000 --ramp 10 --duration 30
// Prints "ready" once every session began (the measuring starts), "done" when the measured
// time is over (the sessions then Terminate), then one JSON line.
import crypto from 'node:crypto';
import net from 'node:net';

const arg = (name, dflt) => { const i = process.argv.indexOf(name); return i > 0 ? process.argv[i + 1] : dflt; };
const url = new URL(arg('--url'));
const SESSIONS = Number(arg('--sessions', 100));
const RAMP_MS = Number(arg('--ramp', 5)) * 1000;
const DURATION_MS = Number(arg('--duration', 30)) * 1000;
const ORIGIN = arg('--origin', `http://${url.host}`);
const KEY = arg('--key', null);                 // straight to the upstream: its key
const TICK_MS = 5, SLOTS = 10;                  // each session sends in one slot of ten: every 50 ms

function masked(opcode, payload) {
  const key = crypto.randomBytes(4);
  const n = payload.length;
  const head = n < 126 ? Buffer.from([0x80 | opcode, 0x80 | n]) : Buffer.from([0x80 | opcode, 0x80 | 126, n >> 8, n & 255]);
  const body = Buffer.from(payload);
  for (let i = 0; i < n; i++) body[i] ^= key[i & 3];
  return Buffer.concat([head, key, body]);
}
const AUDIO = masked(2, Buffer.alloc(1600));
const FORCE = masked(1, Buffer.from('{"type":"ForceEndpoint"}'));
const TERMINATE = masked(1, Buffer.from('{"type":"Terminate"}'));
const CLOSE = masked(8, Buffer.from([0x03, 0xe8]));

const sessions = [];
const rtts = [];
let ending = false;

function open(i) {
  const s = { i, sock: null, begun: false, closed: false, dropped: false, t0: 0n, buf: Buffer.alloc(0), head: false };
  sessions.push(s);
  const sock = s.sock = net.connect(Number(url.port), url.hostname);
  sock.setNoDelay(true);
  sock.on('connect', () => sock.write(`GET ${url.pathname}${url.search} HTTP/1.1\r\nHost: ${url.host}\r\nUpgrade: websocket\r\n` +
    `Connection: Upgrade\r\nSec-WebSocket-Key: ${crypto.randomBytes(16).toString('base64')}\r\nSec-WebSocket-Version: 13\r\n` +
    `Origin: ${ORIGIN}\r\n${KEY ? `Authorization: ${KEY}\r\n` : ''}\r\n`));
  const gone = () => { if (!s.closed) { s.closed = true; if (!ending) s.dropped = true; } };
  sock.on('error', gone);
  sock.on('close', gone);
  sock.on('data', (data) => {
    s.buf = s.buf.length ? Buffer.concat([s.buf, data]) : data;
    if (!s.head) {
      const end = s.buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      if (!s.buf.subarray(0, 13).toString().includes(' 101')) { s.dropped = true; sock.destroy(); return; }
      s.head = true;
      s.buf = s.buf.subarray(end + 4);
    }
    for (;;) {
      if (s.buf.length < 2) return;
      let n = s.buf[1] & 127, off = 2;
      if (n === 126) { if (s.buf.length < 4) return; n = s.buf.readUInt16BE(2); off = 4; }
      else if (n === 127) { if (s.buf.length < 10) return; n = Number(s.buf.readBigUInt64BE(2)); off = 10; }
      if (s.buf.length < off + n) return;
      const opcode = s.buf[0] & 15, payload = s.buf.subarray(off, off + n);
      s.buf = s.buf.subarray(off + n);
      if (opcode === 8) { if (!ending) s.dropped = true; s.closed = true; sock.end(CLOSE); return; }
      if (opcode !== 1) continue;
      if (!s.begun && payload.includes('"Begin"')) s.begun = true;
      else if (s.t0 && payload.includes('"Turn"')) { rtts.push(Number(process.hrtime.bigint() - s.t0) / 1e6); s.t0 = 0n; }
    }
  });
}

for (let i = 0; i < SESSIONS; i++) setTimeout(() => open(i), (RAMP_MS * i) / SESSIONS);

let tick = 0;
const ticker = setInterval(() => {
  tick++;
  const slot = tick % SLOTS, second = tick % (1000 / TICK_MS);
  for (const s of sessions) {
    if (!s.begun || s.closed || s.i % SLOTS !== slot) continue;
    s.sock.write(AUDIO);
    if (s.i % (1000 / TICK_MS) === second && !s.t0) { s.t0 = process.hrtime.bigint(); s.sock.write(FORCE); }
  }
}, TICK_MS);

const pct = (a, p) => (a.length ? a[Math.min(a.length - 1, Math.floor((a.length * p) / 100))] : null);
const waitBegun = setInterval(() => {
  const begun = sessions.filter((s) => s.begun).length, failed = sessions.filter((s) => s.dropped).length;
  if (sessions.length < SESSIONS || begun + failed < SESSIONS) return;
  clearInterval(waitBegun);
  rtts.length = 0;
  console.log('ready');
  setTimeout(() => {
    console.log('done');
    const sample = rtts.slice().sort((a, b) => a - b);
    const dropped = sessions.filter((s) => s.dropped).length;
    ending = true;
    for (const s of sessions) if (!s.closed) s.sock.write(TERMINATE);
    setTimeout(() => {
      clearInterval(ticker);
      console.log(JSON.stringify({ sessions: SESSIONS, begun, dropped, turns: sample.length,
        p50_ms: pct(sample, 50), p99_ms: pct(sample, 99) }));
      for (const s of sessions) s.sock.destroy();
      process.exit(0);
    }, 3000);
  }, DURATION_MS);
}, 100);
