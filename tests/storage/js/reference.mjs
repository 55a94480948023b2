// Prints the root CID that the reference JS UnixFS importer (ipfs-unixfs-importer) computes for a
// file or directory, with kubo's layout options. Used by tests/storage to check our importer.
//   node reference.mjs PATH CID_VERSION RAW_LEAVES(0|1) CHUNK_SIZE MAX_LINKS
import { lstatSync, readdirSync, readFileSync, readlinkSync } from 'node:fs'
import { basename, join } from 'node:path'
import { BlackHoleBlockstore } from 'blockstore-core/black-hole'
import { importer } from 'ipfs-unixfs-importer'
import { fixedSize } from 'ipfs-unixfs-importer/chunker'
import { balanced } from 'ipfs-unixfs-importer/layout'

const [path, cidVersion, rawLeaves, chunkSize, maxLinks] = process.argv.slice(2)

function * candidates (full, rel) {
  const stat = lstatSync(full)
  if (stat.isSymbolicLink()) {
    yield { path: rel, link: readlinkSync(full) }
  } else if (stat.isDirectory()) {
    const names = readdirSync(full).sort()
    if (names.length === 0) yield { path: rel }
    for (const name of names) yield * candidates(join(full, name), `${rel}/${name}`)
  } else {
    yield { path: rel, content: readFileSync(full) }
  }
}

let last
for await (const entry of importer(candidates(path, basename(path)), new BlackHoleBlockstore(), {
  cidVersion: Number(cidVersion),
  rawLeaves: rawLeaves === '1',
  leafType: 'file',
  reduceSingleLeafToSelf: true,
  chunker: fixedSize({ chunkSize: Number(chunkSize) }),
  layout: balanced({ maxChildrenPerNode: Number(maxLinks) }),
  shardSplitStrategy: 'links-bytes',
  shardSplitThresholdBytes: 262144
})) {
  last = entry
}
console.log(last.cid.toString())
