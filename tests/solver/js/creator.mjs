// An independent job creator, written from the README's "The solver API" rules only (no
// Python source): it renders a job spec, hashes it with JCS (RFC 8785), signs EIP-712 JobOffers
// with ethers, posts them, cancels one, and follows the solver's event stream.
//
//   node creator.mjs vectors < values.json    one line per value: {"jcs": ..., "sha256": ...}
//   node creator.mjs run '<config JSON>'       the scenario tests/solver/test_js_client.py drives
//
// It prints JSON on stdout and exits non-zero, naming what failed, when the solver breaks a rule.
import { createHash } from 'node:crypto'
import { AbiCoder, Signature, TypedDataEncoder, Wallet, keccak256, toUtf8Bytes } from 'ethers'

// ------------------------------------------------------------------------- canonical JSON
// RFC 8785: keys sorted by UTF-16 code units (what Array.prototype.sort does to strings),
// JSON.stringify's strings and numbers. A BigInt (an integer beyond 2**53 - 1) is its digits.
export function jcs (value) {
  if (typeof value === 'bigint') return value.toString()
  if (Array.isArray(value)) return '[' + value.map(jcs).join(',') + ']'
  if (value !== null && typeof value === 'object') {
    return '{' + Object.keys(value).sort().map((k) => JSON.stringify(k) + ':' + jcs(value[k])).join(',') + '}'
  }
  if (typeof value === 'number' && !Number.isFinite(value)) throw new Error(`${value} has no JSON form`)
  return JSON.stringify(value)
}

export function specHash (spec) {
  const body = { ...spec }
  delete body.spec_hash
  return 'sha256:' + createHash('sha256').update(jcs(body), 'utf8').digest('hex')
}

// ------------------------------------------------------------------------------ the spec
// A float tunable reaches the job as Python's repr of the float: the shortest digits,
// positional with at least one decimal when 1e-4 <= |x| < 1e16, else d.ddde±XX.
export function floatText (x) {
  if (x === 0) return Object.is(x, -0) ? '-0.0' : '0.0'
  const [mantissa, e] = Math.abs(x).toExponential().split('e')
  const digits = mantissa.replace('.', '')
  const exp = Number(e)
  const sign = x < 0 ? '-' : ''
  if (exp >= -4 && exp < 16) {
    if (exp < 0) return sign + '0.' + '0'.repeat(-exp - 1) + digits
    const whole = digits.slice(0, exp + 1).padEnd(exp + 1, '0')
    return sign + whole + '.' + (digits.slice(exp + 1) || '0')
  }
  const lead = digits.length === 1 ? digits : digits[0] + '.' + digits.slice(1)
  return sign + lead + 'e' + (exp < 0 ? '-' : '+') + String(Math.abs(exp)).padStart(2, '0')
}

function envText (tunable, value) {
  if (tunable.type === 'float') return floatText(value)
  if (tunable.type === 'bool') return value ? 'true' : 'false'
  return String(value)
}

// `version` is the module version as its manifest declares it (image, entrypoint, env, machine,
// timeout_s, tunables, verification); `inputs` the tunables given, typed.
export function renderSpec ({ module, name, version, source, manifest }, inputs) {
  const tunables = {}
  const env = { ...(manifest.env || {}) }
  for (const t of manifest.tunables) {
    const value = t.name in inputs ? inputs[t.name] : t.default
    if (value === undefined || value === null) throw new Error(`tunable ${t.name} is required`)
    tunables[t.name] = value
    env[t.env] = envText(t, value)
  }
  const m = manifest.machine || {}
  const spec = {
    module,
    name,
    version,
    source: { kind: source.kind, location: source.location, commit: source.commit ?? null },
    image: manifest.image_digest ? `${manifest.image}@${manifest.image_digest}` : manifest.image,
    entrypoint: manifest.entrypoint,
    env,
    machine: {
      gpus: m.gpus ?? 0, vram_gb: m.vram_gb ?? 0, cpus: m.cpus ?? 1, ram_gb: m.ram_gb ?? 1, disk_gb: m.disk_gb ?? 1
    },
    network: 'none',
    outputs: '/outputs',
    timeout_s: manifest.timeout_s ?? 600,
    tunables,
    verification: {
      method: manifest.verification?.method ?? 'exact', tolerance: manifest.verification?.tolerance ?? null
    }
  }
  spec.spec_hash = specHash(spec)
  return spec
}

// Eight 32-bit lanes: gpus, VRAM MiB, CPU millicores, RAM MiB, disk MiB (GB x 1024, rounded up).
export function packMachine (m) {
  const lanes = [m.gpus, Math.ceil(m.vram_gb * 1024), Math.ceil(m.cpus * 1000), Math.ceil(m.ram_gb * 1024), Math.ceil(m.disk_gb * 1024)]
  return lanes.reduce((acc, lane, i) => acc | (BigInt(lane) << BigInt(32 * i)), 0n)
}

