// session.js: one live transcription session: microphone, token, WebSocket, turns.
// The UI listens to its events; everything that can fail is reported in plain words.

const SAMPLE_RATE = 16000;
const FRAME_SAMPLES = 800;            // 50 ms at 16 kHz = 1600 bytes per frame
const TERMINATION_DEADLINE_MS = 3000;

// What AssemblyAI's close codes mean for the person in front of the page.
export const CLOSE_REASONS = {
  1008: 'The streaming service refused the session token (expired, already used, or the account is not allowed to stream). Press Start to try again with a new token.',
  3005: 'The streaming service had an error and ended the session. Press Start to try again.',
  3006: 'The streaming service could not understand a message from this page, so it ended the session.',
  3007: 'Audio reached the streaming service too fast or in chunks of the wrong size, so it ended the session.',
  3008: 'The session reached its maximum duration and was ended. Press Start for a new one.',
  3009: 'Too many sessions are running at once for this account. Wait for one to end, then press Start again.',
};

export function describeClose(code, serverError) {
  const known = CLOSE_REASONS[code];
  if (known) return known;
  const detail = serverError ? ` (${serverError})` : '';
  return `The connection to the streaming service was lost (code ${code})${detail}. Check your network and press Start again.`;
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

// Turns keyed by turn_order. A turn grows while end_of_turn is false; end_of_turn closes
// it; with format_turns=true a formatted copy of the same turn follows and replaces it.
export class Transcript {
  constructor() { this.turns = new Map(); }

  apply(msg) {
    const prev = this.turns.get(msg.turn_order);
    if (prev && prev.formatted && !msg.turn_is_formatted) return;   // never undo formatting
    this.turns.set(msg.turn_order, {
      order: msg.turn_order,
      text: msg.transcript || '',
      final: Boolean(msg.end_of_turn) || Boolean(prev && prev.final),
      formatted: Boolean(msg.turn_is_formatted && msg.end_of_turn),
    });
  }

  ordered() { return [...this.turns.values()].sort((a, b) => a.order - b.order); }

  finalText() { return this.ordered().filter((t) => t.final && t.text).map((t) => t.text).join('\n'); }

  clear() { this.turns.clear(); }
}

export class Session extends EventTarget {
  constructor({ tokenUrl = '/token' } = {}) {
    super();
    this.tokenUrl = tokenUrl;
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

  async start() {
    if (this.state !== 'idle') return;
    this.setState('starting');
    this.serverError = null;
    this.terminated = false;
    this.transcript.clear();
    this.emit('transcript', this.transcript);
    try {
      if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
        throw Object.assign(new Error('this browser cannot capture audio here (a secure context is needed)'), { name: 'SecurityError' });
      }
      this.stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true },
      });
    } catch (err) {
      this.fail(describeMicrophoneError(err));
      return;
    }
    let answer;
    try {
      answer = await this.fetchToken();    // right before connecting: a token is single-use
    } catch (err) {
      this.fail(err.message);
      return;
    }
    try {
      await this.startAudio();
    } catch (err) {
      this.fail(`Audio capture could not start: ${err.message}`);
      return;
    }
    try {
      this.connect(answer);
    } catch (err) {
      this.fail(`Could not open the streaming connection: ${err.message}`);
    }
  }

  async fetchToken() {
    let res;
    try {
      res = await fetch(this.tokenUrl, { cache: 'no-store', headers: { Accept: 'application/json' } });
    } catch {
      throw new Error('Could not reach the token server. Check your network and press Start again.');
    }
    let body = null;
    try { body = await res.json(); } catch { /* not JSON: handled below */ }
    if (!res.ok || !body || !body.token || !body.websocket_url) {
      const why = body && body.error ? body.error : `HTTP ${res.status}`;
      throw new Error(`Could not get a streaming token: ${why}`);
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
      if (this.ws && this.ws.readyState === WebSocket.OPEN && this.state === 'live') this.ws.send(e.data.pcm);
    };
  }

  connect(answer) {
    const url = new URL(answer.websocket_url);
    url.searchParams.set('sample_rate', String(SAMPLE_RATE));
    url.searchParams.set('encoding', 'pcm_s16le');
    url.searchParams.set('format_turns', 'true');
    url.searchParams.set('token', answer.token);
    const ws = new WebSocket(url);
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    ws.onopen = () => {
      this.setState('live');
      this.source.connect(this.capture);
    };
    ws.onmessage = (e) => this.onMessage(e.data);
    ws.onclose = (e) => this.onClose(e.code);
    this.onOffline = () => this.fail('The network connection was lost. Press Start again when you are back online.');
    window.addEventListener('offline', this.onOffline);
  }

  onMessage(data) {
    let msg;
    try { msg = JSON.parse(data); } catch { return; }
    switch (msg.type) {
      case 'Begin':
        this.emit('begin', { id: msg.id, expiresAt: msg.expires_at ? new Date(msg.expires_at * 1000) : null });
        break;
      case 'Turn':
        this.transcript.apply(msg);
        this.emit('transcript', this.transcript);
        break;
      case 'Termination':
        this.terminated = true;
        this.emit('termination', { audioSeconds: msg.audio_duration_seconds, sessionSeconds: msg.session_duration_seconds });
        if (this.terminationWaiter) this.terminationWaiter();
        break;
      case 'Error':
        this.serverError = msg.error || `error ${msg.error_code}`;
        break;
      default:
        break;
    }
  }

  onClose(code) {
    if (this.state === 'idle') return;
    if (this.terminated || (this.state === 'stopping' && code === 1000)) {
      this.cleanup();
      return;
    }
    this.fail(describeClose(code, this.serverError));
  }

  async stop() {
    if (this.state !== 'live' && this.state !== 'starting') return;
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
      this.cleanup();
      return;
    }
    this.setState('stopping');
    if (this.source) this.source.disconnect();
    this.capture.port.postMessage('flush');
    await new Promise((r) => setTimeout(r, 60));     // let the last partial frame go out
    const done = new Promise((resolve) => { this.terminationWaiter = resolve; });
    this.ws.send(JSON.stringify({ type: 'Terminate' }));
    await Promise.race([done, new Promise((r) => setTimeout(r, TERMINATION_DEADLINE_MS))]);
    this.cleanup();
  }

  cleanup() {
    window.removeEventListener('offline', this.onOffline);
    this.terminationWaiter = null;
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.onclose = null;
      ws.onmessage = null;
      if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) ws.close(1000);
    }
    if (this.source) { try { this.source.disconnect(); } catch { /* already */ } }
    if (this.capture) this.capture.port.onmessage = null;
    if (this.stream) this.stream.getTracks().forEach((t) => t.stop());   // release the microphone
    if (this.audio) this.audio.close().catch(() => {});
    this.stream = this.audio = this.source = this.capture = this.mute = null;
    this.emit('level', 0);
    this.setState('idle');
  }
}
