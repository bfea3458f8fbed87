#!/usr/bin/env node
// Independent check of AsyncAPI documents with the official AsyncAPI parser
// (@asyncapi/parser 3.x, default ruleset = its Spectral rules).
//
//   node tools/asyncapi/validate.mjs FILE...
//
// For each FILE: prints every diagnostic (severity, rule code, JSON pointer of the
// offending node, line:column, message) and a one-line summary. Exits 1 when any file
// could not be parsed or has a diagnostic of error severity (0), 0 otherwise, and 2 on
// bad usage. Works offline: local (file) $refs are resolved relative to FILE, while any
// attempt to reach the network (a remote $ref) is refused and reported as an error.
import http from 'node:http';
import https from 'node:https';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import process from 'node:process';

// ---- offline guard: installed before the parser is loaded ----------------------------
// The parser's default resolver fetches http(s) $refs (node-fetch -> http(s).request).
// Its options can only *add* resolvers, not remove the http ones, so refuse at the
// transport instead: a remote $ref then fails to resolve and shows up as a diagnostic.
function offline(what) {
  return function refuse(...args) {
    const target = args.find((a) => typeof a === 'string' || a instanceof URL) ?? args[0]?.href ?? args[0]?.hostname ?? '?';
    throw new Error(`network access is disabled in validate.mjs (${what} ${String(target)}); use local $refs only`);
  };
}
http.request = offline('http');
http.get = offline('http');
https.request = offline('https');
https.get = offline('https');
globalThis.fetch = async (input) => offline('fetch')(String(input?.url ?? input));

const { Parser, DiagnosticSeverity } = await import('@asyncapi/parser');

const SEVERITY = {
  [DiagnosticSeverity.Error]: 'error',
  [DiagnosticSeverity.Warning]: 'warning',
  [DiagnosticSeverity.Information]: 'info',
  [DiagnosticSeverity.Hint]: 'hint',
};

function pointer(segments) {
  if (!segments || segments.length === 0) return '#';
  return '#/' + segments.map((s) => String(s).replace(/~/g, '~0').replace(/\//g, '~1')).join('/');
}

function position(range) {
  const start = range?.start;
  return start ? `${start.line + 1}:${start.character + 1}` : '?:?';
}

function printDiagnostic(file, d) {
  const severity = SEVERITY[d.severity] ?? `severity-${d.severity}`;
  const code = d.code !== undefined ? String(d.code) : '-';
  // d.source is the file the node lives in (differs from `file` for a node behind a file $ref)
  const where = d.source && path.resolve(d.source) !== path.resolve(file) ? `${d.source}:` : `${file}:`;
  console.log(`  ${severity} ${code} at ${pointer(d.path)} (${where}${position(d.range)}): ${d.message}`);
}

const parser = new Parser();

async function check(file) {
  let text;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    console.log(`FAIL: ${file} (cannot read: ${err.message})`);
    return false;
  }
  let result;
  try {
    // source = absolute path: relative file $refs resolve next to the document
    result = await parser.parse(text, { source: path.resolve(file) });
  } catch (err) {
    console.log(`FAIL: ${file} (parser threw: ${err?.stack ?? err})`);
    return false;
  }
  const diagnostics = result.diagnostics ?? [];
  const ordered = [...diagnostics].sort((a, b) => a.severity - b.severity);
  for (const d of ordered) printDiagnostic(file, d);

  const errors = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Error).length;
  const warnings = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Warning).length;
  const doc = result.document;
  if (errors > 0 || !doc) {
    const why = doc ? '' : ', document not parsed';
    console.log(`FAIL: ${file} (${errors} errors, ${warnings} warnings${why})`);
    return false;
  }
  console.log(
    `ok: ${file} (asyncapi ${doc.version()}, ${doc.channels().length} channels, ` +
      `${doc.operations().length} operations, ${warnings} warnings)`,
  );
  return true;
}

const files = process.argv.slice(2);
if (files.length === 0 || files.some((f) => f === '-h' || f === '--help')) {
  console.error('usage: node tools/asyncapi/validate.mjs FILE...');
  process.exit(2);
}
let allOk = true;
for (const file of files) {
  if (!(await check(file))) allOk = false;
}
process.exit(allOk ? 0 : 1);
