package main

import (
	"fmt"

	"google.golang.org/protobuf/proto"
)

// protoCodec marshals with the protobuf APIv2 runtime (google.golang.org/protobuf).
//
// Debian 12's grpc-go (1.33, golang-google-grpc-dev) has a default codec built on the old
// github.com/golang/protobuf 1.3 (golang-goprotobuf-dev), which cannot read messages generated
// by today's protoc-gen-go (it panics: "protobuf tag not enough fields"). The old generator
// (protoc-gen-go-1-3) is no way out either: it refuses proto3 `optional` fields, which our
// protos use. So every call forces this codec (grpc.ForceCodec).
type protoCodec struct{}

func (protoCodec) Marshal(v interface{}) ([]byte, error) {
	m, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("protoCodec: %T is not a proto.Message", v)
	}
	return proto.Marshal(m)
}

func (protoCodec) Unmarshal(data []byte, v interface{}) error {
	m, ok := v.(proto.Message)
	if !ok {
		return fmt.Errorf("protoCodec: %T is not a proto.Message", v)
	}
	return proto.Unmarshal(data, m)
}

func (protoCodec) Name() string { return "proto" }
