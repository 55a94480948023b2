// Drives the embedded node with the real kubo-rpc-client through everyday calls and checks the
// results against CIDs computed by our Python importer. Prints "ok" when every check passed.
//   node rpc-client.mjs API_URL EXPECTED_JSON CAR_PATH CAR_ROOT
// EXPECTED_JSON: {"bytes", "file", "dir", "dir_v1"}: CIDs of "hello from js", of "file with a
// path", and of the folder given as "site" beside CAR_PATH (kubo defaults, and CIDv1).
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { dirname } from 'node:path'
import * as dagPB from '@ipld/dag-pb'
import { CarWriter } from '@ipld/car/writer'
import { create, globSource } from 'kubo-rpc-client'
import { CID } from 'multiformats/cid'
import * as raw from 'multiformats/codecs/raw'
import { sha256 } from 'multiformats/hashes/sha2'

const [url, expectedJson, carPath, carRoot] = process.argv.slice(2)
const expected = JSON.parse(expectedJson)
const ipfs = create({ url })
const text = (bytes) => new TextDecoder().decode(bytes)

async function collect (iterable) {
  const chunks = []
  for await (const chunk of iterable) chunks.push(chunk)
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0))
  let offset = 0
  for (const chunk of chunks) { out.set(chunk, offset); offset += chunk.length }
  return out
}

async function all (iterable) {
  const out = []
  for await (const item of iterable) out.push(item)
  return out
}

// A minimal ustar reader: entry names (prefix + name), types and file bytes.
function untar (bytes) {
  const entries = {}
  for (let at = 0; at + 512 <= bytes.length;) {
    const header = bytes.subarray(at, at + 512)
    if (header.every((b) => b === 0)) break
    const field = (from, to) => text(header.subarray(from, to)).replace(/\0.*$/s, '')
    const size = parseInt(field(124, 136).trim() || '0', 8)
    const prefix = field(345, 500)
    const name = (prefix ? `${prefix}/${field(0, 100)}` : field(0, 100)).replace(/\/$/, '')
    entries[name] = { type: field(156, 157), data: bytes.subarray(at + 512, at + 512 + size) }
    at += 512 + Math.ceil(size / 512) * 512
  }
  return entries
}

// version and id
const version = await ipfs.version()
assert.match(version.version, /^0\.\d+\.\d+$/)
const id = await ipfs.id()
assert.match(id.id.toString(), /^12D3KooW/)
assert.equal((await ipfs.id()).id.toString(), id.id.toString())

// add: bytes (no file name), a file with a path, a directory (two ways)
const bytes = await ipfs.add(new TextEncoder().encode('hello from js'))
assert.equal(bytes.cid.toString(), expected.bytes)
assert.equal(bytes.path, expected.bytes)
const file = await ipfs.add({ path: 'docs/file.txt', content: new TextEncoder().encode('file with a path') })
assert.equal(file.path, 'docs')
const fileEntry = await all(ipfs.addAll([{ path: 'docs/file.txt', content: new TextEncoder().encode('file with a path') }]))
assert.equal(fileEntry[0].path, 'docs/file.txt')
assert.equal(fileEntry[0].cid.toString(), expected.file)
const site = dirname(carPath) + '/site'
const globbed = await all(ipfs.addAll(globSource(dirname(carPath), 'site/**/*')))
const siteRoot = globbed.find((e) => e.path === 'site')
assert.ok(siteRoot, `no site root in ${JSON.stringify(globbed.map((e) => e.path))}`)
assert.equal(siteRoot.cid.toString(), expected.dir)
const listed = await all(ipfs.addAll([
  { path: 'site/index.html', content: readFileSync(`${site}/index.html`) },
  { path: 'site/css' },
  { path: 'site/css/a.css', content: readFileSync(`${site}/css/a.css`) }
], { cidVersion: 1 }))
assert.equal(listed.at(-1).path, 'site')
assert.equal(listed.at(-1).cid.toString(), expected.dir_v1)

