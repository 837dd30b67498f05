// app.js: the page's controls, options and rendering on top of session.js.
import { Session } from './session.js';
import { shortClock } from './transcript.js';

const $ = (id) => document.getElementById(id);
const startButton = $('start');
const stopButton = $('stop');
const copyButton = $('copy');
const exportButtons = [...document.querySelectorAll('button.export')];
const statusLine = $('status');
const errorLine = $('error');
const transcriptBox = $('transcript');
const form = $('options');
const STORE = 'tokend.options';

const session = new Session();

const STATUS = {
  idle: 'Ready. Press Start and allow the microphone.',
  starting: 'Starting: asking for the microphone and a session…',
  live: 'Listening. Speak now; press Stop when you are done.',
  reconnecting: 'Reconnecting: a new session continues this transcript…',
  stopping: 'Finishing the session…',
};

function showError(message) {
  errorLine.textContent = message;
  errorLine.hidden = !message;
}

// ---- options: what /config allows, remembered between visits ----

let config = null;

function remembered() {
  try { return JSON.parse(localStorage.getItem(STORE)) || {}; } catch { return {}; }
}

function remember() {
  const o = currentOptions();
  localStorage.setItem(STORE, JSON.stringify({ ...o, keyterms: $('keyterms').value }));
}

function currentOptions() {
  const model = $('speech-model').value || undefined;
  return {
    speechModel: model,
    speakerLabels: $('speaker-labels').checked && !$('speaker-labels').disabled,
    languageDetection: $('language-detection').checked && !$('language-detection').disabled,
    keyterms: $('keyterms').value.split(',').map((t) => t.trim()).filter(Boolean),
    turnPreset: $('turn-preset').value || undefined,
    region: (!$('region').hidden && $('region').value) || undefined,
    deviceId: $('microphone').value || undefined,
  };
}

// Language detection needs a model that detects languages.
function syncOptions() {
  const detects = config && (config.language_detection_models || []).includes($('speech-model').value);
  $('language-detection').disabled = !(config && config.language_detection && detects);
  $('speaker-labels').disabled = !(config && config.speaker_labels);
}

async function loadConfig() {
  try {
    const res = await fetch('/config', { headers: { Accept: 'application/json' } });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    config = await res.json();
    session.relayUrl = config.relay_url || null;     // the server relays: no tokens
  } catch {
    config = null;
    $('options-note').textContent = 'This server publishes no streaming options: the service defaults apply.';
    form.hidden = true;
    return;
  }
  const saved = remembered();
  const models = config.speech_models || [];
  $('speech-model').replaceChildren(...models.map((m) => new Option(m, m)));
  $('speech-model').value = models.includes(saved.speechModel) ? saved.speechModel : config.default_speech_model;
  const presets = config.turn_presets || [];
  for (const opt of [...$('turn-preset').options]) opt.hidden = opt.disabled = !presets.includes(opt.value);
  $('turn-preset').value = presets.includes(saved.turnPreset) ? saved.turnPreset : config.default_turn_preset;
  // Data zones, when the server offers some: the session streams where its token was minted.
  const regions = config.regions || [];
  for (const el of document.querySelectorAll('[data-region]')) el.hidden = !regions.length;
  $('region').replaceChildren(new Option('Default', ''), ...regions.map((r) => new Option(r.toUpperCase(), r)));
  $('region').value = regions.includes(saved.region) ? saved.region : (config.default_region || '');
  $('speaker-labels').checked = Boolean(saved.speakerLabels);
  $('language-detection').checked = Boolean(saved.languageDetection);
  $('keyterms').value = saved.keyterms || '';
  $('keyterms').disabled = !config.max_keyterms;
  $('options-note').textContent = config.max_keyterms
    ? `Up to ${config.max_keyterms} key terms of ${config.keyterm_max_length} characters. The server's policy decides these choices.`
    : "The server's policy decides these choices.";
  syncOptions();
}

// Microphones have names once the page may use one.
async function listMicrophones(selected) {
  if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) return;
  const devices = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === 'audioinput' && d.deviceId);
  const select = $('microphone');
  const keep = selected || select.value || remembered().deviceId || '';
  select.replaceChildren(new Option('Default microphone', ''),
    ...devices.filter((d) => d.deviceId !== 'default').map((d, i) => new Option(d.label || `Microphone ${i + 1}`, d.deviceId)));
  select.value = [...select.options].some((o) => o.value === keep) ? keep : '';
}

form.addEventListener('change', () => { syncOptions(); remember(); });
form.addEventListener('submit', (e) => e.preventDefault());

// ---- the session's events ----

session.addEventListener('state', (e) => {
  const state = e.detail;
  document.body.dataset.state = state;
  if (!(state === 'idle' && statusLine.dataset.ended) && !(state === 'reconnecting')) statusLine.textContent = STATUS[state];
  startButton.disabled = state !== 'idle';
  stopButton.disabled = !['live', 'starting', 'reconnecting'].includes(state);
  form.inert = state !== 'idle';       // options apply from the next Start
  if (state === 'idle' && document.activeElement === stopButton) startButton.focus();
  if (state === 'live' && document.activeElement === startButton) stopButton.focus();
});

session.addEventListener('error', (e) => {
  showError(e.detail);
  delete statusLine.dataset.ended;
});

session.addEventListener('reconnecting', (e) => {
  statusLine.textContent = e.detail.offline
    ? `${e.detail.why} The transcript continues once you are back online…`
    : `${e.detail.why} Reconnecting with a new session…`;
});

