// transcript.js: the turns of one transcript across sessions (a reconnect starts a new
// segment), and its exports: text, SubRip (.srt), WebVTT (.vtt) and JSON.

// One turn as shown: text, whether it is final, who spoke, in which language, and when
// (milliseconds from the start of the transcript, from its words' timings).
function turnFrom(msg, prev, segment) {
  const words = Array.isArray(msg.words) ? msg.words : [];
  const times = words.filter((w) => Number.isFinite(w.start) && Number.isFinite(w.end));
  return {
    key: `${segment.index}:${msg.turn_order}`,
    segment: segment.index,
    order: msg.turn_order,
    text: msg.transcript || '',
    final: Boolean(msg.end_of_turn) || Boolean(prev && prev.final),
    formatted: Boolean(msg.turn_is_formatted && msg.end_of_turn),
    speaker: msg.speaker_label || (prev && prev.speaker) || null,
    language: msg.language_code || (prev && prev.language) || null,
    start: times.length ? segment.offsetMs + times[0].start : (prev ? prev.start : null),
    end: times.length ? segment.offsetMs + times[times.length - 1].end : (prev ? prev.end : null),
    message: msg,
  };
}

export class Transcript {
  constructor() { this.clear(); }

  clear() {
    this.turns = new Map();
    this.segments = [];
    this.startedAt = null;
  }

  // A new session's turns start here: after a reconnect, their times continue from the
  // wall-clock time since the first session began.
  newSegment(reason) {
    const now = Date.now();
    if (this.startedAt === null) this.startedAt = now;
    const segment = { index: this.segments.length, reason, offsetMs: now - this.startedAt };
    this.segments.push(segment);
    return segment;
  }

  // Applies a Turn message of a segment (the latest when not given). A turn grows until
  // end_of_turn; with format_turns a formatted copy follows and replaces it (formatting
  // is never undone).
  apply(msg, segment = this.segments[this.segments.length - 1] || this.newSegment(null)) {
    const key = `${segment.index}:${msg.turn_order}`;
    const prev = this.turns.get(key);
    if (prev && prev.formatted && !msg.turn_is_formatted) return;
    this.turns.set(key, turnFrom(msg, prev, segment));
  }

  ordered() {
    return [...this.turns.values()].sort((a, b) => a.segment - b.segment || a.order - b.order);
  }

  finals() { return this.ordered().filter((t) => t.final && t.text); }

  finalText() {
    return this.finals().map((t) => (t.speaker ? `Speaker ${t.speaker}: ${t.text}` : t.text)).join('\n');
  }

  // Cues for subtitles: the final turns with times, each at least a moment long.
  cues() {
    return this.finals().filter((t) => t.start !== null).map((t) => ({
      start: t.start, end: Math.max(t.end ?? t.start, t.start + 500),
      text: t.speaker ? `Speaker ${t.speaker}: ${t.text}` : t.text,
    }));
  }

  toSrt() {
    return this.cues().map((c, i) => `${i + 1}\n${clock(c.start, ',')} --> ${clock(c.end, ',')}\n${c.text}\n`).join('\n');
  }

  toVtt() {
    return `WEBVTT\n\n${this.cues().map((c) => `${clock(c.start, '.')} --> ${clock(c.end, '.')}\n${c.text}\n`).join('\n')}`;
  }

  // The turns as the streaming service sent them (their last version), by segment.
  toJson() {
    return JSON.stringify({
      segments: this.segments.map((s) => ({
        reason: s.reason, offset_ms: s.offsetMs,
        turns: this.finals().filter((t) => t.segment === s.index).map((t) => t.message),
      })),
    }, null, 2);
  }
}

// hh:mm:ss,mmm (SubRip) or hh:mm:ss.mmm (WebVTT).
export function clock(ms, sep) {
  const t = Math.max(0, Math.round(ms));
  const pad = (n, w = 2) => String(n).padStart(w, '0');
  return `${pad(Math.floor(t / 3600000))}:${pad(Math.floor(t / 60000) % 60)}:${pad(Math.floor(t / 1000) % 60)}${sep}${pad(t % 1000, 3)}`;
}

// m:ss for the transcript's time column.
export function shortClock(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
}
