"""The CLI's tables: plain text for scripts, rich for terminals, and user strings never reaching the
terminal as control sequences or markup."""

from __future__ import annotations

import io
from datetime import datetime

import pytest

from ortserve.cli import tables as cli_tables
from ortserve.client import AuditEntry, ModelInfo, ShadowInfo, TrafficInfo, VersionInfo

HOSTILE = "evil\x1b]0;owned\x07 [bold red]markup[/] \u202etxt\ttab\nline"


def _version(number: int, state: str, description: str = "", error: str = "") -> VersionInfo:
    return VersionInfo(
        model="fraud",
        version=number,
        state=state,
        error=error,
        sha256="ab" * 32,
        size_bytes=414,
        inputs=[("x", "FP32", [-1, 16])],
        outputs=[("y", "FP32", [-1, 4]), ("mask", "BOOL", [-1, -1])],
        providers=["CPUExecutionProvider"] if state == "ready" else [],
        description=description,
        created_by="alice",
        create_time=datetime(2026, 1, 2, 3, 4, 5),
        batch_axis=True,
        preferred_providers=["CUDAExecutionProvider"] if state != "ready" else [],
    )


MODEL = ModelInfo(
    name="fraud",
    description=HOSTILE,
    versions=[_version(1, "ready"), _version(2, "failed", HOSTILE, error="ONNX Runtime said no")],
    aliases={"production": 1},
    traffic=TrafficInfo({"1": 75, "2": 25}, True, "2", 0.5),
    shadow=ShadowInfo(2, 40, 1, 0.125, 0.9),
)


def test_shapes_print_as_dimensions_not_nested_lists() -> None:
    assert cli_tables.shape_text([-1, 16]) == "[N, 16]"
    assert cli_tables.shape_text([-1, -1, 3]) == "[N, ?, 3]"
    assert cli_tables.shape_text([-1, 3], batch_axis=False) == "[?, 3]"
    assert cli_tables.shape_text([]) == "[]"
    assert cli_tables.specs_text([("x", "FP32", [-1, 16])]) == "x FP32 [N, 16]"


def test_control_characters_are_escaped() -> None:
    assert cli_tables.clean("plain text é 模型") == "plain text é 模型"
    assert cli_tables.clean("a\x1b[31mb\tc\n\u202e") == "a\\x1b[31mb\\tc\\n\\u202e"


def test_plain_tables_are_tab_separated_one_row_a_line() -> None:
    text = cli_tables.render_plain(cli_tables.model_tables(MODEL))
    assert "\x1b" not in text and "\u202e" not in text
    blocks = text.split("\n\n")
    assert [block.splitlines()[0] for block in blocks] == [
        "# model fraud",
        "# aliases",
        "# traffic policy, sticky by routing key",
        "# shadow comparison (on the server that answered)",
        "# versions",
    ]
    traffic = blocks[2].splitlines()
    assert traffic[1:] == [
        "TARGET\tWEIGHT\tSHARE",
        "1\t75\t###############..... 75%",
        "2\t25\t#####............... 25%",
    ]
    shadow = blocks[3].splitlines()[2].split("\t")
    assert shadow == ["2", "##########.......... 50%", "2", "40", "1", "0.125", "##################.. 90%"]
    versions = [line.split("\t") for line in blocks[4].splitlines()[1:]]
    assert versions[0] == [
        "VERSION", "STATE", "PROVIDER", "INPUTS", "OUTPUTS", "CREATED BY", "CREATED AT (UTC)", "DESCRIPTION",
        "ERROR",
    ]  # fmt: skip
    assert versions[1] == [
        "1", "ready", "CPU", "x FP32 [N, 16]", "y FP32 [N, 4], mask BOOL [N, ?]", "alice",
        "2026-01-02 03:04:05", "-", "-",
    ]  # fmt: skip
    assert versions[2][1:3] == ["failed", "wants CUDA"]
    assert versions[2][7] == "evil\\x1b]0;owned\\x07 [bold red]markup[/] \\u202etxt\\ttab\\nline"
    assert versions[2][8] == "ONNX Runtime said no"


def test_rich_tables_draw_boxes_and_show_markup_literally() -> None:
    out = io.StringIO()
    cli_tables.render_rich(cli_tables.model_tables(MODEL), out, width=200)
    text = out.getvalue()
    assert "╭" in text and "█" in text and "[N, 16]" in text
    assert "[bold red]markup[/]" in text  # shown, not applied
    assert "\x1b]" not in text and "\x07" not in text and "\u202e" not in text


def test_emit_picks_rich_on_a_terminal_only() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    table = cli_tables.models_table([MODEL])
    plain, terminal = io.StringIO(), Terminal()
    cli_tables.emit([table], plain)
    cli_tables.emit([table], terminal)
    assert plain.getvalue().splitlines()[1:3] == [
        "MODEL\tVERSIONS\tALIASES\tTRAFFIC\tDESCRIPTION",
        "fraud\t1:ready, 2:failed\tproduction=1\t1=75 2=25 (sticky)\t"
        "evil\\x1b]0;owned\\x07 [bold red]markup[/] \\u202etxt\\ttab\\nline",
    ]
    assert "╭" in terminal.getvalue() and "\t" not in terminal.getvalue()


@pytest.mark.parametrize(
    ("before", "after", "text"),
    [
        ({"a": 1, "b": 2}, {"a": 1, "b": 3}, "b: 2 -> 3"),
        (None, {"alias": "production", "version": 2}, 'alias="production", version=2'),
        ({"x": "y" * 80}, None, '{"x": "' + "y" * 38 + "... -> null"),
        ({"a": 1}, {"a": 1}, "no change"),
    ],
)
def test_audit_changes_show_what_moved(before: object, after: object, text: str) -> None:
    assert cli_tables.change_text(before, after) == text


def test_audit_plain_rows_keep_the_action_third_in_whitespace_fields() -> None:
    entry = AuditEntry(datetime(2026, 1, 2, 3, 4, 5), "bob", "promote", "fraud", 2, None, {"version": 2})
    lines = cli_tables.render_plain([cli_tables.audit_table([entry])]).splitlines()
    assert lines[2].split()[2] == "promote"
    assert cli_tables.audit_json(entry) == {
        "time": "2026-01-02T03:04:05Z",
        "actor": "bob",
        "action": "promote",
        "model": "fraud",
        "version": 2,
        "before": None,
        "after": {"version": 2},
    }


def test_model_json_keys_are_stable() -> None:
    document = cli_tables.model_json(MODEL)
    assert list(document) == ["name", "description", "aliases", "traffic", "shadow", "versions"]
    assert list(document["versions"][0]) == [
        "version", "state", "error", "sha256", "size_bytes", "inputs", "outputs", "batch_axis", "providers",
        "preferred_providers", "batching", "description", "labels", "created_by", "create_time",
        "fallback_providers", "sample_rows", "derived_from", "recipe", "report",
    ]  # fmt: skip
    assert document["versions"][0]["inputs"] == [{"name": "x", "dtype": "FP32", "shape": [-1, 16]}]
    assert document["versions"][0]["create_time"] == "2026-01-02T03:04:05Z"
    assert document["traffic"] == {"weights": {"1": 75, "2": 25}, "sticky": True, "shadow_target": "2",
                                   "shadow_share": 0.5}  # fmt: skip
