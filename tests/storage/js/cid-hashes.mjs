// Prints, as JSON, the CIDs multiformats (the JS reference) gives a block's bytes under each hash
// function it ships, and the roots @ipld/car reads from a CAR header given in hex.
//   node cid-hashes.mjs BLOCK_HEX CAR_HEX
import { CarReader } from '@ipld/car'
import { CID } from 'multiformats/cid'
import { identity } from 'multiformats/hashes/identity'
import { sha256, sha512 } from 'multiformats/hashes/sha2'

const [blockHex, carHex] = process.argv.slice(2)
const block = Buffer.from(blockHex, 'hex')
const cids = {}
for (const hasher of [identity, sha256, sha512]) {
  cids[hasher.name] = CID.createV1(0x55, await hasher.digest(block)).toString()
}
const car = await CarReader.fromBytes(Buffer.from(carHex, 'hex'))
const roots = (await car.getRoots()).map(String)
console.log(JSON.stringify({ cids, roots }))
