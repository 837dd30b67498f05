// page.test.mjs: the real page, served by a real tokend minting from the token fake, in
// Debian's headless Chromium with a WAV file of speech as the microphone, streaming to the
// fake of AssemblyAI's WebSocket. Asserts what a person would see.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { appendFileSync, cpSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { startStreamingFake } from './fake-streaming.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const SRC = process.env.TOKEND_SOURCE_DIR || path.resolve(here, '../..');
const BIN = path.resolve(process.env.TOKEND_BIN || path.join(SRC, 'build', 'tokend'));
const OUT = process.env.TOKEND_TEST_TMP || path.join(SRC, 'build', 'test-tmp');
const KEY = 'canary-KEY-3f9a7c21d0e84b6f';
const SECRET = 'browser-test-secret';

mkdirSync(OUT, { recursive: true });
const work = mkdtempSync(path.join(OUT, 'browser-'));
let tokenFake, streaming, tokend, browser, baseUrl, chromiumArgs;
const children = [];
const AXE = createRequire(import.meta.url).resolve('axe-core/axe.min.js');
const SHOTS = process.env.TOKEND_SCREENSHOTS || OUT;     // docs/ when refreshing the README's images

function startProcess(cmd, args, opts, ready) {
  const child = spawn(cmd, args, { ...opts, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  child.logged = '';
  child.stderr.on('data', (d) => { child.logged += d; });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${cmd} did not start:\n${child.logged}`)), 15000);
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      const m = ready.exec(line);
      if (m) { clearTimeout(timer); resolve({ child, port: Number(m[1]), match: m }); }
    });
    child.on('error', (err) => reject(err));
    child.on('exit', (code) => reject(new Error(`${cmd} exited with ${code}:\n${child.logged}`)));
  });
}

async function post(port, urlPath, body) {
  const res = await fetch(`http://127.0.0.1:${port}${urlPath}`, { method: 'POST', body: JSON.stringify(body) });
  assert.equal(res.status, 200);
}

before(async () => {
  // The microphone: a sentence spoken by espeak-ng, at 48 kHz like most devices.
  const raw = path.join(work, 'speech-raw.wav');
  const wav = path.join(work, 'speech.wav');
  execFileSync('espeak-ng', ['-s', '150', '-w', raw,
    'hello world, this is a test of live transcription with tokend, and here comes a second sentence for it']);
  execFileSync('sox', [raw, '-r', '48000', '-c', '1', '-b', '16', wav, 'pad', '0.3', '0.3']);

  tokenFake = await startProcess('python3', [path.join(SRC, 'tests/fakes/token_fake.py'), '--port', '0',
    '--key', KEY, '--secret', SECRET], {}, /^listening http:\/\/127\.0\.0\.1:(\d+)$/);
  streaming = await startStreamingFake({ tokenUpstream: `http://127.0.0.1:${tokenFake.port}`, secret: SECRET, apiKey: KEY });
  // The default script, with room for the many sessions this test starts from one address
  // (its named values are overridden by variables of their names).
  const env = { ...process.env, ASSEMBLYAI_API_KEY: KEY, ASSEMBLYAI_STREAMING_URL: `http://127.0.0.1:${streaming.port}`,
    TOKENS_PER_MINUTE: '1000', TOKEN_BURST: '1000' };
  const script = path.join(SRC, 'scripts/routes.lua');
  tokend = await startProcess(BIN, ['--port', '0', '--workers', '1', '--script', script,
    '--public', path.join(SRC, 'public')], { cwd: work, env }, /^tokend listening on http:\/\/127\.0\.0\.1:(\d+)$/);
  baseUrl = `http://127.0.0.1:${tokend.port}/`;

  chromiumArgs = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--autoplay-policy=no-user-gesture-required',
    '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
    `--use-file-for-fake-audio-capture=${wav}`];
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: chromiumArgs,
  });
});

after(async () => {
  if (browser) await browser.close();
  if (streaming) await streaming.close();
  for (const c of children) c.kill('SIGTERM');
  if (tokend) {
    assert.ok(!tokend.child.logged.includes(KEY), 'the API key leaked into tokend\'s log');
  }
});

async function openPage(options = {}, url = baseUrl) {
  const context = await browser.newContext({ permissions: ['microphone'], viewport: { width: 900, height: 760 }, ...options });
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (err) => problems.push(String(err)));
  page.on('console', (m) => { if (m.type() === 'error') problems.push(m.text()); });
  await page.goto(url);
  await page.locator('#speech-model option').first().waitFor({ state: 'attached', timeout: 5000 });
  return { page, context, problems };
}

