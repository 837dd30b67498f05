// app.js: the page's controls and rendering on top of session.js.
import { Session } from './session.js';

const $ = (id) => document.getElementById(id);
const startButton = $('start');
const stopButton = $('stop');
const copyButton = $('copy');
const statusLine = $('status');
const errorLine = $('error');
const transcriptBox = $('transcript');

const session = new Session();

const STATUS = {
  idle: 'Ready. Press Start and allow the microphone.',
  starting: 'Starting: asking for the microphone and a session token…',
  live: 'Listening. Speak now; press Stop when you are done.',
  stopping: 'Finishing the session…',
};

function showError(message) {
  errorLine.textContent = message;
  errorLine.hidden = !message;
}

session.addEventListener('state', (e) => {
  const state = e.detail;
  document.body.dataset.state = state;
  if (!(state === 'idle' && statusLine.dataset.ended)) statusLine.textContent = STATUS[state];
  startButton.disabled = state !== 'idle';
  stopButton.disabled = !(state === 'live' || state === 'starting');
  if (state === 'idle' && document.activeElement === stopButton) startButton.focus();
  if (state === 'live') stopButton.focus();
});

session.addEventListener('error', (e) => {
  showError(e.detail);
  delete statusLine.dataset.ended;
});

session.addEventListener('level', (e) => { $('level').value = Math.min(1, e.detail * 4); });

session.addEventListener('begin', (e) => {
  $('session-id').textContent = e.detail.id;
  $('session-expires').textContent = e.detail.expiresAt ? e.detail.expiresAt.toLocaleTimeString() : '–';
});

session.addEventListener('termination', (e) => {
  const seconds = Number(e.detail.audioSeconds || 0).toFixed(1);
  $('session-audio').textContent = `${seconds} s`;
  statusLine.textContent = `Session ended: ${seconds} s of audio transcribed.`;
  statusLine.dataset.ended = '1';
});

session.addEventListener('transcript', (e) => {
  const turns = e.detail.ordered();
  transcriptBox.replaceChildren(...turns.filter((t) => t.text).map((t) => {
    const p = document.createElement('p');
    p.className = `turn ${t.final ? 'final' : 'partial'}${t.formatted ? ' formatted' : ''}`;
    p.dataset.turn = t.order;
    p.textContent = t.text;
    return p;
  }));
  if (!transcriptBox.childElementCount) {
    const p = document.createElement('p');
    p.className = 'placeholder';
    p.textContent = 'Your words will appear here.';
    transcriptBox.append(p);
  }
  copyButton.disabled = !e.detail.finalText();
  transcriptBox.scrollTop = transcriptBox.scrollHeight;
});

startButton.addEventListener('click', () => {
  showError('');
  delete statusLine.dataset.ended;
  $('session-id').textContent = '–';
  $('session-expires').textContent = '–';
  $('session-audio').textContent = '–';
  session.start();
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

window.addEventListener('online', () => { if (session.state === 'idle') statusLine.textContent = STATUS.idle; });
document.body.dataset.state = 'idle';
