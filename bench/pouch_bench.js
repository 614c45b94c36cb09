// Push N generated ~1 KB documents from a memory PouchDB to a CouchDB-compatible database,
// then pull them into a fresh memory PouchDB; print one JSON line with the timings.
// Usage: node pouch_bench.js DB_URL N [BATCH_SIZE]
'use strict';
const PouchDB = require('pouchdb-core')
  .plugin(require('pouchdb-adapter-memory'))
  .plugin(require('pouchdb-adapter-http'))
  .plugin(require('pouchdb-replication'));

const [url, countArg, batchArg] = process.argv.slice(2);
const count = parseInt(countArg, 10);
const batchSize = parseInt(batchArg || '100', 10);  // PouchDB's default batch_size

function makeDoc(i) {
  // ~1 KB of JSON with Chinese text, like a catalog item or case event.
  return {
    _id: 'doc-' + String(i).padStart(8, '0'),
    type: 'bench',
    name: '城乡居民基本养老保险参保登记 ' + i,
    body: 'x'.repeat(820),
    n: i,
  };
}

async function main() {
  const source = new PouchDB('bench-src', {adapter: 'memory'});
  for (let i = 0; i < count; i += 1000) {
    const docs = [];
    for (let j = i; j < Math.min(count, i + 1000); j++) docs.push(makeDoc(j));
    await source.bulkDocs(docs);
  }
  const remote = new PouchDB(url, {skip_setup: true});
  let t0 = process.hrtime.bigint();
  const push = await PouchDB.replicate(source, remote, {batch_size: batchSize});
  const pushSeconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const target = new PouchDB('bench-dst', {adapter: 'memory'});
  t0 = process.hrtime.bigint();
  const pull = await PouchDB.replicate(remote, target, {batch_size: batchSize});
  const pullSeconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const info = await target.info();
  console.log(JSON.stringify({
    count, batch_size: batchSize,
    push: {seconds: pushSeconds, docs_written: push.docs_written, errors: push.errors.length},
    pull: {seconds: pullSeconds, docs_written: pull.docs_written, errors: pull.errors.length},
    pulled_doc_count: info.doc_count,
  }));
}

main().catch((err) => { console.error(err); process.exit(1); });