// What axe-core (pinned in package.json) finds serious or critical on the page as it is.
async function axeViolations(page) {
  await page.addScriptTag({ path: AXE });
  const result = await page.evaluate(() => window.axe.run(document, { resultTypes: ['violations'] }));
  return result.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical')
    .map((v) => `${v.id}: ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`);
}

function lastSessions(n) { return streaming.state.sessions.slice(-n); }

async function setOptions(page, { model, speakers, languages, keyterms }) {
  await page.locator('#options-panel summary').click();
  if (model) await page.getByLabel('Model').selectOption(model);
  if (speakers !== undefined) await page.getByLabel('Speaker labels').setChecked(speakers);
  if (languages !== undefined) await page.getByLabel('Language detection').setChecked(languages);
  if (keyterms !== undefined) await page.getByLabel('Key terms').fill(keyterms);
}

// Parses SubRip text into cues {start, end, text} (times in ms).
function parseSrt(text) {
  const ms = (t) => { const [h, m, rest] = t.split(':'); const [sec, milli] = rest.split(','); return ((+h * 60 + +m) * 60 + +sec) * 1000 + +milli; };
  return text.trim().split(/\n\n+/).map((block) => {
    const lines = block.split('\n');
    assert.match(lines[0], /^\d+$/);
    const m = /^(\d\d:\d\d:\d\d,\d{3}) --> (\d\d:\d\d:\d\d,\d{3})$/.exec(lines[1]);
    assert.ok(m, `a cue's times: ${lines[1]}`);
    return { start: ms(m[1]), end: ms(m[2]), text: lines.slice(2).join('\n') };
  });
}

async function download(page, format) {
  const [file] = await Promise.all([page.waitForEvent('download'),
    page.getByRole('button', { name: new RegExp(`Download \\.${format}`) }).click()]);
  return readFileSync(await file.path(), 'utf8');
}


test('speech becomes tentative, then final text; Stop ends the session', async () => {
  await post(streaming.port, '/__control', { mode: 'ok' });
  const { page, context, problems } = await openPage({ permissions: ['microphone', 'clipboard-read', 'clipboard-write'] });
  await page.keyboard.press('Tab');                      // keyboard only: Start is the first control
  assert.equal(await page.evaluate(() => document.activeElement.id), 'start');
  await page.keyboard.press('Enter');
  // The turn in progress, styled as tentative.
  const partial = page.locator('#transcript .turn.partial');
  await partial.first().waitFor({ timeout: 15000 });
  assert.match(await partial.first().locator('.text').textContent(), /^hello/);
  // The finished turn, replaced by its formatted text, with its time.
  const final = page.locator('#transcript .turn.final.formatted').first();
  await final.waitFor({ timeout: 20000 });
  assert.equal(await final.locator('.text').textContent(), 'Hello world, this is tokend speaking.');
  assert.match(await final.locator('time.when').textContent(), /^0:0\d$/);
  assert.equal(await final.locator('.speaker').count(), 0, 'no speakers without speaker labels');
  assert.match(await page.locator('#session-id').textContent(), /^[0-9a-f-]{36}$/);
  assert.ok(await page.locator('#level').evaluate((m) => m.value >= 0));
  assert.equal(await page.getByRole('button', { name: 'Copy transcript' }).isEnabled(), true);
  assert.equal(await page.locator('#transcript').getAttribute('aria-live'), 'polite');
  // The steps of starting, timed.
  await page.locator('#timings', { hasText: 'first words' }).waitFor({ state: 'attached', timeout: 5000 });
  assert.match(await page.locator('#timings').textContent(), /^token \d+ ms · socket open \d+ ms · Begin \d+ ms · first words \d+ ms$/);

  await page.getByRole('button', { name: 'Stop' }).click();
  await page.locator('#status', { hasText: 'Session ended' }).waitFor({ timeout: 5000 });
  assert.match(await page.locator('#status').textContent(), /Session ended: \d+\.\d s of audio/);
  assert.equal(await page.getByRole('button', { name: 'Start' }).isEnabled(), true);
  assert.equal(await page.locator('#error').isHidden(), true);

  // What the fake streaming server saw: 16 kHz s16le, 50 ms frames, real-time pace, speech,
  // and the server's default options from the websocket_url /token gave.
  const s = lastSessions(1)[0];
  assert.equal(s.sampleRate, 16000);
  assert.equal(s.encoding, 'pcm_s16le');
  assert.equal(s.formatTurns, true);
  assert.equal(s.speechModel, 'universal-streaming-english');
  assert.deepEqual(s.turnSettings, ['0.4', '400', '1280'], 'the balanced end-of-turn preset');
  assert.equal(s.maxFrameBytes, 1600, 'frames are 50 ms');
  assert.equal(s.minFrameBytes, 1600, 'the last frame too, padded to 50 ms');
  assert.ok(s.frames >= 20, `only ${s.frames} frames`);
  assert.ok(s.maxRms > 0.02, `the audio is silence (max RMS ${s.maxRms})`);
  assert.ok(s.maxAheadMs < 500, `audio ran ${s.maxAheadMs} ms ahead of real time`);
  assert.equal(s.terminated, true, 'Stop sent Terminate');
  assert.equal(s.closedWith, 1000);
  assert.equal(await page.evaluate(() => document.body.dataset.state), 'idle');
  await page.getByRole('button', { name: 'Copy transcript' }).click();
  assert.match(await page.evaluate(() => navigator.clipboard.readText()), /^Hello world, this is tokend speaking\./);
  // The microphones have names now that the page may use one.
  assert.ok(await page.locator('#microphone option').count() >= 2, 'the fake microphone is offered');
  assert.deepEqual(problems, []);
  await context.close();
});

