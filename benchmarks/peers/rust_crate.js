// The Rust crate's own router trainer (npm @ruvector/tiny-dancer 0.1.22), run on a routing table.
// Input JSON: {"train": [{"embedding": [...], "scores": {model: q}}], "prices": {model: $},
//              "options": {...trainRouter options}, "test": [[...embedding], ...]}
// Output JSON: per-test-row scores (the crate's "cheap model is good enough" probability),
// training seconds, and the per-call wall time of score().
const td = require('@ruvector/tiny-dancer');
const fs = require('fs');

async function main() {
  const [inPath, outPath, modelPath] = process.argv.slice(2);
  const job = JSON.parse(fs.readFileSync(inPath, 'utf8'));
  const inputDim = job.train[0].embedding.length;
  const t0 = process.hrtime.bigint();
  const result = await td.trainRouter(job.train, job.prices, { ...job.options, outputPath: modelPath, inputDim });
  const trainSeconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const scores = [];
  const t1 = process.hrtime.bigint();
  for (const emb of job.test) scores.push(await td.score(modelPath, emb));
  const scoreUs = Number(process.hrtime.bigint() - t1) / 1e3 / Math.max(1, job.test.length);
  fs.writeFileSync(outPath, JSON.stringify({ scores, trainSeconds, scoreUsPerCall: scoreUs, result, version: td.version() }));
}
main().catch((e) => { console.error(e); process.exit(1); });
