// Example CLI for the ortserve Node client.
//
//   node dist/example.js --server 127.0.0.1:PORT --model NAME --input 1,2,3,... --shape 2,16
//                        [--input-name x] [--version N] [--timeout-s 30] [--proto-dir DIR]
//
// Runs one unary Predict, then a PredictStream with 3 messages (the same input), then
// ListModels, and prints one JSON object on stdout:
//   {"unary": {"version": V, "shape": [...], "data": [...]},
//    "stream": [{"id": "0", "version": V, "shape": [...], "data": [...]}, ...],
//    "models": ["name", ...]}
// The input is sent as one FP32 tensor; "shape"/"data" are those of the first output.
// Without --input-name, the input name is read from GetModelSignature.

import { Float32Tensor, OrtserveClient, PredictResult } from "./client";

const STREAM_MESSAGES = 3;

function usage(message: string): never {
  process.stderr.write(
    `error: ${message}\n` +
      "usage: node dist/example.js --server HOST:PORT --model NAME --input 1,2,3,... --shape 2,16 " +
      "[--input-name NAME] [--version N] [--timeout-s SECONDS] [--proto-dir DIR]\n",
  );
  process.exit(2);
}

const OPTIONS = ["server", "model", "input", "shape", "input-name", "version", "timeout-s", "proto-dir"] as const;
type OptionName = (typeof OPTIONS)[number];

// "--key value" or "--key=value". Values may start with "-" (negative numbers), which is
// why util.parseArgs (strict) is not used.
function parseCommandLine(argv: string[]): Partial<Record<OptionName, string>> & { "timeout-s": string } {
  const values: Partial<Record<OptionName, string>> = {};
  for (let i = 0; i < argv.length; i++) {
    let key = argv[i];
    if (key === "-h" || key === "--help") usage("help requested");
    if (!key.startsWith("--")) usage(`unexpected argument: ${key}`);
    let value: string;
    const eq = key.indexOf("=");
    if (eq >= 0) {
      value = key.slice(eq + 1);
      key = key.slice(0, eq);
    } else {
      if (i + 1 >= argv.length) usage(`missing value for ${key}`);
      value = argv[++i];
    }
    const name = key.slice(2) as OptionName;
    if (!OPTIONS.includes(name)) usage(`unknown option ${key}`);
    values[name] = value;
  }
  return { "timeout-s": "30", ...values };
}

function parseList(text: string, what: string, parse: (s: string) => number): number[] {
  const values = text
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "")
    .map(parse);
  if (values.some((v) => Number.isNaN(v))) usage(`bad value for --${what}: ${text}`);
  return values;
}

function firstOutput(result: PredictResult): Float32Tensor {
  if (result.outputs.length === 0) throw new Error("response has no outputs");
  return result.outputs[0];
}

// JSON has no NaN/Infinity: write them as null.
function toJsonNumbers(data: Float32Array): Array<number | null> {
  return Array.from(data, (v) => (Number.isFinite(v) ? v : null));
}

async function main(): Promise<void> {
  const values = parseCommandLine(process.argv.slice(2));
  if (!values.server) usage("--server is required");
  if (!values.model) usage("--model is required");
  if (!values.input) usage("--input is required");
  const input = Float32Array.from(parseList(values.input, "input", Number));
  const shape = values.shape ? parseList(values.shape, "shape", (s) => Number.parseInt(s, 10)) : [input.length];
  const count = shape.reduce((a, b) => a * b, 1);
  if (count !== input.length) usage(`--shape has ${count} elements but --input has ${input.length}`);
  const deadlineMs = Number(values["timeout-s"]) * 1000;
  const version = values.version;

  const client = new OrtserveClient(values.server, { protoDir: values["proto-dir"] });
  try {
    let inputName = values["input-name"];
    if (!inputName) {
      const signature = await client.getModelSignature(values.model, version, deadlineMs);
      if (signature.inputs.length === 0) throw new Error("model has no inputs");
      inputName = signature.inputs[0].name;
    }
    const inputs: Float32Tensor[] = [{ name: inputName, shape, data: input }];

    // 1. Unary Predict.
    const unary = await client.predict(values.model, inputs, { version, deadlineMs });
    const unaryOut = firstOutput(unary);

    // 2. PredictStream with the same input, 3 times.
    const items = Array.from({ length: STREAM_MESSAGES }, (_, i) => ({ id: String(i), inputs, options: { version } }));
    const answers = await client.predictStream(values.model, items, deadlineMs);
    if (answers.length !== STREAM_MESSAGES) {
      throw new Error(`PredictStream returned ${answers.length} answers, expected ${STREAM_MESSAGES}`);
    }
    const stream = answers.map((a) => {
      if (!a.ok) throw new Error(`PredictStream message ${a.id} failed: ${a.error.code} ${a.error.message}`);
      const out = firstOutput(a.result);
      return { id: a.id, version: a.result.version, shape: out.shape, data: toJsonNumbers(out.data) };
    });

    // 3. ListModels.
    const models = (await client.listModels(deadlineMs)).map((m) => m.name);

    const result = {
      unary: { version: unary.version, shape: unaryOut.shape, data: toJsonNumbers(unaryOut.data) },
      stream,
      models,
    };
    process.stdout.write(JSON.stringify(result) + "\n");
  } finally {
    client.close();
  }
}

main().catch((err: unknown) => {
  const e = err as { code?: number; details?: string; message?: string };
  process.stderr.write(`error: ${e.details ? `${e.code} ${e.details}` : e.message ?? String(err)}\n`);
  process.exit(1);
});