test('options reach the streaming service; speakers, languages and times are shown; exports', async () => {
  await post(streaming.port, '/__control', { mode: 'ok' });
  const { page, context, problems } = await openPage({ acceptDownloads: true });
  await setOptions(page, { model: 'universal-streaming-multilingual', speakers: true, languages: true,
    keyterms: 'tokend, Assembly AI, a/b "quoted"' });
  await page.getByRole('button', { name: 'Start' }).click();
  const second = page.locator('#transcript .turn.final.formatted[data-turn="1"]');
  await second.waitFor({ timeout: 25000 });
  const first = page.locator('#transcript .turn.final.formatted[data-turn="0"]');
  assert.deepEqual([await first.locator('.speaker').textContent(), await second.locator('.speaker').textContent()],
    ['Speaker A', 'Speaker B']);
  assert.deepEqual([await first.getAttribute('data-language'), await second.getAttribute('data-language')], ['en', 'es']);
  assert.equal(await second.locator('.text').textContent(), 'Y ahora en español.');
  const colours = await page.locator('#transcript .speaker').evaluateAll((els) => els.map((e) => getComputedStyle(e).backgroundColor));
  assert.notEqual(colours[0], colours[colours.length - 1], 'each speaker has a colour');
  assert.match(await second.locator('time.when').getAttribute('title'), /^\d+\.\d\d s – \d+\.\d\d s$/);
  const s = lastSessions(1)[0];
  assert.equal(s.speechModel, 'universal-streaming-multilingual');
  assert.equal(s.speakerLabels, true);
  assert.equal(s.languageDetection, true);
  assert.deepEqual(s.keyterms, ['tokend', 'Assembly AI', 'a/b "quoted"'], 'key terms as a JSON array, as the API wants');
  await page.getByRole('button', { name: 'Stop' }).click();
  await page.locator('body[data-state="idle"]').waitFor({ timeout: 5000 });

  const srt = parseSrt(await download(page, 'srt'));
  assert.deepEqual(srt.map((c) => c.text), ['Speaker A: Hello world, this is tokend speaking.', 'Speaker B: Y ahora en español.']);
  assert.ok(srt[0].start < srt[0].end && srt[0].end <= srt[1].start, JSON.stringify(srt));
  const vtt = await download(page, 'vtt');
  assert.match(vtt, /^WEBVTT\n\n00:00:\d\d\.\d{3} --> 00:00:\d\d\.\d{3}\nSpeaker A: Hello world/);
  const json = JSON.parse(await download(page, 'json'));
  assert.deepEqual(json.segments[0].turns.map((t) => t.language_code), ['en', 'es']);
  assert.equal(json.segments[0].turns[1].words[0].speaker_label, 'B');
  assert.equal(await download(page, 'txt'), 'Speaker A: Hello world, this is tokend speaking.\nSpeaker B: Y ahora en español.\n');

  // Remembered for the next visit.
  await page.reload();
  await page.locator('#speech-model option').first().waitFor({ state: 'attached' });
  assert.equal(await page.locator('#speech-model').inputValue(), 'universal-streaming-multilingual');
  assert.equal(await page.locator('#speaker-labels').isChecked(), true);
  assert.equal(await page.locator('#keyterms').inputValue(), 'tokend, Assembly AI, a/b "quoted"');
  // Language detection is for models that detect languages.
  await setOptions(page, { model: 'universal-streaming-english' });
  assert.equal(await page.locator('#language-detection').isDisabled(), true);
  assert.deepEqual(problems, []);
  await context.close();
});

