#!/usr/bin/env node
// Compile contracts/src/*.sol with the pinned solc from npm and write one JSON artifact per
// deployable contract (ABI + creation bytecode) into lilypad/chain/artifacts/, which the Python
// package ships. `node compile.js --check` compiles in memory and fails if the artifacts on disk
// differ (CI uses it to catch stale artifacts).
"use strict";
const fs = require("fs");
const path = require("path");
const solc = require("solc");

const ROOT = __dirname;
const SRC = path.join(ROOT, "src");
const OUT = path.join(ROOT, "..", "lilypad", "chain", "artifacts");
const CONTRACTS = ["LilypadToken", "JobMarket", "JobCreator", "ExampleClient", "ILilypadJobClient"];
const SETTINGS = {
  viaIR: true,
  optimizer: { enabled: true, runs: 1000000 },
  evmVersion: "cancun",
  outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
};

function findImport(importPath) {
  for (const base of [SRC, path.join(ROOT, "node_modules")]) {
    const file = path.join(base, importPath);
    if (fs.existsSync(file)) return { contents: fs.readFileSync(file, "utf8") };
  }
  return { error: `import not found: ${importPath}` };
}

function compile() {
  const sources = {};
  for (const name of fs.readdirSync(SRC).sort()) {
    if (name.endsWith(".sol")) sources[name] = { content: fs.readFileSync(path.join(SRC, name), "utf8") };
  }
  const input = { language: "Solidity", sources, settings: SETTINGS };
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImport }));
  // Warnings in our sources fail the build too (library warnings are OpenZeppelin's to keep).
  const ours = (e) => !(e.sourceLocation && e.sourceLocation.file.startsWith("@openzeppelin/"));
  const errors = (output.errors || []).filter((e) => e.severity === "error" || (e.severity === "warning" && ours(e)));
  for (const e of errors) console.error(e.formattedMessage);
  if (errors.length) process.exit(1);
  const artifacts = {};
  for (const name of CONTRACTS) {
    const unit = output.contracts[`${name}.sol`][name];
    artifacts[name] = JSON.stringify(
      {
        contractName: name,
        compiler: `solc ${solc.version()}`,
        settings: { viaIR: SETTINGS.viaIR, optimizer: SETTINGS.optimizer, evmVersion: SETTINGS.evmVersion },
        abi: unit.abi,
        bytecode: unit.evm.bytecode.object ? "0x" + unit.evm.bytecode.object : "0x",
      },
      null,
      2,
    ) + "\n";
  }
  return artifacts;
}

const check = process.argv.includes("--check");
const artifacts = compile();
let stale = [];
if (!check) fs.mkdirSync(OUT, { recursive: true });
for (const [name, text] of Object.entries(artifacts)) {
  const file = path.join(OUT, `${name}.json`);
  const current = fs.existsSync(file) ? fs.readFileSync(file, "utf8") : null;
  if (current === text) continue;
  if (check) stale.push(name);
  else fs.writeFileSync(file, text);
}
if (stale.length) {
  console.error(`stale contract artifacts: ${stale.join(", ")}; run \`make contracts\` and commit the result`);
  process.exit(1);
}
console.log(check ? "contract artifacts are up to date" : `wrote ${Object.keys(artifacts).length} artifacts to ${OUT}`);
