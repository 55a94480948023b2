// Writes a folder as a CAR the way JS IPFS tools do: ipfs-unixfs-importer builds the UnixFS DAG,
// @ipld/car's CarWriter writes it. Prints {"root": CID, "blocks": N} as JSON.
//   node client-car.mjs SOURCE_DIR OUT_CAR ORDER SHARD_BYTES [CID_VERSION] [SUBPATH]
// ORDER "unk": the blocks as the importer emits them (leaves first, the root last, a repeated
//   chunk each time it is emitted), as `ipfs-car pack` writes them;
// ORDER "dfs": depth first from the root, a block again wherever the DAG links it again (dups=y),
//   as a trustless gateway answers `order=dfs; dups=y`.
// SHARD_BYTES: directories whose links pass this many bytes become HAMT shards (kubo: 262144).
// SUBPATH (plain directories only): the CAR a gateway answers for /ipfs/ROOT/SUBPATH: the blocks
//   on the path, then the DAG at its end, which is the CAR's root (as kubo names it).
import { createWriteStream, lstatSync, readdirSync, readFileSync } from 'node:fs'
import { basename, join } from 'node:path'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { CarWriter } from '@ipld/car'
import * as dagPb from '@ipld/dag-pb'
import { MemoryBlockstore } from 'blockstore-core/memory'
import { importer } from 'ipfs-unixfs-importer'
import { fixedSize } from 'ipfs-unixfs-importer/chunker'
import { balanced } from 'ipfs-unixfs-importer/layout'

const [source, out, order, shardBytes, cidVersion = '1', subpath = ''] = process.argv.slice(2)

function * candidates (full, rel) {
  if (lstatSync(full).isDirectory()) {
    const names = readdirSync(full).sort()
    if (names.length === 0) yield { path: rel }
    for (const name of names) yield * candidates(join(full, name), `${rel}/${name}`)
  } else {
    yield { path: rel, content: readFileSync(full) }
  }
}

// The importer's put order is kept: it is the "unk" order.
const store = new MemoryBlockstore()
const emitted = []
const recorder = {
  put: async (cid, bytes, options) => { emitted.push(cid); return store.put(cid, bytes, options) },
  has: (cid, options) => store.has(cid, options),
  get: (cid, options) => store.get(cid, options)
}
const bytesOf = (cid) => Buffer.concat([...store.get(cid)])

let root
for await (const entry of importer(candidates(source, basename(source)), recorder, {
  cidVersion: Number(cidVersion),
  rawLeaves: cidVersion === '1',
  chunker: fixedSize({ chunkSize: 262144 }),
  layout: balanced({ maxChildrenPerNode: 174 }),
  shardSplitStrategy: 'links-bytes',
  shardSplitThresholdBytes: Number(shardBytes)
})) {
  root = entry.cid
}

function * depthFirst (cid) {
  const bytes = bytesOf(cid)
  yield { cid, bytes }
  if (cid.code === dagPb.code) {
    for (const link of dagPb.decode(bytes).Links) yield * depthFirst(link.Hash)
  }
}

let carRoot = root
const blocks = []
for (const name of subpath.split('/').filter(Boolean)) {
  const bytes = bytesOf(carRoot)
  blocks.push({ cid: carRoot, bytes })
  const link = dagPb.decode(bytes).Links.find((l) => l.Name === name)
  if (link === undefined) throw new Error(`${name} not found in ${carRoot}`)
  carRoot = link.Hash
}
if (order === 'dfs') {
  blocks.push(...depthFirst(carRoot))
} else if (order === 'unk' && subpath === '') {
  blocks.push(...emitted.map((cid) => ({ cid, bytes: bytesOf(cid) })))
} else {
  throw new Error(`order ${order} (with subpath ${JSON.stringify(subpath)}) is not supported`)
}

const { writer, out: car } = CarWriter.create([carRoot])
const written = pipeline(Readable.from(car), createWriteStream(out))
for (const block of blocks) await writer.put(block)
await writer.close()
await written
console.log(JSON.stringify({ root: root.toString(), car_root: carRoot.toString(), blocks: blocks.length }))
