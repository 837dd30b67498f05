// capture-worklet.js: microphone capture on the audio thread. Mixes to mono, resamples
// whatever rate the device runs at to 16 kHz itself (low-pass, then linear
// interpolation), clamps to [-1, 1], packs signed 16-bit little-endian PCM and posts
// frames of 50 ms (800 samples, 1600 bytes) with their level. The audio clock paces them.

class Pcm16Capture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.targetRate = opts.targetRate || 16000;
    this.frameSamples = opts.frameSamples || 800;
    this.step = sampleRate / this.targetRate;   // input samples per output sample
    this.t = 0;                                  // next output position, in input samples
    this.last = 0;                               // previous block's last (filtered) sample
    // Moving-average low-pass over about one output period, against aliasing.
    this.taps = Math.max(1, Math.round(this.step));
    this.ring = new Float32Array(this.taps);
    this.ringPos = 0;
    this.ringSum = 0;
    this.newFrame();
    this.port.onmessage = (e) => { if (e.data === 'flush') this.flush(); };
  }

  newFrame() {
    this.frame = new DataView(new ArrayBuffer(this.frameSamples * 2));
    this.fill = 0;
    this.sumSquares = 0;
  }

  push(sample) {
    const s = sample > 1 ? 1 : sample < -1 ? -1 : sample;
    this.frame.setInt16(this.fill * 2, s < 0 ? Math.round(s * 0x8000) : Math.round(s * 0x7fff), true);
    this.sumSquares += s * s;
    if (++this.fill === this.frameSamples) this.flush();
  }

  // Posts the frame. A partial last frame (on Stop) is padded with silence to a full 50 ms:
  // the service refuses chunks shorter than 50 ms.
  flush() {
    if (this.fill === 0) return;
    const level = Math.sqrt(this.sumSquares / this.fill);
    const pcm = this.frame.buffer;     // zero-filled beyond this.fill
    this.port.postMessage({ pcm, level }, [pcm]);
    this.newFrame();
  }

  lowpass(x) {
    this.ringSum += x - this.ring[this.ringPos];
    this.ring[this.ringPos] = x;
    this.ringPos = (this.ringPos + 1) % this.taps;
    return this.ringSum / this.taps;
  }

  process(inputs) {
    const input = inputs[0];
    if (!input || input.length === 0 || input[0].length === 0) return true;
    const n = input[0].length;
    const mono = new Float32Array(n);
    for (let c = 0; c < input.length; c++) {
      const ch = input[c];
      for (let i = 0; i < n; i++) mono[i] += ch[i] / input.length;
    }
    for (let i = 0; i < n; i++) mono[i] = this.lowpass(mono[i]);
    // Output sample k sits at input position t; index -1 is the previous block's last sample.
    while (this.t < n - 1) {
      const i = Math.floor(this.t);
      const frac = this.t - i;
      const a = i < 0 ? this.last : mono[i];
      const b = mono[i + 1];
      this.push(a + (b - a) * frac);
      this.t += this.step;
    }
    this.t -= n;
    this.last = mono[n - 1];
    return true;
  }
}

registerProcessor('pcm16-capture', Pcm16Capture);