// ---------------------------------------------------------------------------- the offer
const JOB_OFFER = [
  { name: 'jobCreator', type: 'address' },
  { name: 'module', type: 'bytes32' },
  { name: 'specHash', type: 'bytes32' },
  { name: 'machine', type: 'uint256' },
  { name: 'maxPrice', type: 'uint96' },
  { name: 'timeout', type: 'uint32' },
  { name: 'mediators', type: 'address[]' },
  { name: 'expiry', type: 'uint64' },
  { name: 'nonce', type: 'uint256' }
]
const TYPES = { JobOffer: JOB_OFFER }

function offerFor (spec, { creator, maxPrice, mediators, expiry, nonce, machine }) {
  return {
    jobCreator: creator,
    module: keccak256(toUtf8Bytes(spec.module)),
    specHash: '0x' + spec.spec_hash.slice('sha256:'.length),
    machine: machine ?? packMachine(spec.machine),
    maxPrice: BigInt(maxPrice),
    timeout: spec.timeout_s + 300,
    mediators,
    expiry,
    nonce: BigInt(nonce)
  }
}

// The JSON the solver reads: snake_case, every uint96/uint256 as a decimal string.
function wireOffer (o) {
  return {
    job_creator: o.jobCreator,
    module: o.module,
    spec_hash: o.specHash,
    machine: o.machine.toString(),
    max_price: o.maxPrice.toString(),
    timeout: o.timeout,
    mediators: o.mediators,
    expiry: o.expiry,
    nonce: o.nonce.toString()
  }
}

// 65 bytes r||s||v with v 27/28 (as signed), v 0/1, or 64 bytes EIP-2098 compact.
function inForm (signature, form) {
  const sig = Signature.from(signature)
  if (form === 'compact') return sig.compactSerialized
  if (form === 'v01') return sig.r + sig.s.slice(2) + (sig.v - 27).toString(16).padStart(2, '0')
  return sig.serialized
}

// ------------------------------------------------------------------------------ HTTP, SSE
async function call (base, method, path, body) {
  const response = await fetch(base + path, {
    method,
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body)
  })
  const text = await response.text()
  return { status: response.status, body: text ? JSON.parse(text) : null }
}

// Reads `id:`, `event:`, `data:` (multi-line data joined by \n), ignores `:` comments; dispatches
// at a blank line. A message with an id and no data only says where the stream stands.
class EventStream {
  constructor (url) {
    this.url = url
    this.events = []
    this.lastId = null
    this.waiters = []
    this.controller = new AbortController()
  }

  async open () {
    const response = await fetch(this.url, { headers: { accept: 'text/event-stream' }, signal: this.controller.signal })
    if (response.status !== 200) throw new Error(`event stream answered ${response.status}`)
    if (!response.headers.get('content-type').startsWith('text/event-stream')) throw new Error('not an event stream')
    this.reading = this.read(response.body).catch((err) => { if (err.name !== 'AbortError') this.error = err })
    await this.until(() => this.lastId !== null, 'the stream to name its position')
  }

