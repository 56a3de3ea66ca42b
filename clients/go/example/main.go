// Example Go client for ortserve.
//
//	ortserve_example --server 127.0.0.1:PORT --model NAME --input 1,2,3,... --shape 2,16
//	                 [--input-name x] [--version N] [--timeout-s 30]
//
// Runs one unary Predict, then a PredictStream with 3 messages (the same input), then
// ListModels, and prints one JSON object on stdout:
//
//	{"unary": {"version": V, "shape": [...], "data": [...]},
//	 "stream": [{"id": "0", "version": V, "shape": [...], "data": [...]}, ...],
//	 "models": ["name", ...]}
//
// The input is sent as one FP32 tensor; "shape"/"data" are those of the first output.
// Without --input-name, the input name is read from GetModelSignature.
// Errors go to stderr and the exit status is non-zero.
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"

	api "ortserve/api/v1"
)

const streamMessages = 3

type args struct {
	server, model, version, inputName string
	input                             []float32
	shape                             []int64
	timeout                           time.Duration
}

func usage(msg string) {
	fmt.Fprintf(os.Stderr, "error: %s\nusage: ortserve_example --server HOST:PORT --model NAME --input 1,2,3,... "+
		"--shape 2,16 [--input-name NAME] [--version N] [--timeout-s SECONDS]\n", msg)
	os.Exit(2)
}

func splitCommas(text string) []string {
	var parts []string
	for _, p := range strings.Split(text, ",") {
		if p = strings.TrimSpace(p); p != "" {
			parts = append(parts, p)
		}
	}
	return parts
}

// parseArgs reads "--key value" or "--key=value"; values may start with "-" (negative
// numbers), which is why the flag package is not used.
func parseArgs(argv []string) args {
	values := map[string]string{}
	for i := 0; i < len(argv); i++ {
		key := argv[i]
		if key == "-h" || key == "--help" {
			usage("help requested")
		}
		if !strings.HasPrefix(key, "--") {
			usage("unexpected argument: " + key)
		}
		var value string
		if eq := strings.Index(key, "="); eq >= 0 {
			key, value = key[:eq], key[eq+1:]
		} else {
			if i+1 >= len(argv) {
				usage("missing value for " + key)
			}
			i++
			value = argv[i]
		}
		values[key[2:]] = value
	}
	a := args{timeout: 30 * time.Second}
	for key, value := range values {
		bad := func() { usage("bad value for --" + key + ": " + value) }
		switch key {
		case "server":
			a.server = value
		case "model":
			a.model = value
		case "version":
			a.version = value
		case "input-name":
			a.inputName = value
		case "timeout-s":
			s, err := strconv.ParseFloat(value, 64)
			if err != nil || s <= 0 {
				bad()
			}
			a.timeout = time.Duration(s * float64(time.Second))
		case "input":
			for _, p := range splitCommas(value) {
				f, err := strconv.ParseFloat(p, 32)
				if err != nil {
					bad()
				}
				a.input = append(a.input, float32(f))
			}
		case "shape":
			for _, p := range splitCommas(value) {
				d, err := strconv.ParseInt(p, 10, 64)
				if err != nil {
					bad()
				}
				a.shape = append(a.shape, d)
			}
		default:
			usage("unknown option --" + key)
		}
	}
	if a.server == "" {
		usage("--server is required")
	}
	if a.model == "" {
		usage("--model is required")
	}
	if len(a.input) == 0 {
		usage("--input is required")
	}
	if len(a.shape) == 0 {
		a.shape = []int64{int64(len(a.input))}
	}
	count := int64(1)
	for _, d := range a.shape {
		count *= d
	}
	if count != int64(len(a.input)) {
		usage(fmt.Sprintf("--shape has %d elements but --input has %d", count, len(a.input)))
	}
	return a
}

// Tensor.raw_data is little-endian whatever the host.
func encodeFloats(values []float32) []byte {
	raw := make([]byte, 4*len(values))
	for i, v := range values {
		binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(v))
	}
	return raw
}

func decodeFloats(t *api.Tensor) ([]float32, error) {
	if t.GetDataType() != api.DataType_DATA_TYPE_FP32 {
		return nil, fmt.Errorf("output %s is %s, not DATA_TYPE_FP32", t.GetName(), t.GetDataType())
	}
	raw := t.GetRawData()
	if len(raw)%4 != 0 {
		return nil, fmt.Errorf("output %s has a raw_data size not a multiple of 4", t.GetName())
	}
	out := make([]float32, len(raw)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
	}
	return out, nil
}

// jsonFloats keeps float32 precision and writes non-finite values as null.
type jsonFloats []float32

