// Fetches ipfs:// paths with @helia/verified-fetch, using only the gateway under test as its
// trustless gateway (no libp2p, no delegated routing), and prints each body's SHA-256.
//   node gateway-verified-fetch.mjs GATEWAY_URL ipfs://CID/path...
import { createHash } from 'node:crypto'
import { withHTTP } from '@helia/http'
import { createVerifiedFetch } from '@helia/verified-fetch'
import { createHeliaLight } from 'helia'

const [gateway, ...paths] = process.argv.slice(2)
// allowLocal/allowInsecure: the block broker refuses http:// and 127.0.0.1 gateways otherwise.
const helia = withHTTP(createHeliaLight(), {
  delegatedRouters: [],
  recursiveGateways: [gateway],
  allowInsecure: true,
  allowLocal: true
})
// NOTE: Helia asks its ordinary routers before the fallback one that lists the gateway, and with
// none at all its provider search never ends (verified-fetch then hangs until its timeout); an
// empty router lets the search finish and fall back to the gateway at once.
helia.addRouter({ name: 'no-peers', async * findProviders () {} })
await helia.start()
const verifiedFetch = await createVerifiedFetch(helia)
const results = []
try {
  for (const path of paths) {
    const response = await verifiedFetch(path, { signal: AbortSignal.timeout(20000) })
    const body = new Uint8Array(await response.arrayBuffer())
    results.push({
      path,
      status: response.status,
      contentType: response.headers.get('content-type'),
      sha256: createHash('sha256').update(body).digest('hex')
    })
  }
} finally {
  await verifiedFetch.stop()
}
console.log(JSON.stringify(results))
