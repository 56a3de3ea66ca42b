// A small typed wrapper over the ortserve gRPC API for Node.js.
//
// The .proto files are loaded at runtime with @grpc/proto-loader (no code generation,
// no downloaded binaries). By default they are read from the repository's protos/
// directory (../../protos relative to clients/node); pass `protoDir` to use another copy.

import * as path from "path";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

/** Default location of the protos: <repo>/protos, seen from clients/node/dist or src. */
export const DEFAULT_PROTO_DIR = path.resolve(__dirname, "..", "..", "..", "protos");

const PROTO_FILES = ["ortserve/api/v1/inference_service.proto", "ortserve/api/v1/registry_service.proto"];

/** DataType enum values of tensor.proto (as numbers on the wire). */
export const DataType = {
  UNSPECIFIED: 0,
  BOOL: 1,
  UINT8: 2,
  UINT16: 3,
  UINT32: 4,
  UINT64: 5,
  INT8: 6,
  INT16: 7,
  INT32: 8,
  INT64: 9,
  FP16: 10,
  FP32: 11,
  FP64: 12,
  STRING: 13,
} as const;

/** A dense FP32 tensor on the client side. */
export interface Float32Tensor {
  name: string;
  shape: number[];
  data: Float32Array;
}

export interface PredictOptions {
  /** Version selector: a number pins a version; empty/undefined serves the latest ready one. */
  version?: string | number;
  /** Outputs to return; empty returns all. */
  outputNames?: string[];
  routingKey?: string;
  priority?: number;
  /** Server-side timeout in microseconds (0: the gRPC deadline alone). */
  timeoutUs?: number;
  /** Client-side gRPC deadline, in milliseconds from now. */
  deadlineMs?: number;
}

export interface Timing {
  queueUs: number;
  computeUs: number;
  batchSize: number;
  provider: string;
}

export interface PredictResult {
  model: string;
  version: number;
  outputs: Float32Tensor[];
  timing?: Timing;
}

/** One item of a prediction stream: its id plus a result or an in-band error. */
export interface StreamItem {
  id: string;
  inputs: Float32Tensor[];
  options?: PredictOptions;
}

export type StreamResult =
  | { id: string; ok: true; result: PredictResult }
  | { id: string; ok: false; error: { code: number; message: string } };

export interface ModelVersionInfo {
  version: number;
  state: string;
  sha256: string;
}

export interface ModelInfo {
  name: string;
  description: string;
  versions: ModelVersionInfo[];
}

export interface TensorSpec {
  name: string;
  dataType: string;
  shape: number[];
}

export interface ModelSignature {
  model: string;
  version: number;
  inputs: TensorSpec[];
  outputs: TensorSpec[];
  batchAxis: boolean;
}

export interface ClientOptions {
  /** Directory holding ortserve/api/v1/*.proto. */
  protoDir?: string;
  /** Channel credentials; plaintext by default. */
  credentials?: grpc.ChannelCredentials;
  channelOptions?: grpc.ChannelOptions;
}

// ---- wire shapes (as produced by proto-loader with the options below) ----

interface WireTensor {
  name: string;
  dataType: number | string;
  shape: Array<string | number>;
  rawData: Buffer;
}

interface WirePredictResponse {
  outputs: WireTensor[];
  model: string;
  modelVersion: string | number;
  timing?: { queueUs: string | number; computeUs: string | number; batchSize: number; provider: string } | null;
}

interface WireStreamResponse {
  id: string;
  result?: "response" | "error";
  response?: WirePredictResponse | null;
  error?: { code: number; message: string } | null;
}

type Callback<T> = (err: grpc.ServiceError | null, value?: T) => void;
type UnaryMethod = (req: unknown, metadata: grpc.Metadata, options: grpc.CallOptions, cb: Callback<any>) => grpc.ClientUnaryCall;

interface ServiceClient extends grpc.Client {
  [method: string]: any;
}

const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: false, // camelCase field names
  longs: String, // int64/uint64 as decimal strings (no precision loss)
  enums: Number,
  bytes: Buffer,
  defaults: true,
  oneofs: true, // sets the virtual `result` oneof field
};

const packageCache = new Map<string, grpc.GrpcObject>();