// cat, get, ls
assert.equal(text(await collect(ipfs.cat(bytes.cid))), 'hello from js')
assert.equal(text(await collect(ipfs.cat(`/ipfs/${siteRoot.cid}/css/a.css`))), 'p{}')
const tar = untar(await collect(ipfs.get(`${siteRoot.cid}/css`)))
assert.deepEqual(Object.keys(tar).sort(), ['css', 'css/a.css'])
assert.equal(text(tar['css/a.css'].data), 'p{}')
const entries = await all(ipfs.ls(siteRoot.cid))
assert.deepEqual(entries.map((e) => [e.name, e.type]), [['css', 'dir'], ['index.html', 'file']])
await assert.rejects(all(ipfs.cat(siteRoot.cid)), /this dag node is a directory/)

// blocks
const blockData = new TextEncoder().encode('a block from js')
const blockCid = await ipfs.block.put(blockData)
assert.equal(blockCid.toString(), CID.create(1, raw.code, await sha256.digest(blockData)).toString())
assert.equal(text(await ipfs.block.get(blockCid)), 'a block from js')
assert.equal((await ipfs.block.stat(blockCid)).size, blockData.length)

// dag: import a CAR written by @ipld/car, another written by our Python exporter; export; get
const leafBytes = new TextEncoder().encode('leaf in a js car')
const leaf = CID.create(1, raw.code, await sha256.digest(leafBytes))
const nodeBytes = dagPB.encode(dagPB.prepare({ Data: new Uint8Array([8, 1]), Links: [{ Hash: leaf, Name: 'leaf', Tsize: leafBytes.length }] }))
const nodeCid = CID.create(1, dagPB.code, await sha256.digest(nodeBytes))
const { writer, out } = CarWriter.create([nodeCid])
const carBytes = collect(out)
await writer.put({ cid: nodeCid, bytes: nodeBytes })
await writer.put({ cid: leaf, bytes: leafBytes })
await writer.close()
const jsCar = await carBytes
const imported = await all(ipfs.dag.import([jsCar]))
assert.deepEqual(imported.map((r) => [r.root.cid.toString(), r.root.pinErrorMsg]), [[nodeCid.toString(), '']])
const pyImported = await all(ipfs.dag.import([readFileSync(carPath)]))
assert.equal(pyImported[0].root.cid.toString(), carRoot)
const exported = await collect(ipfs.dag.export(nodeCid))
assert.deepEqual(exported, jsCar)
const got = await ipfs.dag.get(nodeCid)
assert.equal(got.value.Links[0].Name, 'leaf')
assert.equal(got.value.Links[0].Hash.toString(), leaf.toString())

// refs
const refs = await all(ipfs.refs(siteRoot.cid, { recursive: true }))
assert.equal(refs.length, 3) // css, css/a.css, index.html
assert.ok(refs.every((r) => r.err === '' || r.err === undefined))

// pins
await ipfs.pin.rm(bytes.cid)
let pins = (await all(ipfs.pin.ls())).map((p) => p.cid.toString())
assert.ok(!pins.includes(bytes.cid.toString()))
await ipfs.pin.add(bytes.cid)
pins = (await all(ipfs.pin.ls({ type: 'recursive' }))).map((p) => p.cid.toString())
assert.ok(pins.includes(bytes.cid.toString()))
assert.ok(pins.includes(nodeCid.toString()))
const verify = await fetch(`${url}/api/v0/pin/verify?verbose=true`, { method: 'POST' })
const verified = (await verify.text()).trim().split('\n').map((line) => JSON.parse(line))
assert.ok(verified.length >= 3 && verified.every((v) => v.Ok === true))

// errors arrive as errors with kubo's message
await assert.rejects(ipfs.add(new Uint8Array([1]), { trickle: true }), /trickle/)
console.log('ok')