func (f jsonFloats) MarshalJSON() ([]byte, error) {
	var b strings.Builder
	b.WriteByte('[')
	for i, v := range f {
		if i > 0 {
			b.WriteString(", ")
		}
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			b.WriteString("null")
		} else {
			b.WriteString(strconv.FormatFloat(float64(v), 'g', -1, 32))
		}
	}
	b.WriteByte(']')
	return []byte(b.String()), nil
}

type output struct {
	ID      string     `json:"id,omitempty"`
	Version int64      `json:"version"`
	Shape   []int64    `json:"shape"`
	Data    jsonFloats `json:"data"`
}

type result struct {
	Unary  output   `json:"unary"`
	Stream []output `json:"stream"`
	Models []string `json:"models"`
}

func firstOutput(id string, resp *api.PredictResponse) (output, error) {
	if len(resp.GetOutputs()) == 0 {
		return output{}, fmt.Errorf("response has no outputs")
	}
	t := resp.GetOutputs()[0]
	data, err := decodeFloats(t)
	if err != nil {
		return output{}, err
	}
	shape := t.GetShape()
	if shape == nil {
		shape = []int64{}
	}
	return output{ID: id, Version: resp.GetModelVersion(), Shape: shape, Data: data}, nil
}

func run(a args) error {
	conn, err := grpc.Dial(a.server, grpc.WithInsecure(), grpc.WithDefaultCallOptions(grpc.ForceCodec(protoCodec{})))
	if err != nil {
		return err
	}
	defer conn.Close()
	inference := api.NewInferenceServiceClient(conn)
	registry := api.NewRegistryServiceClient(conn)

	inputName := a.inputName
	if inputName == "" {
		ctx, cancel := context.WithTimeout(context.Background(), a.timeout)
		sig, err := inference.GetModelSignature(ctx, &api.GetModelSignatureRequest{Model: a.model, Version: a.version})
		cancel()
		if err != nil {
			return fmt.Errorf("GetModelSignature failed: %w", err)
		}
		if len(sig.GetSignature().GetInputs()) == 0 {
			return fmt.Errorf("model has no inputs")
		}
		inputName = sig.GetSignature().GetInputs()[0].GetName()
	}
	request := &api.PredictRequest{
		Model:   a.model,
		Version: a.version,
		Inputs: []*api.Tensor{{
			Name: inputName, DataType: api.DataType_DATA_TYPE_FP32, Shape: a.shape, RawData: encodeFloats(a.input),
		}},
	}
	var res result

	// 1. Unary Predict.
	ctx, cancel := context.WithTimeout(context.Background(), a.timeout)
	unary, err := inference.Predict(ctx, request)
	cancel()
	if err != nil {
		return fmt.Errorf("Predict failed: %w", err)
	}
	if res.Unary, err = firstOutput("", unary); err != nil {
		return err
	}

	// 2. PredictStream: send all messages, half-close, read every answer.
	ctx, cancel = context.WithTimeout(context.Background(), a.timeout)
	defer cancel()
	stream, err := inference.PredictStream(ctx)
	if err != nil {
		return fmt.Errorf("PredictStream failed: %w", err)
	}
	for i := 0; i < streamMessages; i++ {
		if err := stream.Send(&api.PredictStreamRequest{Id: strconv.Itoa(i), Request: request}); err != nil {
			break // the server ended the stream; Recv says why
		}
	}
	if err := stream.CloseSend(); err != nil {
		return fmt.Errorf("PredictStream failed: %w", err)
	}
	for {
		answer, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("PredictStream failed: %w", err)
		}
		if e := answer.GetError(); e != nil {
			return fmt.Errorf("PredictStream message %s failed: %d %s", answer.GetId(), e.GetCode(), e.GetMessage())
		}
		out, err := firstOutput(answer.GetId(), answer.GetResponse())
		if err != nil {
			return err
		}
		res.Stream = append(res.Stream, out)
	}
	if len(res.Stream) != streamMessages {
		return fmt.Errorf("PredictStream returned %d answers, expected %d", len(res.Stream), streamMessages)
	}

	// 3. ListModels, following pages.
	res.Models = []string{}
	token := ""
	for {
		ctx, cancel := context.WithTimeout(context.Background(), a.timeout)
		page, err := registry.ListModels(ctx, &api.ListModelsRequest{PageToken: token})
		cancel()
		if err != nil {
			return fmt.Errorf("ListModels failed: %w", err)
		}
		for _, m := range page.GetModels() {
			res.Models = append(res.Models, m.GetName())
		}
		if token = page.GetNextPageToken(); token == "" {
			break
		}
	}

	// One JSON object on stdout.
	line, err := json.Marshal(res)
	if err != nil {
		return err
	}
	fmt.Println(string(line))
	return nil
}

func main() {
	a := parseArgs(os.Args[1:])
	if err := run(a); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}
