// Example Java client for ortserve.
//
//   java -cp ... ortserve.example.Example --server 127.0.0.1:PORT --model NAME --input 1,2,3,... --shape 2,16
//        [--input-name x] [--version N] [--timeout-s 30]
//
// Runs one unary Predict, then a PredictStream with 3 messages (the same input), then
// ListModels, and prints one JSON object on stdout:
//   {"unary": {"version": V, "shape": [...], "data": [...]},
//    "stream": [{"id": "0", "version": V, "shape": [...], "data": [...]}, ...],
//    "models": ["name", ...]}
// The input is sent as one FP32 tensor; "shape"/"data" are those of the first output.
// Without --input-name, the input name is read from GetModelSignature.
// Errors go to stderr and the exit status is non-zero.
package ortserve.example;

import com.google.protobuf.ByteString;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.StatusRuntimeException;
import io.grpc.stub.StreamObserver;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import ortserve.api.v1.InferenceServiceGrpc;
import ortserve.api.v1.InferenceServiceOuterClass.GetModelSignatureRequest;
import ortserve.api.v1.InferenceServiceOuterClass.GetModelSignatureResponse;
import ortserve.api.v1.InferenceServiceOuterClass.PredictRequest;
import ortserve.api.v1.InferenceServiceOuterClass.PredictResponse;
import ortserve.api.v1.InferenceServiceOuterClass.PredictStreamRequest;
import ortserve.api.v1.InferenceServiceOuterClass.PredictStreamResponse;
import ortserve.api.v1.RegistryServiceGrpc;
import ortserve.api.v1.RegistryServiceOuterClass.ListModelsRequest;
import ortserve.api.v1.RegistryServiceOuterClass.ListModelsResponse;
import ortserve.api.v1.TensorOuterClass.DataType;
import ortserve.api.v1.TensorOuterClass.Tensor;

public final class Example {
  private static final int STREAM_MESSAGES = 3;

  private String server = "";
  private String model = "";
  private String version = "";
  private String inputName = "";
  private final List<Float> input = new ArrayList<>();
  private final List<Long> shape = new ArrayList<>();
  private double timeoutS = 30.0;

  private static void usage(String error) {
    System.err.println("error: " + error);
    System.err.println(
        "usage: Example --server HOST:PORT --model NAME --input 1,2,3,... --shape 2,16 "
            + "[--input-name NAME] [--version N] [--timeout-s SECONDS]");
    System.exit(2);
  }

  private static List<String> splitCommas(String text) {
    List<String> parts = new ArrayList<>();
    for (String p : text.split(",")) {
      if (!p.trim().isEmpty()) parts.add(p.trim());
    }
    return parts;
  }

  // "--key value" or "--key=value"; values may start with "-" (negative numbers).
  private static Example parseArgs(String[] argv) {
    Map<String, String> values = new HashMap<>();
    for (int i = 0; i < argv.length; i++) {
      String key = argv[i];
      if (key.equals("-h") || key.equals("--help")) usage("help requested");
      if (!key.startsWith("--")) usage("unexpected argument: " + key);
      String value;
      int eq = key.indexOf('=');
      if (eq >= 0) {
        value = key.substring(eq + 1);
        key = key.substring(0, eq);
      } else {
        if (i + 1 >= argv.length) usage("missing value for " + key);
        value = argv[++i];
      }
      values.put(key.substring(2), value);
    }
    Example a = new Example();
    for (Map.Entry<String, String> e : values.entrySet()) {
      String key = e.getKey();
      String value = e.getValue();
      try {
        switch (key) {
          case "server": a.server = value; break;
          case "model": a.model = value; break;
          case "version": a.version = value; break;
          case "input-name": a.inputName = value; break;
          case "timeout-s": a.timeoutS = Double.parseDouble(value); break;
          case "input":
            for (String s : splitCommas(value)) a.input.add(Float.parseFloat(s));
            break;
          case "shape":
            for (String s : splitCommas(value)) a.shape.add(Long.parseLong(s));
            break;
          default: usage("unknown option --" + key);
        }
      } catch (NumberFormatException ex) {
        usage("bad value for --" + key + ": " + value);
      }
    }
    if (a.server.isEmpty()) usage("--server is required");
    if (a.model.isEmpty()) usage("--model is required");
    if (a.input.isEmpty()) usage("--input is required");
    if (a.shape.isEmpty()) a.shape.add((long) a.input.size());
    long count = 1;
    for (long d : a.shape) count *= d;
    if (count != a.input.size()) {
      usage("--shape has " + count + " elements but --input has " + a.input.size());
    }
    return a;
  }

  // Tensor.raw_data is little-endian whatever the host.
  private static ByteString encodeFloats(List<Float> values) {
    ByteBuffer buf = ByteBuffer.allocate(4 * values.size()).order(ByteOrder.LITTLE_ENDIAN);
    for (float v : values) buf.putFloat(v);
    buf.flip();
    return ByteString.copyFrom(buf);
  }

  private static float[] decodeFloats(Tensor t) {
    if (t.getDataType() != DataType.DATA_TYPE_FP32) {
      throw new IllegalStateException("output " + t.getName() + " is " + t.getDataType() + ", not DATA_TYPE_FP32");
    }
    ByteBuffer raw = t.getRawData().asReadOnlyByteBuffer().order(ByteOrder.LITTLE_ENDIAN);
    if (raw.remaining() % 4 != 0) {
      throw new IllegalStateException("output " + t.getName() + " has a raw_data size not a multiple of 4");
    }
    float[] out = new float[raw.remaining() / 4];
    for (int i = 0; i < out.length; i++) out[i] = raw.getFloat();
    return out;
  }

