// page.test.mjs: the real page, served by a real tokend minting from the token fake, in
// Debian's headless Chromium with a WAV file of speech as the microphone, streaming to the
// fake of AssemblyAI's WebSocket. Asserts what a person would see.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
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
let tokenFake, streaming, tokend, browser, baseUrl;
const children = [];

function startProcess(cmd, args, opts, ready) {
  const child = spawn(cmd, args, { ...opts, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  child.logged = '';
  child.stderr.on('data', (d) => { child.logged += d; });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${cmd} did not start:\n${child.logged}`)), 15000);
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      const m = ready.exec(line);
      if (m) { clearTimeout(timer); resolve({ child, port: Number(m[1]) }); }
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
  execFileSync('espeak-ng', ['-s', '150', '-w', raw, 'hello world, this is a test of live transcription with tokend']);
  execFileSync('sox', [raw, '-r', '48000', '-c', '1', '-b', '16', wav, 'pad', '0.3', '0.3']);

  tokenFake = await startProcess('python3', [path.join(SRC, 'tests/fakes/token_fake.py'), '--port', '0',
    '--key', KEY, '--secret', SECRET], {}, /^listening http:\/\/127\.0\.0\.1:(\d+)$/);
  streaming = await startStreamingFake({ tokenUpstream: `http://127.0.0.1:${tokenFake.port}`, secret: SECRET });
  const env = { ...process.env, ASSEMBLYAI_API_KEY: KEY, ASSEMBLYAI_STREAMING_URL: `http://127.0.0.1:${streaming.port}` };
  // The default script, with room for the many sessions this test starts from one address.
  const script = path.join(work, 'routes.lua');
  writeFileSync(script, readFileSync(path.join(SRC, 'scripts/routes.lua'), 'utf8')
    .replace(/local TOKENS_PER_MINUTE = \d+/, 'local TOKENS_PER_MINUTE = 1000')
    .replace(/local TOKEN_BURST = \d+/, 'local TOKEN_BURST = 1000'));
  tokend = await startProcess(BIN, ['--port', '0', '--workers', '1', '--script', script,
    '--public', path.join(SRC, 'public')], { cwd: work, env }, /^tokend listening on http:\/\/127\.0\.0\.1:(\d+)$/);
  baseUrl = `http://127.0.0.1:${tokend.port}/`;

  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--autoplay-policy=no-user-gesture-required',
      '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
      `--use-file-for-fake-audio-capture=${wav}`],
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

async function openPage(options = {}) {
  const context = await browser.newContext({ permissions: ['microphone'], viewport: { width: 900, height: 760 }, ...options });
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (err) => problems.push(String(err)));
  await page.goto(baseUrl);
  return { page, context, problems };
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
  assert.match(await partial.first().textContent(), /^hello/);
  // The finished turn, replaced by its formatted text.
  const final = page.locator('#transcript .turn.final.formatted');
  await final.waitFor({ timeout: 20000 });
  assert.equal(await final.textContent(), 'Hello world, this is tokend speaking.');
  assert.equal(await page.locator('#transcript .turn.partial').count(), 0);
  assert.match(await page.locator('#session-id').textContent(), /^[0-9a-f-]{36}$/);
  assert.ok(await page.locator('#level').evaluate((m) => m.value >= 0));
  assert.equal(await page.getByRole('button', { name: 'Copy transcript' }).isEnabled(), true);
  assert.equal(await page.locator('#transcript').getAttribute('aria-live'), 'polite');

  await page.getByRole('button', { name: 'Stop' }).click();
  await page.locator('#status', { hasText: 'Session ended' }).waitFor({ timeout: 5000 });
  assert.match(await page.locator('#status').textContent(), /Session ended: \d+\.\d s of audio/);
  assert.equal(await page.getByRole('button', { name: 'Start' }).isEnabled(), true);
  assert.equal(await page.locator('#error').isHidden(), true);
  await page.screenshot({ path: path.join(OUT, 'page-transcript.png'), fullPage: true });

  // What the fake streaming server saw: 16 kHz s16le, 50 ms frames, real-time pace, speech.
  const s = streaming.state.sessions.at(-1);
  assert.equal(s.sampleRate, 16000);
  assert.equal(s.encoding, 'pcm_s16le');
  assert.equal(s.formatTurns, true);
  assert.equal(s.maxFrameBytes, 1600, 'frames are 50 ms');
  assert.equal(s.minFrameBytes, 1600, 'the last frame too, padded to 50 ms');
  assert.ok(s.frames >= 20, `only ${s.frames} frames`);
  assert.ok(s.maxRms > 0.02, `the audio is silence (max RMS ${s.maxRms})`);
  assert.ok(s.maxAheadMs < 500, `audio ran ${s.maxAheadMs} ms ahead of real time`);
  assert.equal(s.terminated, true, 'Stop sent Terminate');
  assert.equal(s.closedWith, 1000);
  const released = await page.evaluate(() => document.body.dataset.state);
  assert.equal(released, 'idle');
  await page.getByRole('button', { name: 'Copy transcript' }).click();
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), 'Hello world, this is tokend speaking.');
  assert.deepEqual(problems, []);
  await context.close();
});

