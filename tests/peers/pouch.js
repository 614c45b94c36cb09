#!/usr/bin/env node
// Run a JSON-described scenario with the real PouchDB 9 replicator.
//
// Usage: node pouch.js '<scenario JSON>'   |   node pouch.js @scenario.json   |   node pouch.js -
// (a file or stdin for scenarios too big for one argv string, whose limit is 128 KiB).
//
// Scenario: {"remote": "http://user:pw@127.0.0.1:port/db", "remote_options": {...},
//            "timeout_ms": 60000, "steps": [{"op": ..., "db": "local"|"remote", ...}, ...]}
// Ops: info, put (doc, fill), bulk (docs | generate, new_edits, summary), update (id, set),
// delete (id), remove (id, rev), get (id, options), get_many (ids, options), all_docs, docs,
// changes, replication_id (direction, options), replicate (direction, options: doc_ids,
// batch_size, checkpoint, ...; cancel_after_written, hang_after_written), live (direction,
// options, ready_signal, during, until_ids, until_revs).
// A step's result goes into "results" (in order) and under its "name" when it has one.
// Prints ONE JSON line: {"ok": true, "results": [...], "named": {...}}. A step that throws
// ends the run with {"ok": false, "failed_step": i, "error": {...}, ...} and exit code 1,
// unless the step says "expect_error": true (its result is then the error).
// Live steps with "ready_signal" print {"event": "ready", ...} lines before the last line so
// a test can write to the node while the replication runs.
//
// Everything local is a memory PouchDB (the LevelDB adapter is a native module we do not
// install), so state needed across steps must stay within one invocation.

'use strict';

const fs = require('fs');
const PouchDB = require('pouchdb-core')
  .plugin(require('pouchdb-adapter-memory'))
  .plugin(require('pouchdb-adapter-http'))
  .plugin(require('pouchdb-replication'));
const generateReplicationId = require('pouchdb-generate-replication-id');

function readScenario(arg) {
  if (arg === undefined || arg === '-') {
    return JSON.parse(fs.readFileSync(0, 'utf8'));
  }
  if (arg.startsWith('@')) {
    return JSON.parse(fs.readFileSync(arg.slice(1), 'utf8'));
  }
  return JSON.parse(arg);
}

// Errors (PouchDB's and fetch's) as plain JSON, keeping what a test asserts on.
function errorJson(err) {
  if (!err || typeof err !== 'object') {
    return {message: String(err)};
  }
  const out = {name: err.name, message: err.message};
  for (const key of ['status', 'error', 'reason', 'id', 'docId']) {
    if (err[key] !== undefined) {
      out[key] = err[key];
    }
  }
  return out;
}

// A replication result without Dates and Error objects.
function resultJson(result) {
  const out = {};
  for (const key of ['ok', 'status', 'docs_read', 'docs_written', 'doc_write_failures',
    'last_seq']) {
    if (result && result[key] !== undefined) {
      out[key] = result[key];
    }
  }
  out.errors = ((result && result.errors) || []).map(errorJson);
  return out;
}

// A string of exactly `size` characters repeating `pattern` (big or non-ASCII bodies).
function fill(pattern, size) {
  const reps = Math.ceil(size / pattern.length);
  return pattern.repeat(reps).slice(0, size);
}

// Docs from a "generate" spec: ids prefix + zero-padded number, optional padding field.
function generateDocs(spec) {
  const docs = [];
  const start = spec.start || 0;
  for (let i = start; i < start + spec.count; i++) {
    const doc = Object.assign({}, spec.body || {},
      {_id: spec.prefix + String(i).padStart(spec.width || 5, '0'), n: i});
    if (spec.pad) {
      doc.pad = fill(spec.pad_pattern || 'x', spec.pad);
    }
    docs.push(doc);
  }
  return docs;
}