test('the server decides: what it does not allow gets its 400 message on the page', async () => {
  const config = await (await fetch(`${baseUrl}config`)).json();
  assert.deepEqual(config.speech_models, ['universal-streaming-english', 'universal-streaming-multilingual', 'u3-rt-pro']);
  const { page, context } = await openPage();
  await page.evaluate(() => {     // a page that offers more than /config says
    const select = document.getElementById('speech-model');
    select.append(new Option('whisper-large', 'whisper-large'));
    select.value = 'whisper-large';
  });
  await page.getByRole('button', { name: 'Start' }).click();
  await page.locator('#error').waitFor({ state: 'visible', timeout: 10000 });
  assert.equal(await page.locator('#error').textContent(),
    'Could not get a streaming token: speech_model must be one of universal-streaming-english, universal-streaming-multilingual, u3-rt-pro');
  assert.equal(await page.getByRole('button', { name: 'Start' }).isEnabled(), true);
  await context.close();
});

for (const [mode, marker] of [
  ['drop-after-turn', /Reconnected: The connection closed \(code 1006\)/],
  ['error-3005-after-turn', /Reconnected: The service said: “Internal error: the session was cancelled”/],
  ['short-session', /Reconnected: the session neared its time limit/],
]) {
  test(`${mode}: a new session with a new token continues the same transcript`, async () => {
    await post(streaming.port, '/__control', { mode });
    const before = streaming.state.sessions.length;
    const { page, context, problems } = await openPage();
    await page.getByRole('button', { name: 'Start' }).click();
    const mark = page.locator('#transcript .marker');
    await mark.waitFor({ timeout: 20000 });
    assert.match(await mark.textContent(), marker);
    // The next session's words come after the marker, in the same transcript.
    await page.locator('#transcript .turn[data-segment="1"]').first().waitFor({ timeout: 20000 });
    assert.equal(await page.locator('#transcript .turn[data-segment="0"].final').count() >= 1, true);
    const [a, b] = streaming.state.sessions.slice(before, before + 2);
    assert.ok(a && b, 'two sessions');
    assert.notEqual(a.token, b.token, 'a token is never reused');
    assert.equal(await page.evaluate(() => document.body.dataset.state), 'live');
    await page.getByRole('button', { name: 'Stop' }).click();
    await page.locator('body[data-state="idle"]').waitFor({ timeout: 5000 });
    assert.equal(await page.locator('#error').isHidden(), true);
    assert.deepEqual(problems.filter((p) => !/WebSocket/.test(p)), []);
    await context.close();
  });
}

test('a network that goes away: the transcript continues once it is back', async () => {
  await post(streaming.port, '/__control', { mode: 'ok' });
  const { page, context } = await openPage();
  await page.getByRole('button', { name: 'Start' }).click();
  await page.locator('body[data-state="live"]').waitFor({ timeout: 10000 });
  await context.setOffline(true);
  await page.locator('#status', { hasText: 'once you are back online' }).waitFor({ timeout: 5000 });
  assert.equal(await page.evaluate(() => document.body.dataset.state), 'reconnecting');
  await context.setOffline(false);
  await page.locator('#transcript .marker', { hasText: 'network connection was lost' }).waitFor({ timeout: 10000 });
  await page.locator('body[data-state="live"]').waitFor({ timeout: 10000 });
  await page.getByRole('button', { name: 'Stop' }).click();
  await page.locator('body[data-state="idle"]').waitFor({ timeout: 5000 });
  await context.close();
});

test('a failing /token shows the server\'s error and the page stays usable', async () => {
  await post(tokenFake.port, '/__control', { fault: '401' });
  try {
    const { page, context } = await openPage();
    await page.getByRole('button', { name: 'Start' }).click();
    const error = page.locator('#error');
    await error.waitFor({ state: 'visible', timeout: 10000 });
    assert.equal(await error.textContent(),
      'Could not get a streaming token: could not get a streaming token from AssemblyAI');
    assert.equal(await page.getByRole('button', { name: 'Start' }).isEnabled(), true);
    await context.close();
  } finally {
    await post(tokenFake.port, '/__control', { fault: 'ok' });
  }
});

