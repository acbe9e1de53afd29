// A Node.js client of agent-runtime built only from proto/ (no generated code):
//   node client.js ADDRESS invoke|stream|redpanda 'REQUEST_JSON'
// prints each response message as one JSON line; a failed call prints
// {"error": {"code": N, "details": "..."}} and exits 2.
'use strict';
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'proto');
const LOAD_OPTIONS = {keepCase: true, longs: String, enums: String, defaults: false, oneofs: true,
                      includeDirs: [PROTO_ROOT]};

function load(file) {
  return grpc.loadPackageDefinition(protoLoader.loadSync(file, LOAD_OPTIONS));
}

function fail(err) {
  console.log(JSON.stringify({error: {code: err.code, details: err.details}}));
  process.exit(2);
}

function bytesToBase64(key, value) {
  return value && value.type === 'Buffer' ? Buffer.from(value.data).toString('base64') : value;
}

function print(message) {
  console.log(JSON.stringify(message, bytesToBase64));
}

// Buffers in the request are written as {"$base64": "..."} in REQUEST_JSON.
function revive(key, value) {
  return value && typeof value === 'object' && '$base64' in value ? Buffer.from(value.$base64, 'base64') : value;
}

const [address, mode, requestJson] = process.argv.slice(2);
const request = JSON.parse(requestJson, revive);
const credentials = grpc.credentials.createInsecure();

if (mode === 'redpanda') {
  const rp = load('redpanda/runtime/v1alpha1/agent.proto').redpanda.runtime.v1alpha1;
  const client = new rp.AgentRuntime(address, credentials);
  client.InvokeAgent(request, (err, reply) => (err ? fail(err) : print(reply)));
} else {
  const api = load('agent_runtime/v1/runtime.proto').agent_runtime.v1;
  const client = new api.AgentRuntime(address, credentials);
  if (mode === 'invoke') {
    client.Invoke(request, (err, reply) => (err ? fail(err) : print(reply)));
  } else if (mode === 'stream') {
    const call = client.InvokeStream(request);
    call.on('data', print);
    call.on('error', fail);
  } else {
    console.error(`unknown mode ${mode}`);
    process.exit(64);
  }
}
