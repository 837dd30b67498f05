// fake-streaming.mjs: a fake of AssemblyAI's Universal-Streaming WebSocket (v3) for tests.
//
// One port serves both endpoints tokend derives from ASSEMBLYAI_STREAMING_URL:
//   GET /v3/token  is passed through to the token fake (tests/fakes/token_fake.py), which mints;
//   /v3/ws         is the streaming WebSocket, checked like the real one (FIELD-NOTES.md):
//     - the token must be one the token fake signed (HMAC-SHA256 with the shared secret),
//       unexpired, and not used before: otherwise close 1008; a server-side client (tokend's
//       relay) may instead present the API key (apiKey) in Authorization, without a token;
//     - sample_rate=16000 and encoding=pcm_s16le, else an Error and close 3006;
//     - binary frames of 50..1000 ms of 16 kHz s16le, at about real-time pace: else 3007;
//     - sends Begin, a Turn that grows word by word while the audio is not silence, an
//       end-of-turn, the formatted Turn, and Termination after {"type":"Terminate"}.
//     - with speaker_labels=true, turns (and their words) carry speaker_label A, then B;
//       with a multilingual speech_model and language_detection=true, language_code;
//     - keyterms_prompt must be a JSON array of at most 100 strings of at most 50 characters.
// Control: POST /__control {"mode": ...}: "ok"; "close-NNNN" (every session closes at once
//          with an Error and code NNNN); "drop-after-turn" (the next session's connection
//          breaks after its first turn, no close frame); "error-3005-after-turn" (an Error,
//          then close 3005, after the first turn); "short-session" (Begin says the session
//          ends in 33 s). The one-shot modes go back to "ok" once used.
//          GET  /__stats -> {sessions: [...], rejected: [...]}
import { createHmac, randomUUID, timingSafeEqual } from 'node:crypto';
import http from 'node:http';
import { WebSocketServer } from 'ws';

// The turns the fake hears in speech, in order: words, their formatted text, and the
// language a multilingual model with language detection reports.
const TURNS = [
  { words: ['hello', 'world', 'this', 'is', 'tokend', 'speaking'], formatted: 'Hello world, this is tokend speaking.',
    language: 'en' },
  { words: ['y', 'ahora', 'en', 'español'], formatted: 'Y ahora en español.', language: 'es' },
];
const FRAMES_PER_WORD = 4;       // 200 ms of speech per word
const SPEECH_RMS = 0.01;         // below this, a frame counts as silence
const AHEAD_LIMIT_MS = 1500;     // audio may run at most this far ahead of the wall clock

function b64urlDecode(s) {
  return Buffer.from(s.replace(/-/g, '+').replace(/_/g, '/'), 'base64');
}

export function verifyToken(token, secret, used, nowSeconds = Date.now() / 1000) {
  const parts = String(token || '').split('.');
  if (parts.length !== 3) return 'malformed token';
  const want = createHmac('sha256', secret).update(`${parts[0]}.${parts[1]}`).digest();
  const got = b64urlDecode(parts[2]);
  if (got.length !== want.length || !timingSafeEqual(got, want)) return 'bad signature';
  let payload;
  try { payload = JSON.parse(b64urlDecode(parts[1]).toString()); } catch { return 'malformed payload'; }
  if (!(payload.exp >= nowSeconds)) return 'token expired';
  if (used.has(payload.jti)) return 'token already used';
  used.add(payload.jti);
  return null;
}

function frameRms(buf) {
  let sum = 0;
  const n = buf.length >> 1;
  for (let i = 0; i < n; i++) {
    const s = buf.readInt16LE(i * 2) / 32768;
    sum += s * s;
  }
  return n ? Math.sqrt(sum / n) : 0;
}