test('readable on a phone: nothing overflows sideways', async () => {
  const { page, context } = await openPage({ viewport: { width: 375, height: 700 }, isMobile: true, hasTouch: true });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the page is ${overflow}px wider than the phone`);
  const box = await page.getByRole('button', { name: 'Start' }).boundingBox();
  assert.ok(box.height >= 40, 'touch-sized buttons');
  await page.screenshot({ path: path.join(OUT, 'page-phone.png') });
  await context.close();
});

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

test('a dropped network is explained and the page stays usable', async () => {
  await post(streaming.port, '/__control', { mode: 'ok' });
  const { page, context } = await openPage();
  await page.getByRole('button', { name: 'Start' }).click();
  await page.locator('body[data-state="live"]').waitFor({ timeout: 10000 });
  await context.setOffline(true);
  await page.locator('#error').waitFor({ state: 'visible', timeout: 5000 });
  assert.match(await page.locator('#error').textContent(), /network connection was lost/);
  assert.equal(await page.evaluate(() => document.body.dataset.state), 'idle');
  await context.setOffline(false);
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

for (const [code, words] of [[1008, /refused the session token/], [3005, /had an error/], [3006, /could not understand/],
  [3007, /too fast or in chunks of the wrong size/], [3008, /maximum duration/], [3009, /Too many sessions/],
  [4999, /connection to the streaming service was lost \(code 4999\) \(forced by the test/]]) {
  test(`a ${code} close is explained in plain words`, async () => {
    await post(streaming.port, '/__control', { mode: `close-${code}` });
    try {
      const { page, context } = await openPage();
      await page.getByRole('button', { name: 'Start' }).click();
      const error = page.locator('#error');
      await error.waitFor({ state: 'visible', timeout: 10000 });
      assert.match(await error.textContent(), words);
      assert.equal(await page.getByRole('button', { name: 'Start' }).isEnabled(), true);
      assert.equal(await page.evaluate(() => document.body.dataset.state), 'idle');
      await context.close();
    } finally {
      await post(streaming.port, '/__control', { mode: 'ok' });
    }
  });
}

test('a reused token is refused with 1008 by the fake, like the real service', async () => {
  const res = await fetch(`${baseUrl}token`);
  const { token, websocket_url: wsUrl } = await res.json();
  const { WebSocket } = await import('ws');
  const codes = [];
  for (let i = 0; i < 2; i++) {
    const ws = new WebSocket(`${wsUrl}?sample_rate=16000&encoding=pcm_s16le&token=${token}`);
    codes.push(await new Promise((resolve) => {
      ws.on('message', (m) => { if (JSON.parse(m).type === 'Begin') ws.send(JSON.stringify({ type: 'Terminate' })); });
      ws.on('close', (c) => resolve(c));
    }));
  }
  assert.deepEqual(codes, [1000, 1008]);
});
