"""Triton model repositories on disk: `<repo>/<model>/config.pbtxt` and `<repo>/<model>/<version>/<file>`.

Read by `serve --model-dir` (model_dir.py) and `models import-triton` (triton_import.py). The
configuration is Triton's ModelConfig in protobuf text format, parsed into the Open Inference
Protocol's `inference.ModelConfig` (api/inference/model_config_pb2.py). That message holds the
fields ortserve uses or reports; fields it does not know (sequence_batching, ensemble_scheduling,
rate_limiter, ...) are skipped by the parser and named in `TritonModel.unknown_fields`, so a caller
can report them instead of dropping them silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import descriptor as pb_descriptor
from google.protobuf import text_format

from ortserve.api.inference import model_config_pb2
from ortserve.errors import InvalidInput
from ortserve.records import BatchingSettings
from ortserve.registry.service import check_name
from ortserve.scheduler.routing import is_number

MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.pbtxt"
# Triton platforms and backends that run ONNX models; a config naming another one is not ours.
ONNX_RUNTIMES = frozenset({"", "onnxruntime_onnx", "onnxruntime"})
# Triton's version policy when a config names none.
DEFAULT_POLICY = "latest 1 (Triton's default)"

ModelConfig = model_config_pb2.ModelConfig


class TritonModelError(InvalidInput):
    """A model folder that cannot be used at all: `path` is the file or folder at fault, `reason`
    what is wrong with it; the message names the file (config.pbtxt) or the folder's problem."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path.name} {reason}" if path.name == CONFIG_FILE else reason)
        self.path = path
        self.reason = reason


class NotOnnxModel(TritonModelError):
    """The configuration names a platform or backend other than ONNX Runtime (`runtime`)."""

    def __init__(self, path: Path, runtime: str) -> None:
        super().__init__(path, f"names platform or backend {runtime!r}, not ONNX Runtime")
        self.runtime = runtime


@dataclass(frozen=True, slots=True)
class TritonVersion:
    number: int
    path: Path  # the model file
    where: str  # "<model>/<version>/<file>", the path inside the repository


@dataclass(frozen=True, slots=True)
class TritonModel:
    """One model folder: its configuration (None without config.pbtxt) and its versions in order."""

    name: str
    folder: Path
    config: ModelConfig | None
    batching: BatchingSettings | None
    versions: tuple[TritonVersion, ...]
    # Entries of the folder that hold no version, and files beside a version's model, with the reason.
    skipped: tuple[tuple[Path, str], ...]
    # Dotted paths of config.pbtxt fields the ModelConfig message does not know (skipped by the parser).
    unknown_fields: tuple[str, ...] = ()

    @property
    def config_file(self) -> Path:
        return self.folder / CONFIG_FILE


def read_model(folder: Path) -> TritonModel:
    """The model in `folder`; TritonModelError when its name or configuration cannot be used."""
    try:
        check_name(folder.name)
    except InvalidInput as exc:
        raise TritonModelError(folder, str(exc)) from None
    config_file = folder / CONFIG_FILE
    config, unknown = read_config(config_file)
    try:
        batching = batching_of(config)
    except InvalidInput as exc:
        raise TritonModelError(config_file, f"holds batching settings ortserve refuses: {exc}") from None
    filename = (config.default_model_filename if config else "") or MODEL_FILE
    versions, skipped = _versions(folder, filename)
    return TritonModel(folder.name, folder, config, batching, versions, skipped, unknown)


def _versions(folder: Path, filename: str) -> tuple[tuple[TritonVersion, ...], tuple[tuple[Path, str], ...]]:
    numbered: list[tuple[int, Path]] = []
    skipped: list[tuple[Path, str]] = []
    for entry in sorted(folder.iterdir()):
        if entry.name == CONFIG_FILE:
            continue
        if not (entry.is_dir() and is_number(entry.name) and int(entry.name) > 0):
            skipped.append((entry, "not a version folder (a positive number)"))
            continue
        numbered.append((int(entry.name), entry))
    versions: list[TritonVersion] = []
    for number, entry in sorted(numbered):
        model_file = entry / filename
        if not model_file.is_file():
            skipped.append((entry, f"no {filename} in this version folder"))
            continue
        skipped.extend(
            (other, f"not used: the version's model is {filename}")
            for other in sorted(entry.iterdir())
            if other != model_file
        )
        versions.append(TritonVersion(number, model_file, f"{folder.name}/{entry.name}/{filename}"))
    return tuple(versions), tuple(skipped)


def read_config(path: Path) -> tuple[ModelConfig | None, tuple[str, ...]]:
    """Triton's ModelConfig from text format (None when there is no file) and the unknown fields in it.

    TritonModelError names the file when it cannot be read, does not parse, or names a platform
    or backend other than ONNX Runtime.
    """
    if not path.is_file():
        return None, ()
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise TritonModelError(path, f"cannot be read: {exc.strerror or exc}") from None
    known, unknown = strip_unknown_fields(text, ModelConfig.DESCRIPTOR)
    config = ModelConfig()
    try:
        text_format.Parse(known, config)
    except text_format.ParseError as exc:
        raise TritonModelError(path, f"is not a valid Triton model configuration: {exc}") from None
    runtime = config.platform or config.backend
    if runtime not in ONNX_RUNTIMES:
        raise NotOnnxModel(path, runtime)
    return config, unknown