function loadPackage(protoDir: string): grpc.GrpcObject {
  let pkg = packageCache.get(protoDir);
  if (!pkg) {
    const definition = protoLoader.loadSync(PROTO_FILES, { ...LOADER_OPTIONS, includeDirs: [protoDir] });
    pkg = grpc.loadPackageDefinition(definition);
    packageCache.set(protoDir, pkg);
  }
  return pkg;
}

function lookup(pkg: grpc.GrpcObject, name: string): grpc.ServiceClientConstructor {
  let node: any = pkg;
  for (const part of name.split(".")) node = node?.[part];
  if (typeof node !== "function") throw new Error(`service ${name} not found in the protos`);
  return node as grpc.ServiceClientConstructor;
}

/** Encodes a Float32Array as little-endian bytes. */
export function float32ToBytes(data: Float32Array): Buffer {
  const buf = Buffer.alloc(data.length * 4);
  for (let i = 0; i < data.length; i++) buf.writeFloatLE(data[i], i * 4);
  return buf;
}

/** Decodes little-endian FP32 bytes. */
export function bytesToFloat32(raw: Buffer): Float32Array {
  if (raw.length % 4 !== 0) throw new Error(`FP32 raw_data of ${raw.length} bytes is not a multiple of 4`);
  const out = new Float32Array(raw.length / 4);
  for (let i = 0; i < out.length; i++) out[i] = raw.readFloatLE(i * 4);
  return out;
}

function toWireTensor(t: Float32Tensor): WireTensor {
  const count = t.shape.reduce((a, b) => a * b, 1);
  if (count !== t.data.length) {
    throw new Error(`tensor ${t.name}: shape [${t.shape}] has ${count} elements, data has ${t.data.length}`);
  }
  return { name: t.name, dataType: DataType.FP32, shape: t.shape.map(String), rawData: float32ToBytes(t.data) };
}

function fromWireTensor(t: WireTensor): Float32Tensor {
  const dataType = Number(t.dataType);
  if (dataType !== DataType.FP32) {
    throw new Error(`output ${t.name} has data type ${t.dataType}; this client decodes FP32 only`);
  }
  return { name: t.name, shape: t.shape.map(Number), data: bytesToFloat32(t.rawData) };
}

function toWireRequest(model: string, inputs: Float32Tensor[], options: PredictOptions = {}) {
  return {
    model,
    version: options.version === undefined ? "" : String(options.version),
    inputs: inputs.map(toWireTensor),
    outputNames: options.outputNames ?? [],
    routingKey: options.routingKey ?? "",
    priority: options.priority ?? 0,
    timeoutUs: String(options.timeoutUs ?? 0),
  };
}

function fromWireResponse(r: WirePredictResponse): PredictResult {
  return {
    model: r.model,
    version: Number(r.modelVersion),
    outputs: r.outputs.map(fromWireTensor),
    timing: r.timing
      ? {
          queueUs: Number(r.timing.queueUs),
          computeUs: Number(r.timing.computeUs),
          batchSize: r.timing.batchSize,
          provider: r.timing.provider,
        }
      : undefined,
  };
}

const VERSION_STATES = ["UNSPECIFIED", "REGISTERED", "LOADING", "READY", "FAILED", "RETIRED"];
const DATA_TYPE_NAMES = Object.fromEntries(Object.entries(DataType).map(([k, v]) => [v, k])) as Record<number, string>;

/** Client for an ortserve server (InferenceService + RegistryService over one channel). */
export class OrtserveClient {
  private readonly inference: ServiceClient;
  private readonly registry: ServiceClient;

  /** @param address host:port, e.g. "127.0.0.1:50051" */
  constructor(address: string, options: ClientOptions = {}) {
    const pkg = loadPackage(options.protoDir ?? DEFAULT_PROTO_DIR);
    const credentials = options.credentials ?? grpc.credentials.createInsecure();
    const Inference = lookup(pkg, "ortserve.api.v1.InferenceService");
    const Registry = lookup(pkg, "ortserve.api.v1.RegistryService");
    this.inference = new Inference(address, credentials, options.channelOptions) as ServiceClient;
    // Share the first client's channel.
    this.registry = new Registry(address, credentials, {
      ...options.channelOptions,
      channelOverride: this.inference.getChannel(),
    }) as ServiceClient;
  }

