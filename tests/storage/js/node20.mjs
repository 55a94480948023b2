// Debian's Node is 20; the pinned IPFS packages call Promise.withResolvers (ES2024, Node 22).
// Loaded with `node --import` before each test script.
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function withResolvers () {
    let resolve, reject
    const promise = new this((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}