def batching_of(config: ModelConfig | None) -> BatchingSettings | None:
    """Triton's max_batch_size and dynamic_batching; max_batch_size 0 (no batch axis) turns batching off."""
    if config is None:
        return None
    if not config.HasField("dynamic_batching"):
        return BatchingSettings(max_batch_size=config.max_batch_size)
    dynamic = config.dynamic_batching
    queue = dynamic.default_queue_policy.max_queue_size
    return BatchingSettings(
        max_batch_size=config.max_batch_size,
        max_queue_delay_us=dynamic.max_queue_delay_microseconds,
        preferred_batch_sizes=tuple(dynamic.preferred_batch_size),
        **({"max_queue_size": queue} if queue else {}),
    )


def select_versions(config: ModelConfig | None, numbers: list[int]) -> tuple[list[int], str]:
    """The version numbers Triton's version_policy serves out of `numbers` (ascending), and the policy."""
    policy = config.version_policy if config is not None else None
    choice = policy.WhichOneof("policy_choice") if policy is not None else None
    if choice == "all":
        return list(numbers), "all"
    if choice == "specific":
        assert policy is not None
        wanted = set(policy.specific.versions)
        listed = ", ".join(str(v) for v in sorted(wanted))
        return [n for n in numbers if n in wanted], f"specific [{listed}]"
    latest = policy.latest.num_versions if policy is not None and choice == "latest" else 1
    if latest < 1:
        raise InvalidInput(f"version_policy latest num_versions must be >= 1, got {latest}")
    text = f"latest {latest}" if choice == "latest" else DEFAULT_POLICY
    return list(numbers[-latest:]), text


def strip_unknown_fields(text: str, descriptor: pb_descriptor.Descriptor) -> tuple[str, tuple[str, ...]]:
    """`text` with the fields `descriptor` does not declare blanked out, and their dotted paths.

    protobuf's own `allow_unknown_field` cannot skip an unknown field holding a list of messages
    (Triton's `ensemble_scheduling { step [ {...} ] }`), so unknown fields are found here and
    removed before a strict parse. Lines and columns are kept, so parse errors point at the file.
    Text this scanner cannot follow is returned unchanged, for the parser to report.
    """
    tokens = _tokens(text)
    if tokens is None:
        return text, ()
    walk = _Walk(tokens)
    end = walk.fields(0, descriptor, "", close=None)
    if end != len(tokens):
        return text, ()
    chars = list(text)
    for begin, stop in walk.cuts:
        chars[begin:stop] = [ch if ch == "\n" else " " for ch in chars[begin:stop]]
    return "".join(chars), tuple(dict.fromkeys(walk.found))


_TOKEN = re.compile(
    r"""\s+|\#[^\n]*|(?P<token>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|[\w.+-]+|[{}\[\]<>:,;])"""
)


def _tokens(text: str) -> list[tuple[str, int, int]] | None:
    """(token, start, end) of protobuf text format, or None where something is not a token."""
    found: list[tuple[str, int, int]] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            return None
        if match.group("token") is not None:
            found.append((match.group("token"), match.start(), match.end()))
        pos = match.end()
    return found


class _Walk:
    """Follows text-format fields against a descriptor; every step consumes at least one token."""

    def __init__(self, tokens: list[tuple[str, int, int]]) -> None:
        self.tokens = tokens
        self.found: list[str] = []
        self.cuts: list[tuple[int, int]] = []

    def _at(self, i: int) -> str:
        return self.tokens[i][0] if i < len(self.tokens) else ""

    def fields(
        self, i: int, descriptor: pb_descriptor.Descriptor | None, prefix: str, close: str | None
    ) -> int:
        """Consume fields from token i up to `close` (or the end); `descriptor` is None inside an
        unknown field. Returns the next token's index, past the end for an unclosed message."""
        while i < len(self.tokens):
            if close is not None and self._at(i) == close:
                return i + 1
            first, name = i, self._at(i)
            field = descriptor.fields_by_name.get(name) if descriptor is not None else None
            inner = field.message_type if field is not None else None
            i += 1
            if self._at(i) == ":":
                i += 1
            if self._at(i) == "[":
                i += 1
                while i < len(self.tokens) and self._at(i) != "]":
                    i = self._value(i, inner, f"{prefix}{name}.")
                    if self._at(i) == ",":
                        i += 1
                i += 1
            else:
                i = self._value(i, inner, f"{prefix}{name}.")
            if self._at(i) in (",", ";"):
                i += 1
            if descriptor is not None and field is None:
                self.found.append(prefix + name)
                self.cuts.append((self.tokens[first][1], self.tokens[min(i, len(self.tokens)) - 1][2]))
        return i if close is None else len(self.tokens) + 1  # an unclosed message: not followed

    def _value(self, i: int, inner: pb_descriptor.Descriptor | None, prefix: str) -> int:
        token = self._at(i)
        if token in ("{", "<"):
            return self.fields(i + 1, inner, prefix, close="}" if token == "{" else ">")
        i += 1
        while token[:1] in ("'", '"') and self._at(i)[:1] in ("'", '"'):  # adjacent literals: one value
            i += 1
        return i