// A doc from a step: "doc" plus an optional generated field ({"field", "pattern", "size"}).
function stepDoc(step) {
  const doc = Object.assign({}, step.doc);
  if (step.fill) {
    doc[step.fill.field] = fill(step.fill.pattern, step.fill.size);
  }
  return doc;
}

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

class Runner {
  constructor(scenario) {
    this.scenario = scenario;
    this.timeoutMs = scenario.timeout_ms || 60000;
    this.local = new PouchDB(scenario.local_name || 'local', {adapter: 'memory'});
    this.remote = scenario.remote
      ? new PouchDB(scenario.remote, Object.assign({}, scenario.remote_options || {}))
      : null;
    this.results = [];
    this.named = {};
  }

  db(step) {
    if ((step.db || 'local') === 'remote') {
      if (!this.remote) {
        throw new Error('the scenario has no remote');
      }
      return this.remote;
    }
    return this.local;
  }

  endpoints(direction) {
    if (direction === 'push') {
      return [this.local, this.remote];
    }
    if (direction === 'pull') {
      return [this.remote, this.local];
    }
    throw new Error(`direction must be push or pull, not ${direction}`);
  }

  async run() {
    for (let i = 0; i < this.scenario.steps.length; i++) {
      const step = this.scenario.steps[i];
      let result;
      try {
        result = await this.step(step);
      } catch (err) {
        if (!step.expect_error) {
          return {ok: false, failed_step: i, op: step.op, error: errorJson(err),
            results: this.results, named: this.named};
        }
        result = {error: errorJson(err)};
      }
      this.results.push(result);
      if (step.name) {
        this.named[step.name] = result;
      }
    }
    return {ok: true, results: this.results, named: this.named};
  }

  async step(step) {
    const db = () => this.db(step);
    switch (step.op) {
      case 'info':
        return db().info();
      case 'put':
        return db().put(stepDoc(step));
      case 'bulk': {
        const docs = step.generate ? generateDocs(step.generate) : step.docs;
        const opts = step.new_edits === false ? {new_edits: false} : {};
        const res = await db().bulkDocs(docs, opts);
        return step.summary ? {count: res.length, errors: res.filter((r) => r.error)} : res;
      }
      case 'update': {
        // Read the current winner and write a child of it, as an application would.
        const doc = await db().get(step.id);
        return db().put(Object.assign(doc, step.set || {}));
      }
      case 'delete': {
        const doc = await db().get(step.id);
        return db().remove(doc);
      }
      case 'remove':
        // Delete one given revision (e.g. the losing side of a conflict).
        return db().remove(step.id, step.rev);
      case 'get':
        return db().get(step.id, step.options || {});
      case 'get_many': {
        // Several gets in one step; a missing doc becomes {"error": ...} instead of failing.
        const out = {};
        for (const id of step.ids) {
          try {
            out[id] = await db().get(id, step.options || {});
          } catch (err) {
            out[id] = {error: errorJson(err)};
          }
        }
        return out;
      }
      case 'all_docs':
        return db().allDocs(step.options || {});
      case 'docs': {
        // Every live doc as {id: winner}, read through the changes feed: the memory
        // adapter's allDocs (memdown under sublevel-pouchdb) skips ids with characters above
        // U+00FF, because its key range ends at '\xff'; the by-sequence store has no such
        // limit.
        const res = await db().changes(Object.assign({}, step.options || {},
          {include_docs: true, live: false, since: 0}));
        const out = {};
        for (const row of res.results) {
          if (!row.deleted) {
            out[row.id] = row.doc;
          }
        }
        return out;
      }
      case 'changes':
        return db().changes(Object.assign({}, step.options || {}, {live: false}));
      case 'replication_id': {
        // The _local checkpoint id PouchDB uses for this replication (same options).
        const [src, target] = this.endpoints(step.direction);
        return {id: await generateReplicationId(src, target, Object.assign({},
          step.options || {}))};
      }
      case 'replicate':
        return this.replicate(step);
      case 'live':
        return this.live(step);
      default:
        throw new Error(`unknown op ${step.op}`);
    }
  }