  private static String jsonString(String s) {
    StringBuilder out = new StringBuilder("\"");
    for (char c : s.toCharArray()) {
      switch (c) {
        case '"': out.append("\\\""); break;
        case '\\': out.append("\\\\"); break;
        case '\n': out.append("\\n"); break;
        case '\r': out.append("\\r"); break;
        case '\t': out.append("\\t"); break;
        default:
          if (c < 0x20) out.append(String.format("\\u%04x", (int) c));
          else out.append(c);
      }
    }
    return out.append('"').toString();
  }

  // Float.toString is the shortest text that parses back to the same float; JSON has no NaN.
  private static String jsonOutput(String id, PredictResponse resp) {
    if (resp.getOutputsCount() == 0) throw new IllegalStateException("response has no outputs");
    Tensor t = resp.getOutputs(0);
    StringBuilder out = new StringBuilder("{");
    if (id != null) out.append("\"id\": ").append(jsonString(id)).append(", ");
    out.append("\"version\": ").append(resp.getModelVersion()).append(", \"shape\": [");
    for (int i = 0; i < t.getShapeCount(); i++) {
      if (i > 0) out.append(", ");
      out.append(t.getShape(i));
    }
    out.append("], \"data\": [");
    float[] data = decodeFloats(t);
    for (int i = 0; i < data.length; i++) {
      if (i > 0) out.append(", ");
      out.append(Float.isFinite(data[i]) ? Float.toString(data[i]) : "null");
    }
    return out.append("]}").toString();
  }

  private long timeoutMs() {
    return (long) (timeoutS * 1000);
  }

  private String run() throws InterruptedException, ExecutionException {
    ManagedChannel channel = ManagedChannelBuilder.forTarget(server).usePlaintext().build();
    try {
      InferenceServiceGrpc.InferenceServiceBlockingStub inference = InferenceServiceGrpc.newBlockingStub(channel);
      RegistryServiceGrpc.RegistryServiceBlockingStub registry = RegistryServiceGrpc.newBlockingStub(channel);

      String name = inputName;
      if (name.isEmpty()) {
        GetModelSignatureResponse sig = inference.withDeadlineAfter(timeoutMs(), TimeUnit.MILLISECONDS)
            .getModelSignature(GetModelSignatureRequest.newBuilder().setModel(model).setVersion(version).build());
        if (sig.getSignature().getInputsCount() == 0) throw new IllegalStateException("model has no inputs");
        name = sig.getSignature().getInputs(0).getName();
      }
      PredictRequest request = PredictRequest.newBuilder()
          .setModel(model)
          .setVersion(version)
          .addInputs(Tensor.newBuilder().setName(name).setDataType(DataType.DATA_TYPE_FP32)
              .addAllShape(shape).setRawData(encodeFloats(input)))
          .build();

      // 1. Unary Predict.
      PredictResponse unary = inference.withDeadlineAfter(timeoutMs(), TimeUnit.MILLISECONDS).predict(request);

      // 2. PredictStream: send all messages, half-close, collect every answer.
      List<PredictStreamResponse> answers = new ArrayList<>();
      CompletableFuture<Void> done = new CompletableFuture<>();
      StreamObserver<PredictStreamRequest> requests = InferenceServiceGrpc.newStub(channel)
          .withDeadlineAfter(timeoutMs(), TimeUnit.MILLISECONDS)
          .predictStream(new StreamObserver<PredictStreamResponse>() {
            @Override public void onNext(PredictStreamResponse answer) {
              synchronized (answers) { answers.add(answer); }
            }
            @Override public void onError(Throwable t) { done.completeExceptionally(t); }
            @Override public void onCompleted() { done.complete(null); }
          });
      for (int i = 0; i < STREAM_MESSAGES; i++) {
        requests.onNext(PredictStreamRequest.newBuilder().setId(Integer.toString(i)).setRequest(request).build());
      }
      requests.onCompleted();
      done.get();
      if (answers.size() != STREAM_MESSAGES) {
        throw new IllegalStateException(
            "PredictStream returned " + answers.size() + " answers, expected " + STREAM_MESSAGES);
      }
      for (PredictStreamResponse a : answers) {
        if (a.hasError()) {
          throw new IllegalStateException("PredictStream message " + a.getId() + " failed: "
              + a.getError().getCode() + " " + a.getError().getMessage());
        }
      }

      // 3. ListModels, following pages.
      List<String> models = new ArrayList<>();
      String token = "";
      do {
        ListModelsResponse page = registry.withDeadlineAfter(timeoutMs(), TimeUnit.MILLISECONDS)
            .listModels(ListModelsRequest.newBuilder().setPageToken(token).build());
        page.getModelsList().forEach(m -> models.add(m.getName()));
        token = page.getNextPageToken();
      } while (!token.isEmpty());

      // One JSON object.
      StringBuilder json = new StringBuilder("{\"unary\": ").append(jsonOutput(null, unary)).append(", \"stream\": [");
      for (int i = 0; i < answers.size(); i++) {
        if (i > 0) json.append(", ");
        json.append(jsonOutput(answers.get(i).getId(), answers.get(i).getResponse()));
      }
      json.append("], \"models\": [");
      for (int i = 0; i < models.size(); i++) {
        if (i > 0) json.append(", ");
        json.append(jsonString(models.get(i)));
      }
      return json.append("]}").toString();
    } finally {
      channel.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
    }
  }

  public static void main(String[] argv) {
    Example args = parseArgs(argv);
    try {
      System.out.println(args.run());
      System.exit(0);
    } catch (StatusRuntimeException e) {
      System.err.println("error: " + e.getStatus());
    } catch (ExecutionException e) {
      System.err.println("error: PredictStream failed: " + e.getCause());
    } catch (Exception e) {
      System.err.println("error: " + e);
    }
    System.exit(1);
  }
}