for (const [code, words] of [[1008, /refused the session/], [3005, /had an error.*“forced by the test/],
  [3006, /could not understand/], [3007, /too fast or in chunks of the wrong size/],
  [3008, /maximum duration/], [3009, /Too many sessions/],
  [4999, /connection to the streaming service was lost \(code 4999\)\. The service said: “forced by the test/]]) {
  test(`a ${code} close is explained in plain words`, async () => {
    await post(streaming.port, '/__control', { mode: `close-${code}` });
    try {
      const { page, context } = await openPage();
      await page.getByRole('button', { name: 'Start' }).click();
      const error = page.locator('#error');
      await error.waitFor({ state: 'visible', timeout: 15000 });     // 3005, 3008: after three new sessions
      assert.match(await error.textContent(), words);
      assert.equal(await page.getByRole('button', { name: 'Start' }).isEnabled(), true);
      assert.equal(await page.evaluate(() => document.body.dataset.state), 'idle');
      await context.close();
    } finally {
      await post(streaming.port, '/__control', { mode: 'ok' });
    }
  });
}

for (const [name, words] of [['NotAllowedError', /Microphone access was denied/], ['NotFoundError', /No microphone was found/]]) {
  test(`microphone failure ${name} is explained`, async () => {
    const { page, context } = await openPage();
    await page.evaluate((errName) => {
      navigator.mediaDevices.getUserMedia = () => Promise.reject(new DOMException('test', errName));
    }, name);
    await page.getByRole('button', { name: 'Start' }).click();
    await page.locator('#error').waitFor({ state: 'visible', timeout: 5000 });
    assert.match(await page.locator('#error').textContent(), words);
    assert.equal(await page.getByRole('button', { name: 'Start' }).isEnabled(), true);
    await context.close();
  });
}

test('a reused token is refused with 1008 by the fake, like the real service', async () => {
  const res = await fetch(`${baseUrl}token`);
  const { token, websocket_url: wsUrl } = await res.json();
  const { WebSocket } = await import('ws');
  const codes = [];
  for (let i = 0; i < 2; i++) {
    const ws = new WebSocket(`${wsUrl}&sample_rate=16000&encoding=pcm_s16le&token=${token}`);
    codes.push(await new Promise((resolve) => {
      ws.on('message', (m) => { if (JSON.parse(m).type === 'Begin') ws.send(JSON.stringify({ type: 'Terminate' })); });
      ws.on('close', (c) => resolve(c));
    }));
  }
  assert.deepEqual(codes, [1000, 1008]);
});

// What the server did, not how fast: a pooled token is counted as taken from the pool.
async function poolMetric(port, name) {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const m = new RegExp(`^${name}\\{pool="token"\\} (\\d+)`, 'm').exec(text);
  return m ? Number(m[1]) : NaN;
}

test('with a token pool, the page gets its token from the pool, not from a 300 ms upstream', async () => {
  await post(tokenFake.port, '/__control', { latency_ms: 300 });
  const env = { ...process.env, ASSEMBLYAI_API_KEY: KEY, ASSEMBLYAI_STREAMING_URL: `http://127.0.0.1:${streaming.port}`,
    TOKENS_PER_MINUTE: '1000', TOKEN_BURST: '1000', POOL_SIZE: '2' };
  const pooled = await startProcess(BIN, ['--port', '0', '--workers', '1', '--script', path.join(SRC, 'scripts/routes.lua'),
    '--public', path.join(SRC, 'public')], { cwd: work, env }, /^tokend listening on http:\/\/127\.0\.0\.1:(\d+)$/);
  try {
    for (let i = 0; i < 300 && !(await poolMetric(pooled.port, 'tokend_pool_ready') >= 1); i++) {
      await new Promise((r) => setTimeout(r, 50));      // the pool fills (300 ms a token)
    }
    const { page, context } = await openPage({}, `http://127.0.0.1:${pooled.port}/`);
    await page.locator('#timings-panel summary').click();
    await page.getByRole('button', { name: 'Start' }).click();
    await page.locator('#timings', { hasText: 'Begin' }).waitFor({ timeout: 20000 });
    assert.equal(await poolMetric(pooled.port, 'tokend_pool_taken_total'), 1, 'the token came from the pool');
    assert.equal(await poolMetric(pooled.port, 'tokend_pool_minted_on_demand_total'), 0, 'none was minted on demand');
    assert.match(pooled.child.logged, /audit .*outcome=pooled/, 'the audit line says so');
    await page.getByRole('button', { name: 'Stop' }).click();
    await context.close();
    // Without the pool, the same step waits for the upstream (a bound a slow machine cannot break).
    const { page: slow, context: c2 } = await openPage();
    await slow.getByRole('button', { name: 'Start' }).click();
    await slow.locator('#timings', { hasText: 'Begin' }).waitFor({ state: 'attached', timeout: 20000 });
    assert.ok(Number(await slow.locator('#timings').getAttribute('data-token')) >= 300);
    await slow.getByRole('button', { name: 'Stop' }).click();
    await c2.close();
  } finally {
    pooled.child.kill('SIGTERM');
    await post(tokenFake.port, '/__control', { latency_ms: 0 });
  }
});

