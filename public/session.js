// session.js: live transcription: microphone, tokens, WebSocket sessions, turns. A session
// that drops (network loss, a server error) or nears its time cap is replaced by a new one
// with a new token, continuing the same transcript. When the server relays (its /config
// names a relay_url), the session streams through it instead, with no token: the same
// steps otherwise. The UI listens to its events; everything that can fail is reported in
// plain words.
import { Transcript } from './transcript.js';

export { Transcript };

const SAMPLE_RATE = 16000;
const FRAME_SAMPLES = 800;            // 50 ms at 16 kHz = 1600 bytes per frame
const TERMINATION_DEADLINE_MS = 3000;
const RENEW_BEFORE_CAP_MS = 30000;    // a session is replaced this long before its cap
const RECONNECT_ATTEMPTS = 3;         // in a row, without a session that began
const RECONNECT_FIRST_MS = 500;       // then twice as long each time

// What AssemblyAI's close codes mean for the person in front of the page.
export const CLOSE_REASONS = {
  1008: 'The streaming service refused the session (an expired or used token, a refused key, or a limit of the server). Press Start to try again.',
  3005: 'The streaming service had an error and ended the session. Press Start to try again.',
  3006: 'The streaming service could not understand a message from this page, so it ended the session.',
  3007: 'Audio reached the streaming service too fast or in chunks of the wrong size, so it ended the session.',
  3008: 'The session reached its maximum duration and was ended. Press Start for a new one.',
  3009: 'Too many sessions are running at once for this account. Wait for one to end, then press Start again.',
};

// Closes after which a new session is opened at once: the connection broke, the server
// had an error, or the session reached its cap.
const RECONNECT_CODES = new Set([1001, 1006, 1011, 1012, 1013, 3005, 3008]);

export function describeClose(code, serverError) {
  const known = CLOSE_REASONS[code];
  const detail = serverError ? ` The service said: “${serverError}”.` : '';
  if (known) return `${known}${detail}`;
  return `The connection to the streaming service was lost (code ${code}).${detail} Check your network and press Start again.`;
}

export function describeMicrophoneError(err) {
  switch (err && err.name) {
    case 'NotAllowedError':
    case 'SecurityError':
      return 'Microphone access was denied. Allow it for this site in the browser settings, then press Start again.';
    case 'NotFoundError':
    case 'OverconstrainedError':
      return 'No microphone was found. Connect one, then press Start again.';
    case 'NotReadableError':
      return 'The microphone is in use by another application or cannot be opened.';
    default:
      return `The microphone could not be started: ${err && err.message ? err.message : err}`;
  }
}

// The query /token gets for the options chosen on the page.
export function tokenQuery(options = {}) {
  const q = new URLSearchParams();
  if (options.speechModel) q.set('speech_model', options.speechModel);
  if (options.speakerLabels) q.set('speaker_labels', 'true');
  if (options.languageDetection) q.set('language_detection', 'true');
  if (options.keyterms && options.keyterms.length) q.set('keyterms', options.keyterms.join(','));
  if (options.turnPreset) q.set('turn', options.turnPreset);
  if (options.region) q.set('region', options.region);
  const s = q.toString();
  return s ? `?${s}` : '';
}

// The relay's WebSocket URL on this server for the options chosen (the server checks them).
export function relayWebsocketUrl(relayUrl, options = {}, base = globalThis.location && globalThis.location.href) {
  const url = new URL(`${relayUrl}${tokenQuery(options)}`, base);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  return url.toString();
}

export class Session extends EventTarget {
  constructor({ tokenUrl = '/token', relayUrl = null } = {}) {
    super();
    this.tokenUrl = tokenUrl;
    this.relayUrl = relayUrl;           // set: stream through the server, no token
    this.state = 'idle';
    this.transcript = new Transcript();
  }

  emit(type, detail) { this.dispatchEvent(new CustomEvent(type, { detail })); }

  setState(state) {
    this.state = state;
    this.emit('state', state);
  }

  fail(message) {
    this.emit('error', message);
    this.cleanup();
  }

  // The time from pressing Start to each step of the first session (at, when known better
  // than now: the moment the network delivered it).
  mark(step, at = performance.now()) {
    if (!this.timings || this.timings[step] !== undefined) return;
    this.timings[step] = Math.round(at - this.clickedAt);
    this.emit('timing', { ...this.timings });
  }