export async function startStreamingFake({ tokenUpstream, secret = 'fake-signing-secret', port = 0, apiKey = null } = {}) {
  const state = { mode: 'ok', sessions: [], rejected: [], used: new Set() };

  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    if (url.pathname === '/__control' && req.method === 'POST') {
      let body = '';
      req.on('data', (c) => { body += c; });
      req.on('end', () => {
        Object.assign(state, JSON.parse(body || '{}'));
        res.writeHead(200, { 'Content-Type': 'application/json' }).end('{"ok":true}');
      });
      return;
    }
    if (url.pathname === '/__stats') {
      res.writeHead(200, { 'Content-Type': 'application/json' })
        .end(JSON.stringify({ sessions: state.sessions, rejected: state.rejected, mode: state.mode }));
      return;
    }
    if (url.pathname === '/v3/token' && tokenUpstream) {
      const up = http.request(new URL(req.url, tokenUpstream), { method: req.method, headers: req.headers }, (ur) => {
        res.writeHead(ur.statusCode, ur.headers);
        ur.pipe(res);
      });
      up.on('error', () => { res.destroy(); });
      req.pipe(up);
      return;
    }
    res.writeHead(404, { 'Content-Type': 'application/json' }).end('{"error":"Not found"}');
  });

  const wss = new WebSocketServer({ noServer: true });
  server.on('upgrade', (req, socket, head) => {
    const url = new URL(req.url, 'http://x');
    if (url.pathname !== '/v3/ws') {
      socket.destroy();
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => onSession(ws, url, req.headers));
  });

  function onSession(ws, url, headers) {
    const q = url.searchParams;
    const closeWith = (code, error) => {
      ws.send(JSON.stringify({ type: 'Error', error_code: code, error }));
      ws.close(code, error.slice(0, 120));
    };
    const forced = /^close-(\d+)$/.exec(state.mode);
    if (forced) {
      state.rejected.push({ reason: state.mode });
      closeWith(Number(forced[1]), `forced by the test (${state.mode})`);
      return;
    }
    const byKey = apiKey !== null && headers.authorization === apiKey && !q.has('token');
    const bad = byKey ? null : verifyToken(q.get('token'), secret, state.used);
    if (bad) {
      state.rejected.push({ reason: bad });
      closeWith(1008, `Unauthorized connection: ${bad}`);
      return;
    }
    if (q.get('sample_rate') !== '16000' || q.get('encoding') !== 'pcm_s16le') {
      state.rejected.push({ reason: 'bad audio parameters' });
      closeWith(3006, `Invalid audio parameters: sample_rate=${q.get('sample_rate')} encoding=${q.get('encoding')}`);
      return;
    }
    let keyterms = null;
    if (q.has('keyterms_prompt')) {
      try { keyterms = JSON.parse(q.get('keyterms_prompt')); } catch { keyterms = 'invalid'; }
      if (!Array.isArray(keyterms) || keyterms.length > 100 || keyterms.some((t) => typeof t !== 'string' || t.length > 50)) {
        state.rejected.push({ reason: 'bad keyterms_prompt' });
        closeWith(3006, 'Invalid keyterms_prompt: a JSON array of at most 100 strings of at most 50 characters');
        return;
      }
    }
    const once = state.mode;
    if (['drop-after-turn', 'error-3005-after-turn', 'short-session'].includes(once)) state.mode = 'ok';
    const s = {
      id: randomUUID(), sampleRate: Number(q.get('sample_rate')), encoding: q.get('encoding'),
      formatTurns: q.get('format_turns') === 'true', frames: 0, bytes: 0, minFrameBytes: Infinity,
      maxFrameBytes: 0, maxRms: 0, speechFrames: 0, startedAt: Date.now(), firstFrameAt: 0,
      maxAheadMs: 0, terminated: false, closedWith: null, words: 0, turn: 0, messages: [],
      token: q.get('token'), speechModel: q.get('speech_model'), speakerLabels: q.get('speaker_labels') === 'true',
      languageDetection: q.get('language_detection') === 'true', keyterms,
      turnSettings: ['end_of_turn_confidence_threshold', 'min_turn_silence', 'max_turn_silence'].map((k) => q.get(k)),
      mode: once, auth: byKey ? 'key' : 'token', userAgent: headers['user-agent'] || null,
    };
    state.sessions.push(s);
    const send = (msg) => { s.messages.push(msg.type); if (ws.readyState === ws.OPEN) ws.send(JSON.stringify(msg)); };
    const lifetime = once === 'short-session' ? 33 : 3600;
    send({ type: 'Begin', id: s.id, expires_at: Math.floor(Date.now() / 1000) + lifetime });
    let wordStarts = [];
    const multilingual = s.speechModel === 'universal-streaming-multilingual' && s.languageDetection;
    const turn = (extra) => {
      const t = TURNS[s.turn];
      const speaker = s.speakerLabels ? String.fromCharCode(65 + s.turn) : undefined;
      const words = t.words.slice(0, s.words).map((text, i) => ({
        text, start: wordStarts[i], end: wordStarts[i] + 180, confidence: 0.9, word_is_final: true,
        ...(speaker ? { speaker_label: speaker } : {}),
      }));
      send({
        type: 'Turn', turn_order: s.turn, turn_is_formatted: false, end_of_turn: false,
        end_of_turn_confidence: 0.5, transcript: words.map((w) => w.text).join(' '), words,
        ...(speaker ? { speaker_label: speaker } : {}),
        ...(multilingual ? { language_code: t.language, language_confidence: 0.93 } : {}),
        ...extra,
      });
    };

    ws.on('message', (data, isBinary) => {
      if (!isBinary) {
        let msg;
        try { msg = JSON.parse(data.toString()); } catch { closeWith(3006, 'Invalid JSON message'); return; }
        if (msg.type === 'Terminate') {
          s.terminated = true;
          const audio = s.bytes / 2 / s.sampleRate;
          send({ type: 'Termination', audio_duration_seconds: Number(audio.toFixed(2)),
                 session_duration_seconds: Number(((Date.now() - s.startedAt) / 1000).toFixed(2)) });
          s.closedWith = 1000;
          ws.close(1000);
        }
        return;
      }
      const ms = (data.length / 2 / s.sampleRate) * 1000;
      if (data.length % 2 !== 0 || ms < 50 || ms > 1000) {
        s.closedWith = 3007;
        closeWith(3007, `Input duration violation: ${ms.toFixed(1)} ms (expected between 50 and 1000 ms)`);
        return;
      }
      const now = Date.now();
      if (!s.firstFrameAt) s.firstFrameAt = now;
      s.frames += 1;
      s.bytes += data.length;
      s.minFrameBytes = Math.min(s.minFrameBytes, data.length);
      s.maxFrameBytes = Math.max(s.maxFrameBytes, data.length);
      const ahead = (s.bytes / 2 / s.sampleRate) * 1000 - (now - s.firstFrameAt);
      s.maxAheadMs = Math.max(s.maxAheadMs, ahead);
      if (ahead > AHEAD_LIMIT_MS) {
        s.closedWith = 3007;
        closeWith(3007, 'Audio sent faster than real time');
        return;
      }
      const rms = frameRms(data);
      s.maxRms = Math.max(s.maxRms, rms);
      if (rms < SPEECH_RMS || s.turn >= TURNS.length) return;
      s.speechFrames += 1;
      if (s.speechFrames % FRAMES_PER_WORD !== 1) return;
      wordStarts.push(Math.round(((s.bytes - data.length) / 2 / s.sampleRate) * 1000));   // where this word began
      s.words += 1;
      if (s.words < TURNS[s.turn].words.length) {
        turn({});
        return;
      }
      turn({ end_of_turn: true, end_of_turn_confidence: 0.95 });
      if (s.formatTurns) turn({ end_of_turn: true, turn_is_formatted: true, transcript: TURNS[s.turn].formatted });
      s.turn += 1;
      s.words = 0;
      wordStarts = [];
      if (s.mode === 'drop-after-turn') {
        s.closedWith = 'dropped';
        ws.terminate();                 // the network breaks: no close frame
      } else if (s.mode === 'error-3005-after-turn') {
        s.closedWith = 3005;
        closeWith(3005, 'Internal error: the session was cancelled');
      }
    });
    ws.on('close', (code) => { if (s.closedWith === null) s.closedWith = code; });
  }

  await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
  return {
    port: server.address().port,
    state,
    close: () => new Promise((resolve) => { wss.clients.forEach((c) => c.terminate()); server.close(resolve); }),
  };
}

// Run alone: node fake-streaming.mjs --token-upstream http://127.0.0.1:PORT [--port N]
if (import.meta.url === `file://${process.argv[1]}`) {
  const arg = (name, dflt) => {
    const i = process.argv.indexOf(name);
    return i > 0 ? process.argv[i + 1] : dflt;
  };
  const fake = await startStreamingFake({ tokenUpstream: arg('--token-upstream'), port: Number(arg('--port', 0)),
                                          secret: arg('--secret', 'fake-signing-secret') });
  console.log(`listening http://127.0.0.1:${fake.port}`);
}