test('when the server relays, the page streams through it with the same steps and shows words', async () => {
  await post(streaming.port, '/__control', { mode: 'ok' });
  const env = { ...process.env, ASSEMBLYAI_API_KEY: KEY, ASSEMBLYAI_STREAMING_URL: `http://127.0.0.1:${streaming.port}`,
    TOKENS_PER_MINUTE: '1000', TOKEN_BURST: '1000', RELAY: 'true', SPEECH_MODELS: 'universal-streaming-english' };
  const relay = await startProcess(BIN, ['--port', '0', '--workers', '1', '--script', path.join(SRC, 'scripts/routes.lua'),
    '--public', path.join(SRC, 'public')], { cwd: work, env }, /^tokend listening on http:\/\/127\.0\.0\.1:(\d+)$/);
  try {
    const before = streaming.state.sessions.length;
    const { page, context, problems } = await openPage({}, `http://127.0.0.1:${relay.port}/`);
    await page.locator('#timings-panel summary').click();
    await page.getByRole('button', { name: 'Start' }).click();
    const final = page.locator('#transcript .turn.final.formatted').first();
    await final.waitFor({ timeout: 20000 });
    assert.equal(await final.locator('.text').textContent(), 'Hello world, this is tokend speaking.');
    assert.match(await page.locator('#timings').textContent(), /^socket open \d+ ms · Begin \d+ ms · first words \d+ ms$/,
      'no token step');
    await page.getByRole('button', { name: 'Stop' }).click();
    await page.locator('#status', { hasText: 'Session ended' }).waitFor({ timeout: 5000 });
    const s = streaming.state.sessions.slice(before)[0];
    assert.equal(s.auth, 'key', 'the relay streamed with the server\'s key');
    assert.equal(s.token, null, 'no token was needed');
    assert.match(s.userAgent, /^tokend\//);
    assert.equal(s.speechModel, 'universal-streaming-english');
    assert.deepEqual(s.turnSettings, ['0.4', '400', '1280'], 'the policy\'s options');
    assert.equal(s.sampleRate, 16000);
    assert.equal(s.maxFrameBytes, 1600, "50 ms frames");
    assert.ok(s.maxAheadMs < 500, `audio ran ${s.maxAheadMs} ms ahead of real time`);
    assert.equal(s.terminated, true, 'Stop sent Terminate through the relay');
    assert.equal(s.closedWith, 1000);
    assert.equal(await page.evaluate(() => performance.getEntriesByType('resource').some((e) => e.name.includes('/token'))),
      false, 'the page asked for no token');
    assert.match(relay.child.logged, /audit relay event=relay_session .*cause=terminated code=1000/);
    assert.deepEqual(problems, []);
    await context.close();

    // The same reconnection: the upstream drops, the relay closes 1011 and says why, and a
    // new session through the relay continues the transcript.
    await post(streaming.port, '/__control', { mode: 'drop-after-turn' });
    const again = streaming.state.sessions.length;
    const second = await openPage({}, `http://127.0.0.1:${relay.port}/`);
    await second.page.getByRole('button', { name: 'Start' }).click();
    const mark = second.page.locator('#transcript .marker');
    await mark.waitFor({ timeout: 20000 });
    assert.match(await mark.textContent(), /Reconnected: The service said: “the connection to the streaming service was lost”/);
    await second.page.locator('#transcript .turn[data-segment="1"]').first().waitFor({ timeout: 20000 });
    assert.equal(streaming.state.sessions.slice(again).every((x) => x.auth === 'key'), true);
    await second.page.getByRole('button', { name: 'Stop' }).click();
    await second.page.locator('body[data-state="idle"]').waitFor({ timeout: 5000 });
    assert.equal(await second.page.locator('#error').isHidden(), true);
    await second.context.close();
  } finally {
    relay.child.kill('SIGTERM');
    await post(streaming.port, '/__control', { mode: 'ok' });
  }
});

test('a region is offered only when the policy offers data zones, and the session streams there', async () => {
  const plain = await openPage();
  assert.equal(await plain.page.locator('#region').isHidden(), true, 'no zones: no choice');
  await plain.context.close();
  // The streaming fake stands for the EU zone too: tokens minted through it, sessions to it.
  const env = { ...process.env, ASSEMBLYAI_API_KEY: KEY, ASSEMBLYAI_STREAMING_URL: `http://127.0.0.1:${tokenFake.port}`,
    ASSEMBLYAI_REGION_URLS: `eu=http://127.0.0.1:${streaming.port}`, REGIONS: 'eu',
    TOKENS_PER_MINUTE: '1000', TOKEN_BURST: '1000' };
  const zoned = await startProcess(BIN, ['--port', '0', '--workers', '1', '--script', path.join(SRC, 'scripts/routes.lua'),
    '--public', path.join(SRC, 'public')], { cwd: work, env }, /^tokend listening on http:\/\/127\.0\.0\.1:(\d+)$/);
  try {
    await post(streaming.port, '/__control', { mode: 'ok' });
    const { page, context, problems } = await openPage({}, `http://127.0.0.1:${zoned.port}/`);
    const asked = [];
    page.on('request', (r) => { if (r.url().includes('/token')) asked.push(new URL(r.url()).searchParams.get('region')); });
    await page.locator('#options-panel summary').click();
    assert.equal(await page.getByLabel('Region').isVisible(), true);
    await page.getByLabel('Region').selectOption('eu');
    const before = streaming.state.sessions.length;
    await page.getByRole('button', { name: 'Start' }).click();
    await page.locator('body[data-state="live"]').waitFor({ timeout: 20000 });
    assert.deepEqual(asked, ['eu']);
    assert.equal(streaming.state.sessions.length, before + 1, 'the session opened on the zone\'s socket');
    await page.getByRole('button', { name: 'Stop' }).click();
    await page.locator('body[data-state="idle"]').waitFor({ timeout: 5000 });
    assert.deepEqual(problems, []);
    await context.close();
  } finally {
    zoned.child.kill('SIGTERM');
  }
});

test('accessible and at home in light, dark and on a phone', async () => {
  await post(streaming.port, '/__control', { mode: 'ok' });
  for (const [name, options] of [
    ['desktop-light', { colorScheme: 'light' }],
    ['desktop-dark', { colorScheme: 'dark' }],
    ['phone', { viewport: { width: 375, height: 740 }, isMobile: true, hasTouch: true, colorScheme: 'light' }],
  ]) {
    options.bypassCSP = true;       // to inject axe-core; the page's own policy stays tested elsewhere
    const { page, context, problems } = await openPage(options);
    await setOptions(page, { model: 'universal-streaming-multilingual', speakers: true, languages: true });
    await page.getByRole('button', { name: 'Start' }).click();
    await page.locator('#transcript .turn.final[data-turn="1"]').waitFor({ timeout: 25000 });
    await page.getByRole('button', { name: 'Stop' }).click();
    await page.locator('body[data-state="idle"]').waitFor({ timeout: 5000 });
    assert.deepEqual(await axeViolations(page), [], `${name}: axe finds no serious or critical violation`);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `${name}: the page is ${overflow}px wider than the window`);
    if (name === 'phone') {
      const box = await page.getByRole('button', { name: 'Start' }).boundingBox();
      assert.ok(box.height >= 40, 'touch-sized buttons');
    }
    await page.screenshot({ path: path.join(SHOTS, `screenshot-${name}.png`), fullPage: true });
    assert.deepEqual(problems, []);
    await context.close();
  }
});

