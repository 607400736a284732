"""The committed betterproto2 code must be what `make proto` generates from the sources."""

import filecmp
import os
import subprocess
import sys
from pathlib import Path

from foundry.proto import foundry_api, runtime_api

REPO = Path(__file__).resolve().parents[2]
PROTOS = [
    "foundry.proto",
    "fleetforge/runtime/v1/runtime.proto",
    "foundry/analytics/v1/analytics.proto",
    "foundry/admin/v1/admin.proto",
]


def _differences(left: Path, right: Path) -> list[str]:
    compare = filecmp.dircmp(left, right, ignore=["__pycache__"])
    found = [*compare.left_only, *compare.right_only, *compare.diff_files]
    for name in compare.common_dirs:
        found += [f"{name}/{d}" for d in _differences(left / name, right / name)]
    return found


def test_committed_code_is_what_make_proto_generates(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", str(REPO / "proto"),
         f"--python_betterproto2_out={tmp_path}",
         "--python_betterproto2_opt=client_generation=async,server_generation=async",
         *(str(REPO / "proto" / p) for p in PROTOS)],
        check=True, env=env, capture_output=True,
    )  # fmt: skip
    stale = _differences(REPO / "proto" / "generated", tmp_path)
    assert not stale, f"proto/generated is stale, run `make proto`: {stale}"


def test_wire_contract_field_numbers():
    """DESIGN.md's numbers, which keep clients of the public Foundry daemon compatible."""
    fields = {
        foundry_api.EmitRequest: {"event_type": 1, "project": 2, "throttle": 3, "payload_json": 4},
        foundry_api.TraceBlockExecution: {"duration_ms": 7, "raw_output": 8, "exit_code": 9,
                                          "trigger_payload_json": 10, "audit_artifacts": 12},
        foundry_api.WorkflowStatus: {"task_blocks": 7, "completed_at": 6},
        runtime_api.AttestationSubject: {"run": 1, "step": 2, "tool": 3, "artifact": 4,
                                         "capability_token": 5, "custom": 6},
    }  # fmt: skip
    for message, numbers in fields.items():
        meta = message._betterproto.meta_by_field_name
        assert {name: meta[name].number for name in numbers} == numbers
    assert [t.value for t in foundry_api.Throttle] == [0, 1, 2]
    assert runtime_api.RunStatus.PAUSED_AT_STEP.value == 6


def test_every_runtime_rpc_is_registered():
    from foundry.kernel.edge.grpc.runtime_service import RuntimeService

    paths = RuntimeService(None).__mapping__()  # type: ignore[arg-type]
    rpcs = {p.rsplit("/", 1)[1] for p in paths}
    assert len(rpcs) == 17
    assert {"SubmitRun", "TapRun", "CreateBranchRun", "GetAttestations"} <= rpcs
