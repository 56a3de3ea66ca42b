#!/usr/bin/env bash
# Builds the Java example offline with Debian's packages, without Maven or Gradle:
#   protobuf-compiler (protoc), protobuf-compiler-grpc-java-plugin (grpc_java_plugin),
#   libgrpc-java, libprotobuf-java, libnetty-java, libgoogle-gson-java, libperfmark-java,
#   libguava-java and a JDK (javac >= 11).
# Stubs are generated from ../../protos into build/gen, everything is compiled into
# build/classes, and build/ortserve_example is a launcher script with the class path.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
protos="$here/../../protos"
build="$here/build"
jars=/usr/share/java
classpath="$(printf "$jars/%s.jar:" \
  grpc-api grpc-context grpc-core grpc-netty grpc-protobuf grpc-protobuf-lite grpc-stub \
  protobuf guava gson perfmark-api jsr305 error_prone_annotations \
  netty-buffer netty-codec netty-codec-http netty-codec-http2 netty-codec-socks netty-common \
  netty-handler netty-handler-proxy netty-resolver netty-transport)"
classpath="${classpath%:}"

rm -rf "$build"
mkdir -p "$build/gen" "$build/classes"
protoc -I "$protos" --java_out="$build/gen" \
  --plugin=protoc-gen-grpc-java=/usr/bin/grpc_java_plugin \
  --grpc-java_out=@generated=omit:"$build/gen" \
  "$protos"/ortserve/api/v1/{tensor,model,inference_service,registry_service}.proto
# grpc-java 1.41's generator annotates the stubs with javax.annotation.Generated, which is not in
# the JDK since 11 (and its @generated=omit option came later): drop the annotation.
for f in "$build"/gen/ortserve/api/v1/*Grpc.java; do
  sed -i '/^@javax.annotation.Generated(/,/)$/d' "$f"
done
find "$build/gen" "$here/src/main/java" -name '*.java' > "$build/sources.txt"
javac -nowarn -encoding UTF-8 --release 11 -cp "$classpath" -d "$build/classes" @"$build/sources.txt"
cat > "$build/ortserve_example" <<LAUNCHER
#!/bin/sh
exec java -cp "$build/classes:$classpath" ortserve.example.Example "\$@"
LAUNCHER
chmod +x "$build/ortserve_example"
echo "built $build/ortserve_example"