  // A one-shot replication. "cancel_after_written": N cancels it once N docs are written
  // (after a batch), which is how a test interrupts a replication half-way.
  // "hang_after_written": N prints {"event": "hang"} and then blocks this process (the next
  // batch may be in flight) so the test can kill it at a known point: a crash mid-way.
  async replicate(step) {
    const [src, target] = this.endpoints(step.direction);
    const rep = PouchDB.replicate(src, target, Object.assign({}, step.options || {}));
    const changes = [];
    rep.on('change', (info) => {
      changes.push({docs_read: info.docs_read, docs_written: info.docs_written,
        last_seq: info.last_seq});
      if (step.cancel_after_written !== undefined &&
          info.docs_written >= step.cancel_after_written) {
        rep.cancel();
      }
      if (step.hang_after_written !== undefined &&
          info.docs_written >= step.hang_after_written) {
        process.stdout.write(JSON.stringify({event: 'hang', docs_written: info.docs_written}) +
          '\n', () => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0,
          this.timeoutMs));
      }
    });
    const result = await withTimeout(rep, this.timeoutMs, `${step.direction} replication`);
    return Object.assign(resultJson(result), {batches: changes});
  }

  // A live replication: optionally print a ready line once it has caught up (first
  // "paused"), run "during" steps, wait until every id of "until_ids" is in the target
  // (the winner's rev in "until_revs" when given), then cancel.
  async live(step) {
    const [src, target] = this.endpoints(step.direction);
    const opts = Object.assign({}, step.options || {}, {live: true});
    const rep = PouchDB.replicate(src, target, opts);
    const events = [];
    let errored = null;
    const caughtUp = new Promise((resolve) => rep.once('paused', resolve));
    rep.on('change', (info) => events.push({event: 'change', docs_written: info.docs_written}));
    rep.on('paused', (err) => events.push({event: 'paused', error: err ? errorJson(err) : null}));
    rep.on('active', () => events.push({event: 'active'}));
    rep.on('denied', (err) => events.push({event: 'denied', error: errorJson(err)}));
    const completed = new Promise((resolve) => {
      rep.on('complete', resolve);
      rep.on('error', (err) => {
        errored = err;
        resolve(null);
      });
    });
    try {
      await withTimeout(caughtUp, this.timeoutMs, 'the live replication to catch up');
      if (step.ready_signal) {
        process.stdout.write(JSON.stringify({event: 'ready', signal: step.ready_signal}) + '\n');
      }
      for (const inner of step.during || []) {
        await this.step(inner);
      }
      await withTimeout(this.waitFor(target, step.until_ids || [], step.until_revs || {}),
        this.timeoutMs, `docs ${JSON.stringify(step.until_ids)} to arrive`);
    } finally {
      rep.cancel();
    }
    const result = await withTimeout(completed, this.timeoutMs, 'the cancelled replication');
    if (errored) {
      throw errored;
    }
    return Object.assign(resultJson(result), {events});
  }

  async waitFor(db, ids, revs) {
    for (;;) {
      let missing = 0;
      for (const id of ids) {
        try {
          const doc = await db.get(id);
          if (revs[id] && doc._rev !== revs[id]) {
            missing++;
          }
        } catch (err) {
          missing++;
        }
      }
      if (missing === 0) {
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
}

async function main() {
  const scenario = readScenario(process.argv[2]);
  const out = await new Runner(scenario).run();
  finish(out, out.ok ? 0 : 1);
}

// Print the result line, then exit: keep-alive sockets and cancelled live feeds may hold
// the event loop. Exit only once the line is flushed (a pipe takes 64 KiB at a time).
function finish(out, code) {
  process.stdout.write(JSON.stringify(out) + '\n', () => process.exit(code));
}

main().catch((err) => finish({ok: false, error: errorJson(err)}, 1));
