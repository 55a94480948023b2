// Reads CARs from a gateway with the reference JS CAR reader and verifies every block.
//   node gateway-car.mjs URL...
// For each URL prints (one JSON array on stdout) the response's Content-Type, the CAR's roots and
// its blocks in order, each with the CIDs its dag-pb node links to. Exits non-zero if a block's
// bytes do not hash to its CID or a CAR does not parse.
import * as dagPB from '@ipld/dag-pb'
import { CarReader } from '@ipld/car'
import { identity } from 'multiformats/hashes/identity'
import { sha256, sha512 } from 'multiformats/hashes/sha2'

const equals = (a, b) => a.length === b.length && a.every((x, i) => x === b[i])
const hashers = { [sha256.code]: sha256, [sha512.code]: sha512, [identity.code]: identity }

async function read (url) {
  const response = await fetch(url, { signal: AbortSignal.timeout(20000) })
  if (response.status !== 200) throw new Error(`${url}: HTTP ${response.status}`)
  const reader = await CarReader.fromBytes(new Uint8Array(await response.arrayBuffer()))
  const blocks = []
  for await (const { cid, bytes } of reader.blocks()) {
    const hasher = hashers[cid.multihash.code]
    if (hasher == null) throw new Error(`${cid}: hash 0x${cid.multihash.code.toString(16)} unknown`)
    const digest = await hasher.digest(bytes)
    if (!equals(digest.bytes, cid.multihash.bytes)) throw new Error(`${url}: ${cid} does not match its bytes`)
    const links = cid.code === dagPB.code ? dagPB.decode(bytes).Links.map(l => l.Hash.toString()) : []
    blocks.push({ cid: cid.toString(), links })
  }
  const roots = (await reader.getRoots()).map(String)
  return { url, contentType: response.headers.get('content-type'), roots, blocks }
}

const results = []
for (const url of process.argv.slice(2)) results.push(await read(url))
console.log(JSON.stringify(results))