// ---- the development server (tokend --dev) ----

// tokend --dev on a copy of the page, its CA made in a throwaway data folder; resolves to
// {child, port, tlsPort, site, dataHome}.
async function startDev(extraArgs = []) {
  const dir = mkdtempSync(path.join(work, 'dev-'));
  const site = path.join(dir, 'site');
  cpSync(path.join(SRC, 'public'), site, { recursive: true });
  const env = { ...process.env, ASSEMBLYAI_API_KEY: KEY, ASSEMBLYAI_STREAMING_URL: `http://127.0.0.1:${streaming.port}`,
    TOKENS_PER_MINUTE: '1000', TOKEN_BURST: '1000', XDG_DATA_HOME: path.join(dir, 'data') };
  const dev = await startProcess(BIN, ['--dev', '--port', '0', '--workers', '1', '--script',
    path.join(SRC, 'scripts/routes.lua'), '--public', site, ...extraArgs], { cwd: dir, env },
  /^tokend listening on http:\/\/[0-9.]+:(\d+) and https:\/\/[0-9.]+:(\d+)$/);
  return { ...dev, tlsPort: Number(dev.match[2]), site, dir, ca: path.join(dir, 'data', 'tokend', 'ca.crt') };
}

test('--dev: over HTTPS at a name that is not loopback, trusting only the development CA, the page is a secure context '
  + 'and streams; over plain HTTP at that name it is not', async () => {
  await post(streaming.port, '/__control', { mode: 'ok' });
  const dev = await startDev(['--allowed-hosts', 'devbox.test']);
  // A browser whose only trust in the CA comes from its NSS store (Chromium on Linux), in a
  // home of its own, that resolves devbox.test to this machine as a LAN name would.
  const home = path.join(dev.dir, 'home');
  const nssdb = `sql:${path.join(home, '.pki', 'nssdb')}`;
  mkdirSync(path.join(home, '.pki', 'nssdb'), { recursive: true });
  execFileSync('certutil', ['-d', nssdb, '-N', '--empty-password']);
  execFileSync('certutil', ['-d', nssdb, '-A', '-t', 'C,,', '-n', 'tokend development CA', '-i', dev.ca]);
  const lan = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true,
    env: { ...process.env, HOME: home }, args: [...chromiumArgs, '--host-resolver-rules=MAP devbox.test 127.0.0.1'],
  });
  try {
    const context = await lan.newContext({ permissions: ['microphone'] });      // certificate errors are not ignored
    const page = await context.newPage();
    const problems = [];
    page.on('pageerror', (err) => problems.push(String(err)));
    page.on('console', (m) => { if (m.type() === 'error') problems.push(m.text()); });
    const response = await page.goto(`https://devbox.test:${dev.tlsPort}/`);
    assert.equal(response.status(), 200);
    assert.equal(await page.evaluate(() => window.isSecureContext), true);
    assert.equal(await page.evaluate(() => location.protocol + typeof navigator.mediaDevices), 'https:object');
    await page.getByRole('button', { name: 'Start' }).click();
    const final = page.locator('#transcript .turn.final.formatted').first();
    await final.waitFor({ timeout: 20000 });
    assert.equal(await final.locator('.text').textContent(), 'Hello world, this is tokend speaking.');
    await page.getByRole('button', { name: 'Stop' }).click();
    await page.locator('#status', { hasText: 'Session ended' }).waitFor({ timeout: 5000 });
    assert.ok(lastSessions(1)[0].maxRms > 0.02, 'the fake microphone was heard');
    assert.deepEqual(problems, []);

    // The same name over plain HTTP: no secure context, no microphone (the blank Start button).
    const plain = await context.newPage();
    await plain.goto(`http://devbox.test:${dev.port}/`);
    assert.equal(await plain.evaluate(() => window.isSecureContext), false);
    assert.equal(await plain.evaluate(() => typeof navigator.mediaDevices), 'undefined');
    await context.close();
  } finally {
    await lan.close();
    dev.child.kill('SIGTERM');
  }
});

