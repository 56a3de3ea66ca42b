// Example C++ client for ortserve.
//
//   ortserve_example --server 127.0.0.1:PORT --model NAME --input 1,2,3,... --shape 2,16
//                    [--input-name x] [--version N] [--timeout-s 30]
//
// Runs one unary Predict, then a PredictStream with 3 messages (the same input), then
// ListModels, and prints one JSON object on stdout:
//   {"unary": {"version": V, "shape": [...], "data": [...]},
//    "stream": [{"id": "0", "shape": [...], "data": [...]}, ...],
//    "models": ["name", ...]}
// The input is sent as one FP32 tensor; "shape"/"data" are those of the first output.
// Without --input-name, the input name is read from GetModelSignature.
// Errors go to stderr and the exit status is non-zero.

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "ortserve/api/v1/inference_service.grpc.pb.h"
#include "ortserve/api/v1/registry_service.grpc.pb.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "this example assumes a little-endian host (Tensor.raw_data is little-endian)"
#endif

namespace api = ortserve::api::v1;

namespace {

constexpr int kStreamMessages = 3;

struct Args {
  std::string server;
  std::string model;
  std::string version;
  std::string input_name;
  std::vector<float> input;
  std::vector<int64_t> shape;
  double timeout_s = 30.0;
};

[[noreturn]] void Usage(const std::string& error) {
  std::cerr << "error: " << error << "\n"
            << "usage: ortserve_example --server HOST:PORT --model NAME --input 1,2,3,... "
               "--shape 2,16 [--input-name NAME] [--version N] [--timeout-s SECONDS]\n";
  std::exit(2);
}

std::vector<std::string> SplitCommas(const std::string& text) {
  std::vector<std::string> parts;
  std::stringstream ss(text);
  std::string part;
  while (std::getline(ss, part, ',')) {
    if (!part.empty()) parts.push_back(part);
  }
  return parts;
}

Args ParseArgs(int argc, char** argv) {
  std::map<std::string, std::string> values;
  for (int i = 1; i < argc; ++i) {
    std::string key = argv[i];
    if (key == "-h" || key == "--help") Usage("help requested");
    if (key.rfind("--", 0) != 0) Usage("unexpected argument: " + key);
    std::string value;
    const auto eq = key.find('=');
    if (eq != std::string::npos) {
      value = key.substr(eq + 1);
      key = key.substr(0, eq);
    } else {
      if (i + 1 >= argc) Usage("missing value for " + key);
      value = argv[++i];
    }
    values[key.substr(2)] = value;
  }
  Args args;
  for (const auto& [key, value] : values) {
    try {
      if (key == "server") {
        args.server = value;
      } else if (key == "model") {
        args.model = value;
      } else if (key == "version") {
        args.version = value;
      } else if (key == "input-name") {
        args.input_name = value;
      } else if (key == "timeout-s") {
        args.timeout_s = std::stod(value);
      } else if (key == "input") {
        for (const auto& s : SplitCommas(value)) args.input.push_back(std::stof(s));
      } else if (key == "shape") {
        for (const auto& s : SplitCommas(value)) args.shape.push_back(std::stoll(s));
      } else {
        Usage("unknown option --" + key);
      }
    } catch (const std::logic_error&) {
      Usage("bad value for --" + key + ": " + value);
    }
  }
  if (args.server.empty()) Usage("--server is required");
  if (args.model.empty()) Usage("--model is required");
  if (args.input.empty()) Usage("--input is required");
  if (args.shape.empty()) {
    args.shape.push_back(static_cast<int64_t>(args.input.size()));
  }
  int64_t count = 1;
  for (auto d : args.shape) count *= d;
  if (count != static_cast<int64_t>(args.input.size())) {
    Usage("--shape has " + std::to_string(count) + " elements but --input has " +
          std::to_string(args.input.size()));
  }
  return args;
}

void SetDeadline(grpc::ClientContext& ctx, double timeout_s) {
  ctx.set_deadline(std::chrono::system_clock::now() +
                   std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000)));
}

void Check(const grpc::Status& status, const std::string& what) {
  if (!status.ok()) {
    throw std::runtime_error(what + " failed: " + std::to_string(status.error_code()) + " " +
                             status.error_message());
  }
}

api::PredictRequest MakeRequest(const Args& args, const std::string& input_name) {
  api::PredictRequest req;
  req.set_model(args.model);
  req.set_version(args.version);
  api::Tensor* t = req.add_inputs();
  t->set_name(input_name);
  t->set_data_type(api::DATA_TYPE_FP32);
  for (auto d : args.shape) t->add_shape(d);
  t->set_raw_data(std::string(reinterpret_cast<const char*>(args.input.data()),
                              args.input.size() * sizeof(float)));
  return req;
}

// Decodes an FP32 tensor (little-endian raw_data, host is little-endian).
std::vector<float> ToFloats(const api::Tensor& t) {
  if (t.data_type() != api::DATA_TYPE_FP32) {
    throw std::runtime_error("output " + t.name() + " is " + api::DataType_Name(t.data_type()) +
                             ", not DATA_TYPE_FP32");
  }
  const std::string& raw = t.raw_data();
  if (raw.size() % sizeof(float) != 0) {
    throw std::runtime_error("output " + t.name() + " has a raw_data size not a multiple of 4");
  }
  std::vector<float> out(raw.size() / sizeof(float));
  if (!out.empty()) std::memcpy(out.data(), raw.data(), raw.size());
  return out;
}

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