session.addEventListener('microphone', (e) => { listMicrophones(e.detail).catch(() => {}); });

session.addEventListener('level', (e) => { $('level').value = Math.min(1, e.detail * 4); });

session.addEventListener('begin', (e) => {
  $('session-id').textContent = e.detail.id;
  $('session-expires').textContent = e.detail.expiresAt ? e.detail.expiresAt.toLocaleTimeString() : '–';
});

session.addEventListener('termination', (e) => {
  const seconds = Number(e.detail.audioSeconds || 0).toFixed(1);
  $('session-audio').textContent = `${seconds} s`;
  if (session.state !== 'stopping' && session.state !== 'idle') return;
  statusLine.textContent = `Session ended: ${seconds} s of audio transcribed.`;
  statusLine.dataset.ended = '1';
});

session.addEventListener('timing', (e) => {
  const t = e.detail;
  const steps = [['token', 'token'], ['socket', 'socket open'], ['begin', 'Begin'], ['words', 'first words']];
  $('timings').textContent = steps.filter(([k]) => t[k] !== undefined).map(([k, name]) => `${name} ${t[k]} ms`).join(' · ');
  $('timings').dataset.token = t.token ?? '';
});

// Colours for speakers A, B, C…: a hue each, readable in light and dark.
function speakerHue(label) {
  const code = String(label).toUpperCase().charCodeAt(0) - 65;
  return ((code >= 0 ? code : 7) * 137) % 360;
}

function renderTurn(t) {
  const p = document.createElement('p');
  p.className = `turn ${t.final ? 'final' : 'partial'}${t.formatted ? ' formatted' : ''}`;
  p.dataset.turn = t.order;
  p.dataset.segment = t.segment;
  if (t.start !== null) {
    const time = document.createElement('time');
    time.className = 'when';
    time.textContent = shortClock(t.start);
    time.title = `${(t.start / 1000).toFixed(2)} s – ${(t.end / 1000).toFixed(2)} s`;
    p.append(time);
  }
  if (t.speaker) {
    const who = document.createElement('span');
    who.className = 'speaker';
    who.textContent = `Speaker ${t.speaker}`;
    who.style.setProperty('--hue', speakerHue(t.speaker));
    p.append(who);
    p.dataset.speaker = t.speaker;
  }
  if (t.language) {
    const lang = document.createElement('span');
    lang.className = 'language';
    lang.textContent = t.language;
    lang.title = `Language: ${t.language}`;
    p.append(lang);
    p.dataset.language = t.language;
  }
  const text = document.createElement('span');
  text.className = 'text';
  text.textContent = t.text;
  p.append(text);
  return p;
}

session.addEventListener('transcript', (e) => {
  const transcript = e.detail;
  const nodes = [];
  let segment = 0;
  for (const t of transcript.ordered().filter((x) => x.text)) {
    while (segment < t.segment) {
      segment += 1;
      const marker = document.createElement('p');
      marker.className = 'marker';
      marker.setAttribute('role', 'separator');
      marker.textContent = transcript.segments[segment].reason || 'New session';
      nodes.push(marker);
    }
    nodes.push(renderTurn(t));
  }
  if (!nodes.length) {
    const p = document.createElement('p');
    p.className = 'placeholder';
    p.textContent = 'Your words will appear here.';
    nodes.push(p);
  }
  transcriptBox.replaceChildren(...nodes);
  const has = Boolean(transcript.finalText());
  copyButton.disabled = !has;
  for (const b of exportButtons) b.disabled = !has;
  transcriptBox.scrollTop = transcriptBox.scrollHeight;
});

session.addEventListener('marker', () => session.emit('transcript', session.transcript));

// ---- controls ----

startButton.addEventListener('click', () => {
  showError('');
  delete statusLine.dataset.ended;
  $('session-id').textContent = '–';
  $('session-expires').textContent = '–';
  $('session-audio').textContent = '–';
  $('timings').textContent = 'Starting…';
  remember();
  session.start(currentOptions());
});

stopButton.addEventListener('click', () => session.stop());

copyButton.addEventListener('click', async () => {
  const text = session.transcript.finalText();
  try {
    await navigator.clipboard.writeText(text);
    statusLine.textContent = 'Transcript copied to the clipboard.';
  } catch {
    const area = document.createElement('textarea');
    area.value = text;
    document.body.append(area);
    area.select();
    const ok = document.execCommand('copy');
    area.remove();
    statusLine.textContent = ok ? 'Transcript copied to the clipboard.' : 'Copying is not allowed here; select the text instead.';
  }
});

const EXPORTS = {
  txt: ['text/plain', (t) => `${t.finalText()}\n`],
  srt: ['application/x-subrip', (t) => t.toSrt()],
  vtt: ['text/vtt', (t) => t.toVtt()],
  json: ['application/json', (t) => t.toJson()],
};

for (const button of exportButtons) {
  button.addEventListener('click', () => {
    const [type, make] = EXPORTS[button.dataset.format];
    const blob = new Blob([make(session.transcript)], { type: `${type};charset=utf-8` });
    const a = document.createElement('a');
    a.href = URL.createObjectURL(blob);
    a.download = `transcript-${new Date().toISOString().slice(0, 19).replace(/[:T]/g, '-')}.${button.dataset.format}`;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  });
}

window.addEventListener('online', () => { if (session.state === 'idle') statusLine.textContent = STATUS.idle; });
document.body.dataset.state = 'idle';
loadConfig();
listMicrophones().catch(() => {});