  close(): void {
    this.inference.close();
    this.registry.close();
  }

  private unary<T>(client: ServiceClient, method: string, request: unknown, deadlineMs?: number): Promise<T> {
    const fn = client[method] as UnaryMethod;
    const callOptions: grpc.CallOptions = deadlineMs ? { deadline: Date.now() + deadlineMs } : {};
    return new Promise<T>((resolve, reject) => {
      fn.call(client, request, new grpc.Metadata(), callOptions, (err: grpc.ServiceError | null, value?: T) => {
        if (err) reject(err);
        else resolve(value as T);
      });
    });
  }

  /** One prediction. */
  async predict(model: string, inputs: Float32Tensor[], options: PredictOptions = {}): Promise<PredictResult> {
    const resp = await this.unary<WirePredictResponse>(
      this.inference,
      "Predict",
      toWireRequest(model, inputs, options),
      options.deadlineMs,
    );
    return fromWireResponse(resp);
  }

  /**
   * Sends every item over one PredictStream, half-closes, and resolves with the answers
   * in the order they arrive (the server answers in request order). A bad item gets an
   * in-band error (ok: false); a failure of the whole stream rejects.
   */
  predictStream(model: string, items: StreamItem[], deadlineMs?: number): Promise<StreamResult[]> {
    const callOptions: grpc.CallOptions = deadlineMs ? { deadline: Date.now() + deadlineMs } : {};
    const call: grpc.ClientDuplexStream<unknown, WireStreamResponse> = this.inference.PredictStream(
      new grpc.Metadata(),
      callOptions,
    );
    return new Promise<StreamResult[]>((resolve, reject) => {
      const results: StreamResult[] = [];
      let failed = false;
      call.on("data", (msg: WireStreamResponse) => {
        try {
          if (msg.result === "error" || (msg.error && !msg.response)) {
            const e = msg.error ?? { code: 2, message: "unknown error" };
            results.push({ id: msg.id, ok: false, error: { code: e.code, message: e.message } });
          } else {
            results.push({ id: msg.id, ok: true, result: fromWireResponse(msg.response as WirePredictResponse) });
          }
        } catch (err) {
          failed = true;
          call.cancel();
          reject(err);
        }
      });
      call.on("error", (err) => {
        if (!failed) {
          failed = true;
          reject(err);
        }
      });
      call.on("end", () => {
        if (!failed) resolve(results);
      });
      try {
        for (const item of items) {
          call.write({ id: item.id, request: toWireRequest(model, item.inputs, item.options) });
        }
        call.end();
      } catch (err) {
        failed = true;
        call.cancel();
        reject(err);
      }
    });
  }

  /** Every registered model (follows pagination). */
  async listModels(deadlineMs?: number): Promise<ModelInfo[]> {
    const models: ModelInfo[] = [];
    let pageToken = "";
    do {
      const resp = await this.unary<{ models: any[]; nextPageToken: string }>(
        this.registry,
        "ListModels",
        { pageSize: 0, pageToken },
        deadlineMs,
      );
      for (const m of resp.models) {
        models.push({
          name: m.name,
          description: m.description,
          versions: (m.versions ?? []).map((v: any) => ({
            version: Number(v.version),
            state: VERSION_STATES[Number(v.state)] ?? String(v.state),
            sha256: v.sha256,
          })),
        });
      }
      pageToken = resp.nextPageToken;
    } while (pageToken);
    return models;
  }

  /** Inputs and outputs of a model version (latest ready one unless `version` is set). */
  async getModelSignature(model: string, version?: string | number, deadlineMs?: number): Promise<ModelSignature> {
    const resp = await this.unary<any>(
      this.inference,
      "GetModelSignature",
      { model, version: version === undefined ? "" : String(version) },
      deadlineMs,
    );
    const spec = (s: any): TensorSpec => ({
      name: s.name,
      dataType: DATA_TYPE_NAMES[Number(s.dataType)] ?? String(s.dataType),
      shape: s.shape.map(Number),
    });
    return {
      model: resp.model,
      version: Number(resp.modelVersion),
      inputs: (resp.signature?.inputs ?? []).map(spec),
      outputs: (resp.signature?.outputs ?? []).map(spec),
      batchAxis: Boolean(resp.signature?.batchAxis),
    };
  }
}