std::string JsonFloats(const std::vector<float>& values) {
  std::string out = "[";
  for (size_t i = 0; i < values.size(); ++i) {
    if (i) out += ", ";
    if (!std::isfinite(values[i])) {
      out += "null";  // JSON has no NaN/Infinity
    } else {
      char buf[32];
      std::snprintf(buf, sizeof(buf), "%.9g", static_cast<double>(values[i]));  // round-trips FP32
      out += buf;
    }
  }
  return out + "]";
}

std::string JsonShape(const api::Tensor& t) {
  std::string out = "[";
  for (int i = 0; i < t.shape_size(); ++i) {
    if (i) out += ", ";
    out += std::to_string(t.shape(i));
  }
  return out + "]";
}

const api::Tensor& FirstOutput(const api::PredictResponse& resp) {
  if (resp.outputs_size() == 0) throw std::runtime_error("response has no outputs");
  return resp.outputs(0);
}

int Run(const Args& args) {
  auto channel = grpc::CreateChannel(args.server, grpc::InsecureChannelCredentials());
  auto inference = api::InferenceService::NewStub(channel);
  auto registry = api::RegistryService::NewStub(channel);

  std::string input_name = args.input_name;
  if (input_name.empty()) {
    grpc::ClientContext ctx;
    SetDeadline(ctx, args.timeout_s);
    api::GetModelSignatureRequest req;
    req.set_model(args.model);
    req.set_version(args.version);
    api::GetModelSignatureResponse resp;
    Check(inference->GetModelSignature(&ctx, req, &resp), "GetModelSignature");
    if (resp.signature().inputs_size() == 0) throw std::runtime_error("model has no inputs");
    input_name = resp.signature().inputs(0).name();
  }
  const api::PredictRequest request = MakeRequest(args, input_name);

  // 1. Unary Predict.
  api::PredictResponse unary;
  {
    grpc::ClientContext ctx;
    SetDeadline(ctx, args.timeout_s);
    Check(inference->Predict(&ctx, request, &unary), "Predict");
  }
  const api::Tensor& unary_out = FirstOutput(unary);

  // 2. PredictStream: send all messages, half-close, read every answer.
  std::vector<api::PredictStreamResponse> answers;
  {
    grpc::ClientContext ctx;
    SetDeadline(ctx, args.timeout_s);
    auto stream = inference->PredictStream(&ctx);
    for (int i = 0; i < kStreamMessages; ++i) {
      api::PredictStreamRequest msg;
      msg.set_id(std::to_string(i));
      *msg.mutable_request() = request;
      if (!stream->Write(msg)) break;  // the server ended the stream; Finish() says why
    }
    stream->WritesDone();
    api::PredictStreamResponse answer;
    while (stream->Read(&answer)) answers.push_back(answer);
    Check(stream->Finish(), "PredictStream");
  }
  if (answers.size() != kStreamMessages) {
    throw std::runtime_error("PredictStream returned " + std::to_string(answers.size()) +
                             " answers, expected " + std::to_string(kStreamMessages));
  }
  for (const auto& a : answers) {
    if (a.has_error()) {
      throw std::runtime_error("PredictStream message " + a.id() + " failed: " +
                               std::to_string(a.error().code()) + " " + a.error().message());
    }
  }

  // 3. ListModels, following pages.
  std::vector<std::string> models;
  std::string page_token;
  do {
    grpc::ClientContext ctx;
    SetDeadline(ctx, args.timeout_s);
    api::ListModelsRequest req;
    req.set_page_token(page_token);
    api::ListModelsResponse resp;
    Check(registry->ListModels(&ctx, req, &resp), "ListModels");
    for (const auto& m : resp.models()) models.push_back(m.name());
    page_token = resp.next_page_token();
  } while (!page_token.empty());

  // One JSON object on stdout.
  std::string json = "{\"unary\": {\"version\": " + std::to_string(unary.model_version()) +
                     ", \"shape\": " + JsonShape(unary_out) +
                     ", \"data\": " + JsonFloats(ToFloats(unary_out)) + "}, \"stream\": [";
  for (size_t i = 0; i < answers.size(); ++i) {
    const api::Tensor& out = FirstOutput(answers[i].response());
    if (i) json += ", ";
    json += "{\"id\": " + JsonString(answers[i].id()) + ", \"version\": " +
            std::to_string(answers[i].response().model_version()) + ", \"shape\": " +
            JsonShape(out) + ", \"data\": " + JsonFloats(ToFloats(out)) + "}";
  }
  json += "], \"models\": [";
  for (size_t i = 0; i < models.size(); ++i) {
    if (i) json += ", ";
    json += JsonString(models[i]);
  }
  json += "]}";
  std::cout << json << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const Args args = ParseArgs(argc, argv);
  try {
    return Run(args);
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << std::endl;
    return 1;
  }
}
