"""Test-only contracts (``contracts/src/test/``): compiled here, with the project's pinned solc,
and deployed by the tests. They never ship: ``contracts/compile.js`` reads ``contracts/src/*.sol``
only, so ``lilypad/chain/artifacts/`` holds none of them."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address
from web3.contract import Contract

from lilypad.chain.abi import Artifact
from lilypad.chain.client import Chain

CONTRACTS = Path(__file__).resolve().parents[2] / "contracts"
TEST_SOURCES = CONTRACTS / "src" / "test"

# Standard JSON in, ABI and bytecode out; imports resolve like compile.js (src/, node_modules/).
_COMPILE = r"""
const fs = require("fs"), path = require("path");
const root = process.argv[1];
const solc = require(path.join(root, "node_modules", "solc"));
const dir = path.join(root, "src", "test");
const sources = {};
for (const name of fs.readdirSync(dir).sort()) {
  if (!name.endsWith(".sol")) continue;
  sources["test/" + name] = { content: fs.readFileSync(path.join(dir, name), "utf8") };
}
function findImport(p) {
  for (const base of [path.join(root, "src"), path.join(root, "node_modules")]) {
    const file = path.join(base, p);
    if (fs.existsSync(file)) return { contents: fs.readFileSync(file, "utf8") };
  }
  return { error: "import not found: " + p };
}
const input = {
  language: "Solidity",
  sources,
  settings: {
    optimizer: { enabled: true, runs: 200 },
    evmVersion: "cancun",
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
  },
};
const out = JSON.parse(solc.compile(JSON.stringify(input), { import: findImport }));
const errors = (out.errors || []).filter((e) => e.severity === "error");
if (errors.length) {
  console.error(errors.map((e) => e.formattedMessage).join("\n"));
  process.exit(1);
}
const result = {};
for (const [file, units] of Object.entries(out.contracts)) {
  if (!file.startsWith("test/")) continue;
  for (const [name, unit] of Object.entries(units)) {
    result[name] = { abi: unit.abi, bytecode: "0x" + unit.evm.bytecode.object };
  }
}
process.stdout.write(JSON.stringify(result));
"""


@functools.cache
def artifacts() -> dict[str, Artifact]:
    """Every contract of ``contracts/src/test/``, by name (compiled once per session)."""
    node = shutil.which("node")
    if node is None or not (CONTRACTS / "node_modules" / "solc").is_dir():
        raise RuntimeError("the test contracts need node and solc (run make contracts-deps)")
    done = subprocess.run(
        [node, "-e", _COMPILE, str(CONTRACTS)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"compiling {TEST_SOURCES} failed:\n{done.stderr}")
    units: dict[str, Any] = json.loads(done.stdout)
    return {
        name: Artifact(name=name, abi=unit["abi"], bytecode=unit["bytecode"])
        for name, unit in units.items()
    }


def deploy_test_contract(chain: Chain, name: str, *args: Any, sender: LocalAccount) -> Contract:
    """Deploy test contract ``name`` from ``sender``; returns it bound to its address."""
    artifact = artifacts()[name]
    factory = chain.w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    with chain.nonces.reserve(sender.address) as nonce:
        tx = factory.constructor(*args).build_transaction(
            {"from": sender.address, "nonce": nonce, "chainId": chain.chain_id}
        )
        tx_hash = chain.w3.eth.send_raw_transaction(sender.sign_transaction(tx).raw_transaction)
    receipt = chain.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)
    address = receipt["contractAddress"]
    assert receipt["status"] == 1, f"deploying {name} failed"
    assert address is not None
    address = to_checksum_address(address)
    return chain.w3.eth.contract(address=address, abi=artifact.abi)