test('--dev: editing a file reloads the open pages, a style sheet is swapped in place', async () => {
  const dev = await startDev(['--host', '127.0.0.1']);
  try {
    const context = await browser.newContext();
    const pages = [await context.newPage(), await context.newPage()];    // one holds the stream, both reload
    for (const page of pages) {
      await page.goto(`http://127.0.0.1:${dev.port}/`);
      await page.waitForFunction(() => performance.getEntriesByType('resource').some((e) => e.name.includes('/__tokend/livereload')));
      await page.evaluate(() => { window.tokendMark = 'before'; });
    }
    // A style sheet: swapped without a reload.
    appendFileSync(path.join(dev.site, 'style.css'), '\nbody { outline: 3px solid rgb(1, 2, 3); }\n');
    await pages[0].waitForFunction(() => getComputedStyle(document.body).outlineColor === 'rgb(1, 2, 3)', null,
      { timeout: 5000 });
    assert.equal(await pages[0].evaluate(() => window.tokendMark), 'before', 'the page was not reloaded for CSS');
    // A page edited: every open page reloads.
    const started = Date.now();
    const index = path.join(dev.site, 'index.html');
    writeFileSync(index, readFileSync(index, 'utf8').replace('</main>', '<p id="edited">edited</p></main>'));
    for (const page of pages) await page.waitForFunction(() => window.tokendMark === undefined, null, { timeout: 5000 });
    const took = Date.now() - started;
    console.log(`# the edit reloaded both pages in ${took} ms`);
    assert.ok(took < 5000);
    for (const page of pages) assert.equal(await page.locator('#edited').textContent(), 'edited');
    await context.close();
  } finally {
    dev.child.kill('SIGTERM');
  }
});
