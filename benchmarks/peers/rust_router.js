// The Rust crate's Router (npm @ruvector/tiny-dancer 0.1.22) on the same shapes as
// benchmarks/router_latency.py: N candidates with 384-d Float32Array embeddings.
// Reports the crate's own inferenceTimeUs (timer inside Rust, candidates already Vec<f32>)
// and the wall time of one route() call from Node, medians over many calls.
const td = require('@ruvector/tiny-dancer');

function median(a) { const s = [...a].sort((x, y) => x - y); return s[Math.floor(s.length / 2)]; }

async function main() {
  const dim = 384;
  const sizes = JSON.parse(process.argv[2] || '[1,10,50,100]');
  const calls = Number(process.argv[3] || 2000);
  // a missing model path makes the crate fall back to random weights: fine for timing only
  const router = new td.Router({ modelPath: '/nonexistent/model.safetensors' });
  const now = Date.now();
  const rand = () => { const v = new Float32Array(dim); for (let i = 0; i < dim; i++) v[i] = Math.random() - 0.5; return v; };
  const out = {};
  for (const n of sizes) {
    const candidates = [];
    for (let i = 0; i < n; i++) candidates.push({ id: `c${i}`, embedding: rand(), createdAt: now - 60000, accessCount: 10, successRate: 0.9 });
    const request = { queryEmbedding: rand(), candidates };
    for (let i = 0; i < 50; i++) await router.route(request);
    const inner = [], wall = [];
    for (let i = 0; i < calls; i++) {
      const t0 = process.hrtime.bigint();
      const res = await router.route(request);
      wall.push(Number(process.hrtime.bigint() - t0) / 1e3);
      inner.push(res.inferenceTimeUs);
    }
    out[n] = { inferenceTimeUs: median(inner), wallUs: median(wall), featureTimeUs: null };
  }
  process.stdout.write(JSON.stringify({ version: td.version(), results: out }));
}
main().catch((e) => { console.error(e); process.exit(1); });
