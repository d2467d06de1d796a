// Reads a TensorBoard event file independently of keel and prints its scalars, one line each:
//   <step> <tag> <value>
// (the value with 9 significant digits, enough to give back the float32 exactly).
//
//   node tests/tensorboard/read_events.mjs FILE
//
// Exit status 0 when every record is whole, both CRCs of every record hold, every record decodes
// as a tensorflow.Event (event.proto, protobufjs), the first one is the file version
// "brain.Event:2" and every other one is a summary of scalars; 1 otherwise (the problem on
// standard error); 2 when it cannot run (no file argument, dependencies not installed).
//
// The framing is checked here with @roboflow/tfrecords's CRC-32C, mask and length helpers. Its
// TFRecordsReader is not used: it decodes every record as a tf.train.Example, and on a CRC
// mismatch it logs and stops reading, reporting success with the records before.

import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);

function fail(message, status = 1) {
  process.stderr.write(`read_events: ${message}\n`);
  process.exit(status);
}

if (process.argv.length !== 3) fail("usage: node read_events.mjs EVENT_FILE", 2);
const file = process.argv[2];

let protobuf, crc32c, maskCrc, readInt64;
try {
  protobuf = require("protobufjs");
  ({ crc32c, maskCrc, readInt64 } = require("@roboflow/tfrecords/src/tensorFlowHelpers.js"));
} catch (error) {
  if (error && error.code === "MODULE_NOT_FOUND")
    fail(`${error.message.split("\n")[0]}; install the reader's dependencies: npm ci --prefix tests/tensorboard`, 2);
  throw error;
}

// keepCase: the field names of event.proto as written (wall_time, not wallTime).
const root = new protobuf.Root().loadSync(fileURLToPath(new URL("./event.proto", import.meta.url)), { keepCase: true });
const Event = root.lookupType("tensorflow.Event");

let bytes;
try {
  bytes = readFileSync(file);
} catch (error) {
  fail(`cannot read ${file}: ${error.message}`);
}

/// The records' data, each checked: a header of 12 bytes, the length's CRC, the whole data and
/// its CRC present, the data's CRC.
function records(buffer) {
  const out = [];
  let at = 0;
  while (at < buffer.length) {
    const where = `record ${out.length} at byte ${at}`;
    if (buffer.length - at < 12) fail(`${where}: truncated header (${buffer.length - at} bytes left)`);
    const lengthBytes = buffer.subarray(at, at + 8);
    if (maskCrc(crc32c(lengthBytes)) !== buffer.readUInt32LE(at + 8)) fail(`${where}: length CRC mismatch`);
    const length = readInt64(lengthBytes);
    if (!Number.isSafeInteger(length) || length > buffer.length - at - 16)
      fail(`${where}: truncated data (length ${length}, ${buffer.length - at - 12} bytes left)`);
    const data = buffer.subarray(at + 12, at + 12 + length);
    if (maskCrc(crc32c(data)) !== buffer.readUInt32LE(at + 12 + length)) fail(`${where}: data CRC mismatch`);
    out.push(data);
    at += 16 + length;
  }
  return out;
}

const lines = [];
const data = records(bytes);
if (data.length === 0) fail(`${file} holds no records`);
data.forEach((record, index) => {
  let event;
  try {
    event = Event.toObject(Event.decode(record), { longs: String, oneofs: true });
  } catch (error) {
    fail(`record ${index}: not a tensorflow.Event: ${error.message}`);
  }
  if (typeof event.wall_time !== "number" || !Number.isFinite(event.wall_time) || event.wall_time <= 0)
    fail(`record ${index}: wall_time ${event.wall_time} is not a time`);
  if (index === 0) {
    if (event.what !== "file_version" || event.file_version !== "brain.Event:2")
      fail(`record 0: expected file_version "brain.Event:2", got ${JSON.stringify(event)}`);
    return;
  }
  if (event.what !== "summary") fail(`record ${index}: expected a summary, got ${JSON.stringify(event)}`);
  const step = event.step ?? "0";
  for (const value of event.summary.value ?? []) {
    if (!value.tag) fail(`record ${index}: a value without a tag`);
    if (value.value !== "simple_value") fail(`record ${index}: ${value.tag} is not a simple_value scalar`);
    lines.push(`${step} ${value.tag} ${value.simple_value.toPrecision(9)}`);
  }
});
process.stdout.write(lines.map((line) => line + "\n").join(""));