  async start(options = {}) {
    if (this.state !== 'idle') return;
    this.options = options;
    this.clickedAt = performance.now();
    this.timings = {};
    this.setState('starting');
    this.attempts = 0;
    this.transcript.clear();
    this.emit('transcript', this.transcript);
    // The token is asked for at once, while the microphone and audio start: the first
    // words come sooner (should the microphone fail, that token is left unused).
    const token = this.fetchToken().then((answer) => {
      // When the answer arrived, by the browser's own clock of the request (the page may be
      // busy starting the audio when the promise runs).
      if (!answer.token) return answer;   // relayed: no token to wait for
      const entry = performance.getEntriesByType('resource').filter((e) => e.name.includes('/token')).pop();
      this.mark('token', entry && entry.responseEnd > this.clickedAt ? entry.responseEnd : performance.now());
      return answer;
    });
    token.catch(() => {});
    try {
      if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
        throw Object.assign(new Error('this browser cannot capture audio here (a secure context is needed)'), { name: 'SecurityError' });
      }
      const audio = { channelCount: 1, echoCancellation: true, noiseSuppression: true };
      if (options.deviceId) audio.deviceId = { exact: options.deviceId };
      try {
        this.stream = await navigator.mediaDevices.getUserMedia({ audio });
      } catch (err) {
        if (!options.deviceId || err.name !== 'OverconstrainedError') throw err;
        delete audio.deviceId;          // the remembered microphone is gone: the default one
        this.stream = await navigator.mediaDevices.getUserMedia({ audio });
      }
      this.emit('microphone', this.stream.getAudioTracks()[0]?.getSettings().deviceId || null);
    } catch (err) {
      this.fail(describeMicrophoneError(err));
      return;
    }
    try {
      await this.startAudio();
    } catch (err) {
      this.fail(`Audio capture could not start: ${err.message}`);
      return;
    }
    this.onOffline = () => this.lost('The network connection was lost.');
    this.onOnline = () => { if (this.state === 'reconnecting' && this.waitingForNetwork) this.reconnect(); };
    window.addEventListener('offline', this.onOffline);
    window.addEventListener('online', this.onOnline);
    await this.open(null, token);
  }

  // What a session connects to: a fresh token and its websocket_url, or (relayed) the
  // server's own WebSocket.
  async fetchToken() {
    if (this.relayUrl) return { token: null, websocket_url: relayWebsocketUrl(this.relayUrl, this.options) };
    let res;
    try {
      res = await fetch(`${this.tokenUrl}${tokenQuery(this.options)}`, { cache: 'no-store', headers: { Accept: 'application/json' } });
    } catch {
      throw Object.assign(new Error('Could not reach the token server. Check your network and press Start again.'), { network: true });
    }
    let body = null;
    try { body = await res.json(); } catch { /* not JSON: handled below */ }
    if (!res.ok || !body || !body.token || !body.websocket_url) {
      const why = body && body.error ? body.error : `HTTP ${res.status}`;
      throw Object.assign(new Error(`Could not get a streaming token: ${why}`), { retryable: res.status >= 500 });
    }
    return body;
  }

  async startAudio() {
    this.audio = new AudioContext();       // the device's own rate; the worklet resamples
    await this.audio.audioWorklet.addModule(new URL('./capture-worklet.js', import.meta.url));
    this.source = this.audio.createMediaStreamSource(this.stream);
    this.capture = new AudioWorkletNode(this.audio, 'pcm16-capture', {
      processorOptions: { targetRate: SAMPLE_RATE, frameSamples: FRAME_SAMPLES },
    });
    this.mute = this.audio.createGain();
    this.mute.gain.value = 0;
    this.capture.connect(this.mute).connect(this.audio.destination);
    this.capture.port.onmessage = (e) => {
      this.emit('level', e.data.level);
      const conn = this.conn;
      if (conn && conn.ws.readyState === WebSocket.OPEN && this.state === 'live') conn.ws.send(e.data.pcm);
    };
  }

  // Opens a session with a fresh token (never one used before): the one asked for already
  // (pending), or a new one. reason: null for the first, else what the marker says.
  async open(reason, pending = null) {
    let answer;
    try {
      answer = await (pending || this.fetchToken());
    } catch (err) {
      if (reason && (err.network || err.retryable) && this.state === 'reconnecting') {
        this.retryLater(err.message);
        return;
      }
      this.fail(err.message);
      return;
    }
    if (this.state === 'idle') return;     // stopped meanwhile
    try {
      this.connect(answer, reason);
    } catch (err) {
      this.fail(`Could not open the streaming connection: ${err.message}`);
    }
  }

  connect(answer, reason) {
    const url = new URL(answer.websocket_url);
    url.searchParams.set('sample_rate', String(SAMPLE_RATE));
    url.searchParams.set('encoding', 'pcm_s16le');
    url.searchParams.set('format_turns', 'true');
    if (answer.token) url.searchParams.set('token', answer.token);
    const ws = new WebSocket(url);
    ws.binaryType = 'arraybuffer';
    const conn = { ws, segment: this.transcript.newSegment(reason), serverError: null, retiring: false };
    this.conn = conn;
    if (reason) this.emit('marker', { reason, segment: conn.segment });
    ws.onopen = () => {
      if (this.conn !== conn) return;
      this.mark('socket');
      this.setState('live');
      if (this.source && !this.sourceConnected) {
        this.source.connect(this.capture);
        this.sourceConnected = true;
      }
    };
    ws.onmessage = (e) => this.onMessage(conn, e.data);
    ws.onclose = (e) => this.onClose(conn, e.code);
  }

  onMessage(conn, data) {
    let msg;
    try { msg = JSON.parse(data); } catch { return; }
    switch (msg.type) {
      case 'Begin': {
        this.attempts = 0;
        this.mark('begin');
        const expiresAt = msg.expires_at ? new Date(msg.expires_at * 1000) : null;
        this.emit('begin', { id: msg.id, expiresAt });
        clearTimeout(this.renewTimer);
        if (expiresAt) {
          const wait = expiresAt.getTime() - Date.now() - RENEW_BEFORE_CAP_MS;
          this.renewTimer = setTimeout(() => this.renew(), Math.max(0, wait));
        }
        break;
      }
      case 'Turn':
        this.transcript.apply(msg, conn.segment);
        if (msg.transcript) this.mark('words');
        this.emit('transcript', this.transcript);
        break;
      case 'Termination':
        conn.terminated = true;
        this.emit('termination', { audioSeconds: msg.audio_duration_seconds, sessionSeconds: msg.session_duration_seconds });
        if (conn.terminationWaiter) conn.terminationWaiter();
        break;
      case 'Error':
        conn.serverError = msg.error || `error ${msg.error_code}`;
        break;
      default:
        break;
    }
  }

  onClose(conn, code) {
    if (conn.retiring || this.conn !== conn || this.state === 'idle') return;
    if (conn.terminated || (this.state === 'stopping' && code === 1000)) {
      this.cleanup();
      return;
    }
    if (this.state !== 'stopping' && RECONNECT_CODES.has(code)) {
      this.lost(conn.serverError ? `The service said: “${conn.serverError}”.` : `The connection closed (code ${code}).`,
        code, conn.serverError);
      return;
    }
    this.fail(describeClose(code, conn.serverError));
  }

  // The session broke: a new one is opened (after a pause; once online when offline),
  // unless too many attempts in a row failed.
  lost(why, code = 1006, serverError = null) {
    if (this.state === 'idle' || this.state === 'stopping') return;
    if (this.attempts >= RECONNECT_ATTEMPTS) {
      this.fail(describeClose(code, serverError));
      return;
    }
    this.dropConnection();
    this.setState('reconnecting');
    this.lastLoss = why;
    this.waitingForNetwork = navigator.onLine === false;
    this.emit('reconnecting', { why, offline: this.waitingForNetwork });
    if (!this.waitingForNetwork) this.retryLater(why);
  }

  retryLater(why) {
    const delay = RECONNECT_FIRST_MS * 2 ** this.attempts;
    this.attempts += 1;
    this.lastLoss = why;
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.reconnect(), delay);
  }

  reconnect() {
    if (this.state !== 'reconnecting') return;
    this.waitingForNetwork = false;
    this.open(`Reconnected: ${this.lastLoss}`);
  }

  // The session nears its cap: end it cleanly and continue in a new one.
  async renew() {
    const old = this.conn;
    if (!old || this.state !== 'live') return;
    old.retiring = true;
    try { old.ws.send(JSON.stringify({ type: 'Terminate' })); } catch { /* closing anyway */ }
    setTimeout(() => { try { old.ws.close(1000); } catch { /* gone */ } }, TERMINATION_DEADLINE_MS);
    this.setState('reconnecting');
    this.lastLoss = 'the session neared its time limit, so a new one continues it.';
    this.reconnect();
  }

  dropConnection() {
    clearTimeout(this.renewTimer);
    const conn = this.conn;
    this.conn = null;
    if (!conn) return;
    conn.ws.onclose = null;
    conn.ws.onmessage = null;
    if (conn.ws.readyState === WebSocket.OPEN || conn.ws.readyState === WebSocket.CONNECTING) conn.ws.close(1000);
  }

  async stop() {
    if (!['live', 'starting', 'reconnecting'].includes(this.state)) return;
    const conn = this.conn;
    if (!conn || conn.ws.readyState !== WebSocket.OPEN) {
      this.cleanup();
      return;
    }
    this.setState('stopping');
    if (this.source && this.sourceConnected) this.source.disconnect();
    this.sourceConnected = false;
    this.capture.port.postMessage('flush');
    await new Promise((r) => setTimeout(r, 60));     // let the last partial frame go out
    const done = new Promise((resolve) => { conn.terminationWaiter = resolve; });
    conn.ws.send(JSON.stringify({ type: 'Terminate' }));
    await Promise.race([done, new Promise((r) => setTimeout(r, TERMINATION_DEADLINE_MS))]);
    this.cleanup();
  }

  cleanup() {
    window.removeEventListener('offline', this.onOffline);
    window.removeEventListener('online', this.onOnline);
    clearTimeout(this.retryTimer);
    this.dropConnection();
    if (this.source) { try { this.source.disconnect(); } catch { /* already */ } }
    if (this.capture) this.capture.port.onmessage = null;
    if (this.stream) this.stream.getTracks().forEach((t) => t.stop());   // release the microphone
    if (this.audio) this.audio.close().catch(() => {});
    this.stream = this.audio = this.source = this.capture = this.mute = null;
    this.sourceConnected = false;
    this.emit('level', 0);
    this.setState('idle');
  }
}