  async read (body) {
    const decoder = new TextDecoder()
    let buffer = ''
    let message = { data: [] }
    for await (const chunk of body) {
      buffer += decoder.decode(chunk, { stream: true })
      let newline
      while ((newline = buffer.search(/\r\n|\r|\n/)) >= 0) {
        const line = buffer.slice(0, newline)
        buffer = buffer.slice(newline + (buffer.startsWith('\r\n', newline) ? 2 : 1))
        if (line === '') {
          this.dispatch(message)
          message = { data: [] }
          continue
        }
        if (line.startsWith(':')) continue
        const colon = line.indexOf(':')
        const field = colon < 0 ? line : line.slice(0, colon)
        const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '')
        if (field === 'data') message.data.push(value)
        else if (field === 'id' || field === 'event') message[field] = value
      }
    }
  }

  dispatch (message) {
    if (message.id !== undefined) this.lastId = message.id
    if (message.data.length) {
      const data = JSON.parse(message.data.join('\n'))
      if (String(data.seq) !== message.id || data.kind !== message.event) {
        this.error = new Error(`message id ${message.id}/event ${message.event} disagree with its data ${JSON.stringify(data)}`)
      }
      this.events.push(data)
    }
    for (const waiter of this.waiters) waiter()
  }

  until (predicate, what, timeoutMs = 30000) {
    return new Promise((resolve, reject) => {
      const check = () => {
        if (this.error) return reject(this.error)
        const value = predicate()
        if (value) { clearTimeout(timer); resolve(value) }
      }
      const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}; events: ${JSON.stringify(this.events)}`)), timeoutMs)
      this.waiters.push(check)
      check()
    })
  }

  find (kind, test = () => true) {
    return this.until(() => this.events.find((e) => e.kind === kind && test(e)), kind)
  }

  close () { this.controller.abort() }
}

function check (condition, what) {
  if (!condition) throw new Error(what)
}

// ------------------------------------------------------------------------------ scenario
async function run (config) {
  const wallet = new Wallet(config.key)
  const domain = { name: 'LilypadJobMarket', version: '1', chainId: config.chainId, verifyingContract: config.market }
  const base = config.solver
  const stream = new EventStream(`${base}/api/v1/events?party=${wallet.address}&after=-1`)
  await stream.open()

  async function post (label, inputs, form, changes = {}) {
    const spec = renderSpec(config.module, inputs)
    const offer = offerFor(spec, { creator: wallet.address, maxPrice: config.maxPrice, mediators: [config.mediator], expiry: config.expiry, nonce: config.nonces[label], ...changes })
    const signature = inForm(await wallet.signTypedData(domain, TYPES, offer), form)
    const answer = await call(base, 'POST', '/api/v1/job_offers', { offer: wireOffer(offer), signature, spec, avoid_providers: [] })
    return { spec, offer, signature, answer, id: TypedDataEncoder.hashStruct('JobOffer', TYPES, offer) }
  }

  const prompt = 'A café ☕ under 𝄞 stars, "quoted"'
  const posted = {
    full: await post('full', { Prompt: prompt, GuidanceScale: 7, RefinerSwitch: 0.5, Seed: 1 }, 'full'),
    compact: await post('compact', { Prompt: prompt, Seed: 2 }, 'compact'),
    v01: await post('v01', { Prompt: prompt, Seed: 3 }, 'v01')
  }
  for (const [label, p] of Object.entries(posted)) {
    check(p.answer.status === 201, `${label} offer: ${p.answer.status} ${JSON.stringify(p.answer.body)}`)
    check(p.answer.body.id === p.id, `${label} offer id ${p.answer.body.id} is not its struct hash ${p.id}`)
  }
  const noMachine = await post('noMachine', { Seed: 4 }, 'full', { machine: 0n })
  check(noMachine.answer.status === 400, `machine 0 answered ${noMachine.answer.status}`)

  const view = await call(base, 'GET', `/api/v1/job_offers/${posted.full.id}`)
  check(view.body.offer.offer.max_price === String(config.maxPrice), `max_price came back as ${JSON.stringify(view.body.offer.offer.max_price)}`)
  check(view.body.offer.spec.spec_hash === posted.full.spec.spec_hash, 'the spec came back with another hash')

  // withdraw the third one: EIP-191 of "lilypad: cancel offer <id>", compact
  const cancelSig = inForm(await wallet.signMessage(`lilypad: cancel offer ${posted.v01.id}`), 'compact')
  const cancelled = await call(base, 'POST', `/api/v1/job_offers/${posted.v01.id}/cancel`, { signature: cancelSig })
  check(cancelled.status === 200 && cancelled.body.state === 'cancelled', `cancel: ${cancelled.status} ${JSON.stringify(cancelled.body)}`)

  const deals = {}
  for (const label of ['full', 'compact']) {
    const created = await stream.find('deal.created', (e) => e.job_offer_id === posted[label].id)
    const d = created.deal
    const words = AbiCoder.defaultAbiCoder().encode(
      ['address', 'address', 'address', 'uint96', 'uint96', 'uint96', 'bytes32', 'bytes32'],
      [d.job_creator, d.provider, d.mediator, BigInt(d.price), BigInt(d.collateral), BigInt(d.mediation_fee), d.job_offer_hash, d.resource_offer_hash]
    )
    check(keccak256(words) === created.deal_id, `deal id ${created.deal_id} is not keccak256(abi.encode(deal)) ${keccak256(words)}`)
    check(d.job_offer_hash === posted[label].id, 'the deal names another job offer')
    await stream.find('job_offer.dealt', (e) => e.id === posted[label].id && e.deal_id === created.deal_id)
    deals[label] = { deal_id: created.deal_id, provider: d.provider, price: d.price }
  }
  await stream.find('job_offer.cancelled', (e) => e.id === posted.v01.id)

  const seqs = stream.events.map((e) => e.seq)
  check(seqs.every((s, i) => i === 0 || s > seqs[i - 1]), `seqs not increasing: ${seqs}`)
  stream.close()
  return {
    offers: Object.fromEntries(Object.entries(posted).map(([k, p]) => [k, { id: p.id, spec_hash: p.spec.spec_hash, signature: p.signature }])),
    refused: noMachine.answer.body.error,
    deals,
    kinds: stream.events.map((e) => e.kind)
  }
}

async function main () {
  const [mode, arg] = process.argv.slice(2)
  if (mode === 'vectors') {
    let input = ''
    for await (const chunk of process.stdin) input += chunk
    // JSON.parse cannot hold an integer beyond 2**53 - 1: the test sends one as {"bigint": "digits"}
    const revive = (key, v) => (v !== null && typeof v === 'object' && Object.keys(v).join() === 'bigint' ? BigInt(v.bigint) : v)
    for (const value of JSON.parse(input, revive)) {
      console.log(JSON.stringify({ jcs: jcs(value), sha256: createHash('sha256').update(jcs(value), 'utf8').digest('hex') }))
    }
  } else if (mode === 'float-text') {
    console.log(JSON.stringify(JSON.parse(arg).map(floatText)))
  } else if (mode === 'run') {
    console.log(JSON.stringify(await run(JSON.parse(arg))))
  } else {
    throw new Error(`unknown mode ${mode}: vectors, float-text or run`)
  }
}

main().catch((err) => { console.error(err.stack || String(err)); process.exit(1) })
