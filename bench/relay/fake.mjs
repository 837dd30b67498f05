// fake.mjs: the streaming upstream of make bench's relay rows: AssemblyAI's WebSocket as
// the relays see it (the key in Authorization, Begin at once, a Turn for each
// ForceEndpoint, Termination and close 1000 after Terminate), written on raw sockets so
// that it costs little next to the servers measured: audio is counted, never unmasked.
// node fake.mjs --port 9401 --key test-key
import crypto from 'node:crypto';
import net from 'node:net';

const arg = (name, dflt) => { const i = process.argv.indexOf(name); return i > 0 ? process.argv[i + 1] : dflt; };
const PORT = Number(arg('--port', 9401));
const KEY = arg('--key', 'test-key');
const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
const WORDS = Array.from({ length: 8 }, (_, i) => ({ text: `word${i}`, start: i * 200, end: i * 200 + 180,
  confidence: 0.9, word_is_final: true }));

function frame(opcode, payload) {
  const n = payload.length;
  const head = n < 126 ? Buffer.from([0x80 | opcode, n]) : Buffer.from([0x80 | opcode, 126, n >> 8, n & 255]);
  return Buffer.concat([head, payload]);
}
const text = (obj) => frame(1, Buffer.from(JSON.stringify(obj)));

net.createServer((sock) => {
  sock.setNoDelay(true);
  let buf = Buffer.alloc(0), open = false, turns = 0, bytes = 0;
  const started = Date.now();
  sock.on('error', () => {});
  sock.on('data', (data) => {
    buf = buf.length ? Buffer.concat([buf, data]) : data;
    if (!open) {
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      const head = buf.subarray(0, end).toString('latin1');
      buf = buf.subarray(end + 4);
      const header = (name) => (new RegExp(`^${name}:\\s*(.*)$`, 'im').exec(head) || [])[1]?.trim();
      const accept = crypto.createHash('sha1').update(header('sec-websocket-key') + GUID).digest('base64');
      sock.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
      open = true;
      if (header('authorization') !== KEY) {
        sock.end(Buffer.concat([text({ type: 'Error', error_code: 1008, error: 'Invalid API key' }),
          frame(8, Buffer.from([0x03, 0xf0]))]));
        return;
      }
      sock.write(text({ type: 'Begin', id: crypto.randomUUID(), expires_at: Math.floor(Date.now() / 1000) + 10800 }));
    }
    for (;;) {
      if (buf.length < 2) return;
      let n = buf[1] & 127, off = 2;
      if (n === 126) { if (buf.length < 4) return; n = buf.readUInt16BE(2); off = 4; }
      else if (n === 127) { if (buf.length < 10) return; n = Number(buf.readBigUInt64BE(2)); off = 10; }
      const masked = buf[1] & 128;
      if (buf.length < off + (masked ? 4 : 0) + n) return;
      const opcode = buf[0] & 15;
      const key = masked ? buf.subarray(off, off + 4) : null;
      const payload = buf.subarray(off + (masked ? 4 : 0), off + (masked ? 4 : 0) + n);
      buf = buf.subarray(off + (masked ? 4 : 0) + n);
      if (opcode === 2) { bytes += n; continue; }
      const plain = Buffer.from(payload);
      if (key) for (let i = 0; i < plain.length; i++) plain[i] ^= key[i & 3];
      if (opcode === 8) { sock.end(frame(8, plain.subarray(0, 2))); return; }
      if (opcode === 9) { sock.write(frame(10, plain)); continue; }
      if (opcode !== 1) continue;
      const msg = plain.toString();
      if (msg.includes('"ForceEndpoint"')) {
        sock.write(text({ type: 'Turn', turn_order: turns++, turn_is_formatted: true, end_of_turn: true,
          end_of_turn_confidence: 0.9, transcript: WORDS.map((w) => w.text).join(' '), words: WORDS }));
      } else if (msg.includes('"Terminate"')) {
        sock.end(Buffer.concat([text({ type: 'Termination', audio_duration_seconds: bytes / 32000,
          session_duration_seconds: (Date.now() - started) / 1000 }), frame(8, Buffer.from([0x03, 0xe8]))]));
        return;
      }
    }
  });
}).listen(PORT, '127.0.0.1', 4096, () => console.log(`listening ${PORT}`));
